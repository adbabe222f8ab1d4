"""Writing layers as zstd:chunked, current dialect.

:func:`write_zstd_chunked` turns an uncompressed layer tar into a blob that

* decompresses with any zstd decoder to exactly the tar it was made from (so tools that know
  nothing of zstd:chunked pull it as an ordinary ``tar+zstd`` layer), and
* can be read lazily: every non-empty regular file's content starts a new zstd frame and big
  files are cut into chunks of ``chunk_size`` bytes, one frame each; the TOC (JSON, zstd),
  the tar-split (JSON lines, zstd) and the 64-byte ``GNUlInUx`` footer follow in skippable
  frames; the layer descriptor gets the ``io.github.containers.zstd-chunked.*`` annotations.

The bytes of the tar between file contents (headers, PAX records, long-name records, sparse
maps, padding, the end-of-archive blocks) go into frames of their own, unchanged, so every
tar feature survives: nothing is re-encoded.

With ``prioritize``, the listed files are moved to the front of the layer (the tar changes,
so does its diff ID) and the blob offset where they end is recorded in the TOC under
``lazyfsPrefetchOffset`` and in the annotation ``io.lazyfs.prefetch-offset``; readers
prefetch the chunks that start before it first.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import logging
import os
import struct
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fastcrc
import orjson
import zstandard

from ..errors import LayerIndexError
from ..oci.digest import Digest
from .annotations import (
    ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    ZSTD_CHUNKED_MANIFEST_POSITION,
    ZSTD_CHUNKED_TARSPLIT_POSITION,
)
from .model import normalize_path
from .toc import CONTAINERS_STORAGE_MAX_TOC, LAZYFS_PREFETCH_KEY, MAX_TOC_SIZE

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PREFETCH_ANNOTATION",
    "TARSPLIT_CHECKSUM_ANNOTATION",
    "WriteResult",
    "write_zstd_chunked",
]

#: Default size of the chunks big files are cut into. Measured in bench/convert.py on a
#: Debian rootfs: against 1 MiB, a cold 4 KiB read decodes half as much (about 1 ms less) for
#: +0.4 % blob size; smaller chunks gain little more and double the index entries of big files.
#: Whole-file reads stay fast because the fetcher merges neighbouring chunks into one request.
DEFAULT_CHUNK_SIZE = 512 * 1024
PREFETCH_ANNOTATION = "io.lazyfs.prefetch-offset"
TARSPLIT_CHECKSUM_ANNOTATION = "io.github.containers.zstd-chunked.tarsplit-checksum"

log = logging.getLogger("lazyfs.convert")

_SKIPPABLE_MAGIC = 0x184D2A50
_FOOTER_MAGIC = b"GNUlInUx"
_BLOCK = 512
_COPY = 1 << 20


@dataclass
class WriteResult:
    """What :func:`write_zstd_chunked` wrote."""

    path: Path
    digest: Digest
    size: int
    diff_id: Digest
    tar_size: int
    annotations: dict[str, str]
    entries: int
    chunks: int
    prefetch_offset: int | None = None
    toc_size: int = 0
    extra: dict = field(default_factory=dict)


class _Info:
    """What the writer keeps of a tar member after its header has been read: a
    :class:`tarfile.TarInfo` (with its PAX headers) costs far more, times a million."""

    __slots__ = ("linkname", "name", "size", "sparse", "type")

    def __init__(self, info: tarfile.TarInfo) -> None:
        self.name = info.name
        self.linkname = info.linkname
        self.type = info.type
        self.size = info.size
        self.sparse = tuple(info.sparse) if info.sparse else None

    def isreg(self) -> bool:
        return self.type in tarfile.REGULAR_TYPES or self.type == tarfile.GNUTYPE_SPARSE

    def islnk(self) -> bool:
        return self.type == tarfile.LNKTYPE


@dataclass(slots=True)
class _Member:
    info: _Info
    entry: bytes  # its TOC entry, as JSON (content fields are added when it is written)
    start: int  # where its first header block starts in the source tar
    data: int  # where its stored content starts
    stored: int  # bytes of stored content (sparse files: only the data segments)
    end: int  # end of its content, padded to a block


class _Out:
    """The blob being written: counts offsets, hashes what it writes."""

    def __init__(self, f, level: int) -> None:
        self.f = f
        self.offset = 0
        self.hash = hashlib.sha256()
        self.cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)

    def raw(self, data: bytes) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.offset += len(data)

    def frame(self, data: bytes) -> tuple[int, int]:
        """Write ``data`` as one zstd frame; returns its (start, end) in the blob."""
        start = self.offset
        self.raw(self.cctx.compress(data))
        return start, self.offset

    def skippable(self, data: bytes) -> int:
        """Write a skippable frame holding ``data``; returns the offset of ``data``."""
        self.raw(struct.pack("<II", _SKIPPABLE_MAGIC, len(data)))
        start = self.offset
        self.raw(data)
        return start


def _members(tar_path: Path, layer: str) -> tuple[list[_Member], int]:
    """The members of a tar with the byte regions each occupies, and the tar's size."""
    size = tar_path.stat().st_size
    members = []
    position = 0
    try:
        with tarfile.open(tar_path, "r:", encoding="utf-8", errors="surrogateescape") as tf:
            while (info := tf.next()) is not None:
                tf.members.clear()  # tarfile keeps every TarInfo otherwise
                stored = 0
                if info.isreg():
                    stored = sum(n for _, n in info.sparse) if info.sparse else info.size
                end = info.offset_data + stored
                end += -end % _BLOCK
                # orjson's bytes keep a 4 KiB buffer: copy to the exact size.
                entry = bytes(memoryview(orjson.dumps(_toc_entry(info, layer))))
                members.append(_Member(_Info(info), entry, position, info.offset_data, stored, end))
                position = end
    except tarfile.TarError as exc:
        raise LayerIndexError(f"layer {layer}: not a valid tar ({exc})") from None
    if position > size:
        raise LayerIndexError(f"layer {layer}: the tar is truncated")
    return members, size


def _rfc3339(mtime: float) -> str:
    whole = int(mtime // 1)
    frac = mtime - whole
    stamp = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=whole)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += f".{round(frac * 1e9):09d}".rstrip("0")
    return text + "Z"


def _xattrs(info: tarfile.TarInfo) -> dict[str, str]:
    out = {}
    for key, value in info.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            raw = value.encode("utf-8", "surrogateescape")
            out[key[len("SCHILY.xattr.") :]] = base64.b64encode(raw).decode()
        elif key.startswith("LIBARCHIVE.xattr."):
            from urllib.parse import unquote

            out[unquote(key[len("LIBARCHIVE.xattr.") :])] = value  # already base64
    return out


_TOC_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.GNUTYPE_SPARSE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def _toc_entry(info: tarfile.TarInfo, layer: str) -> dict:
    kind = _TOC_TYPES.get(info.type)
    if kind is None:
        raise LayerIndexError(
            f"layer {layer}: entry {info.name!r} has the unsupported tar type {info.type!r}"
        )
    normalize_path(info.name, layer=layer)  # refuse what would be refused on reading
    for field_name, value in (
        ("name", info.name),
        ("link target", info.linkname),
        ("owner", info.uname),
        ("group", info.gname),
    ):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise LayerIndexError(
                f"layer {layer}: entry {info.name!r}: its {field_name} is not UTF-8, which a "
                "zstd:chunked TOC (JSON) cannot hold"
            ) from None
    entry: dict = {"type": kind, "name": info.name}
    if info.linkname:
        entry["linkName"] = info.linkname
    if info.mode:
        entry["mode"] = info.mode
    if kind == "reg" and info.size:
        entry["size"] = info.size
    if info.uid:
        entry["uid"] = info.uid
    if info.gid:
        entry["gid"] = info.gid
    if info.uname:
        entry["userName"] = info.uname
    if info.gname:
        entry["groupName"] = info.gname
    entry["modtime"] = _rfc3339(info.mtime)
    if kind in ("char", "block"):
        entry["devMajor"] = info.devmajor
        entry["devMinor"] = info.devminor
    xattrs = _xattrs(info)
    if xattrs:
        entry["xattrs"] = xattrs
    return entry


def _reorder(
    members: list[_Member], prioritize: Sequence[str], layer: str
) -> tuple[list[_Member], int]:
    """Members with the prioritised files first; returns them and how many were moved.

    A moved file takes along, ahead of it and in their original order, the entries of the
    same layer its path depends on: those at each of its ancestors' paths (the directory
    that replaces a lower layer's file or symlink, say) and the whiteouts of its ancestors
    and of itself. A moved hardlink takes its target along.
    """
    by_path: dict[str, list[_Member]] = {}
    for m in members:
        by_path.setdefault(normalize_path(m.info.name, layer=layer), []).append(m)
    chosen: list[_Member] = []
    seen: set[int] = set()

    def add(m: _Member) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            chosen.append(m)

    def take(path: str) -> None:
        path = normalize_path(path, layer=layer)
        found = by_path.get(path)
        if not found:
            return
        m = found[-1]  # the last entry for a path is the one that counts
        if id(m) in seen or not (m.info.isreg() or m.info.islnk()):
            return
        parts = path.split("/")
        needed = []
        for depth in range(1, len(parts) + 1):
            parent, name = "/".join(parts[: depth - 1]), parts[depth - 1]
            whiteout = f"{parent}/.wh.{name}".lstrip("/")
            needed += by_path.get(whiteout, [])
            if depth < len(parts):
                needed += by_path.get("/".join(parts[:depth]), [])
        for dep in sorted(needed, key=lambda d: d.start):
            add(dep)
        if m.info.islnk():
            take(m.info.linkname)  # the target must come before the link in a tar
        add(m)

    for path in prioritize:
        take(path)
    rest = [m for m in members if id(m) not in seen]
    return chosen + rest, len(chosen)


def write_zstd_chunked(
    tar_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    layer: str = "layer",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    level: int = 3,
    prioritize: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write the zstd:chunked form of the tar at ``tar_path`` to ``out_path``.

    ``progress`` is called with the number of tar bytes consumed since its last call.
    """
    if chunk_size < 4096:
        raise ValueError("chunk_size must be at least 4096 bytes")
    tar_path, out_path = Path(tar_path), Path(out_path)
    members, tar_size = _members(tar_path, layer)
    source_end = members[-1].end if members else 0
    moved = 0
    if prioritize:
        members, moved = _reorder(members, prioritize, layer)

    diff = hashlib.sha256()
    # The TOC entries and the tar-split records go to temporary files as they are made
    # (a million entries would otherwise take gigabytes in Python objects).
    toc_file = tempfile.TemporaryFile(dir=out_path.parent)  # noqa: SIM115 (closed below)
    split = _SpillList(tempfile.TemporaryFile(dir=out_path.parent))  # noqa: SIM115
    toc_count = 0
    chunk_count = 0
    prefetch_offset = None

    def add_toc_entries(entries: list[dict]) -> None:
        nonlocal toc_count
        for entry in entries:
            toc_file.write(b"," if toc_count else b"")
            toc_file.write(orjson.dumps(entry))
            toc_count += 1

    def note_segment(data: bytes) -> None:
        if data:
            split.append(
                orjson.dumps(
                    {"type": 2, "payload": base64.b64encode(data).decode(), "position": len(split)}
                )
            )

    with toc_file, split.file, open(tar_path, "rb") as src, open(out_path, "wb") as f:
        out = _Out(f, level)

        def read(offset: int, length: int) -> bytes:
            src.seek(offset)
            data = src.read(length)
            if len(data) != length:
                raise LayerIndexError(f"layer {layer}: the tar is truncated")
            diff.update(data)
            if progress:
                progress(length)
            return data

        # Tar bytes other than file content go into frames of their own, several members'
        # headers per frame; the tar-split records them per member (padding first, as
        # tar-split does), each followed by that member's file record.
        frame = b""
        segment = b""

        def flush_frame() -> None:
            nonlocal frame
            if frame:
                out.frame(frame)
                frame = b""

        for n, m in enumerate(members):
            entry = orjson.loads(m.entry)
            pending = [entry]  # this member's TOC entries: it and its further chunks
            header = read(m.start, m.data - m.start)
            frame += header
            note_segment(segment + header)
            segment = b""
            if m.stored:
                flush_frame()
                chunk_count += _write_content(out, entry, pending, m, read, chunk_size, split)
                segment = read(m.data + m.stored, m.end - m.data - m.stored)
                frame = segment
            else:
                split.append(_file_record(m.info.name, 0, None, len(split)))
            add_toc_entries(pending)
            if n + 1 == moved:
                flush_frame()
                prefetch_offset = out.offset
        if tar_size > source_end:
            trailer = read(source_end, tar_size - source_end)
            frame += trailer
            segment += trailer
        note_segment(segment)
        flush_frame()

        split_z, split_size = _compress_file(split.file, level)
        tail: dict = {"tarSplitDigest": str(Digest.of(split_z))}
        if prefetch_offset is not None:
            tail[LAZYFS_PREFETCH_KEY] = prefetch_offset
        # {"version":1,"entries":[...],"tarSplitDigest":...}: the entries are in toc_file.
        toc_file.write(b"]," + orjson.dumps(tail)[1:])
        head = b'{"version":1,"entries":['
        toc_size = len(head) + toc_file.seek(0, os.SEEK_END)
        if toc_size > MAX_TOC_SIZE:
            raise LayerIndexError(
                f"layer {layer}: its TOC would be {toc_size} bytes, more than the "
                f"{MAX_TOC_SIZE} lazyfs reads; such a layer cannot be made lazy"
            )
        if toc_size > CONTAINERS_STORAGE_MAX_TOC:
            log.warning(
                "layer %s: its TOC is %d bytes; podman (containers/storage) pulls layers whose "
                "TOC exceeds %d bytes whole",
                layer,
                toc_size,
                CONTAINERS_STORAGE_MAX_TOC,
            )
        toc_z, _ = _compress_file(toc_file, level, head=head)
        toc_json_size = toc_size
        toc_offset = out.skippable(toc_z)
        split_offset = out.skippable(split_z)
        out.skippable(
            struct.pack(
                "<7Q",
                toc_offset,
                len(toc_z),
                toc_json_size,
                1,
                split_offset,
                len(split_z),
                split_size,
            )
            + _FOOTER_MAGIC
        )
        blob_digest = Digest(f"sha256:{out.hash.hexdigest()}")
        size = out.offset

    annotations = {
        ZSTD_CHUNKED_MANIFEST_CHECKSUM: str(Digest.of(toc_z)),
        ZSTD_CHUNKED_MANIFEST_POSITION: f"{toc_offset}:{len(toc_z)}:{toc_json_size}:1",
        ZSTD_CHUNKED_TARSPLIT_POSITION: f"{split_offset}:{len(split_z)}:{split_size}",
        TARSPLIT_CHECKSUM_ANNOTATION: str(Digest.of(split_z)),
    }
    if prefetch_offset is not None:
        annotations[PREFETCH_ANNOTATION] = str(prefetch_offset)
    return WriteResult(
        path=out_path,
        digest=blob_digest,
        size=size,
        diff_id=Digest(f"sha256:{diff.hexdigest()}"),
        tar_size=tar_size,
        annotations=annotations,
        entries=len(members),
        chunks=chunk_count,
        prefetch_offset=prefetch_offset,
        toc_size=toc_json_size,
    )


def _file_record(name: str, size: int, crc: int | None, position: int) -> bytes:
    record: dict = {"type": 1, "name": name, "payload": None, "position": position}
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        del record["name"]
        record["name_raw"] = base64.b64encode(name.encode("utf-8", "surrogateescape")).decode()
    if size:
        record["size"] = size
        record["payload"] = base64.b64encode(struct.pack(">Q", crc or 0)).decode()
    return orjson.dumps(record)


def _write_content(
    out: _Out,
    entry: dict,
    toc_entries: list[dict],
    m: _Member,
    read: Callable[[int, int], bytes],
    chunk_size: int,
    split: list[bytes],
) -> int:
    """Write a regular file's stored content as frames; fill its TOC entries. Returns chunks."""
    info = m.info
    # (file offset, length) of each stored data run; holes between runs are zeros.
    runs = list(info.sparse) if info.sparse else [(0, info.size)]
    # A file that is one chunk has one digest: hash its bytes once.
    single = runs == [(0, info.size)] and info.size <= chunk_size
    whole = hashlib.sha256()
    crc = None
    pieces: list[dict] = []
    position = 0  # in the file
    stored = 0  # in the stored content
    for run_offset, run_length in runs:
        if run_offset > position:
            hole = run_offset - position
            pieces.append({"chunkOffset": position, "chunkSize": hole, "chunkType": "zeros"})
            _hash_zeros(whole, hole)
            position = run_offset
        done = 0
        while done < run_length:
            n = min(chunk_size, run_length - done)
            data = read(m.data + stored, n)
            chunk_digest = Digest.of(data)
            if not single:
                whole.update(data)
            crc = fastcrc.crc64.go_iso(data, crc)
            start, end = out.frame(data)
            pieces.append(
                {
                    "offset": start,
                    "endOffset": end,
                    "chunkOffset": position,
                    "chunkSize": n,
                    "chunkDigest": str(chunk_digest),
                }
            )
            done += n
            stored += n
            position += n
    if position < info.size:
        hole = info.size - position
        pieces.append({"chunkOffset": position, "chunkSize": hole, "chunkType": "zeros"})
        _hash_zeros(whole, hole)
    entry["digest"] = pieces[0]["chunkDigest"] if single else f"sha256:{whole.hexdigest()}"
    first = pieces[0]
    data_pieces = [p for p in pieces if "offset" in p]
    if data_pieces:
        entry["offset"] = data_pieces[0]["offset"]
        entry["endOffset"] = data_pieces[-1]["endOffset"]
    if len(pieces) > 1 or "chunkType" in first:
        entry["chunkSize"] = first["chunkSize"]
        if "chunkDigest" in first:
            entry["chunkDigest"] = first["chunkDigest"]
        if "chunkType" in first:
            entry["chunkType"] = first["chunkType"]
        if "offset" in first:
            entry["offset"] = first["offset"]
        for piece in pieces[1:]:
            toc_entries.append({"type": "chunk", "name": info.name, **piece})
    split.append(_file_record(info.name, m.stored, crc, len(split)))
    return len(pieces)


class _SpillList:
    """The tar-split records, appended to a temporary file as lines; ``len`` counts them."""

    def __init__(self, file) -> None:
        self.file = file
        self.count = 0

    def append(self, record: bytes) -> None:
        self.file.write(record)
        self.file.write(b"\n")
        self.count += 1

    def __len__(self) -> int:
        return self.count


def _compress_file(file, level: int, *, head: bytes = b"") -> tuple[bytes, int]:
    """``head`` + the whole of ``file`` as one zstd frame (content size in its header),
    and that uncompressed size."""
    size = len(head) + file.seek(0, os.SEEK_END)
    file.seek(0)
    cctx = zstandard.ZstdCompressor(level=level)
    sink = io.BytesIO()
    with cctx.stream_writer(sink, size=size, closefd=False) as writer:
        writer.write(head)
        while block := file.read(_COPY):
            writer.write(block)
    return sink.getvalue(), size


def _hash_zeros(hasher, n: int) -> None:
    block = bytes(min(n, _COPY))
    while n > 0:
        hasher.update(block[: min(n, len(block))])
        n -= len(block)
