"""Layers with no index of their own (tar, tar+gzip, tar+zstd): indexed locally.

Most images in the wild are like this. Such a layer is read once, as a stream. Its
decompressed tar is kept in the local cache, and the index built from it points every file
into that copy (codec ``none``). The copy is verified as a whole: the blob against its
digest while streaming, the tar against the config's diff ID when that is known. It is
stored under the blob's digest, so a layer already in the cache costs no download.
"""

from __future__ import annotations

import decimal
import os
import tarfile
import zlib
from pathlib import Path

import trio
import zstandard

from ..errors import LayerIndexError
from ..oci import mediatypes
from ..oci.blobs import BlobReader
from ..oci.digest import Digest
from .model import CODEC_NONE, CODEC_ZEROS, Chunk, Entry, EntryType, LayerIndex, normalize_path

__all__ = ["build_plain_index", "cached_tar_path", "index_tar_file"]

_KINDS = {
    tarfile.REGTYPE: EntryType.REG,
    tarfile.AREGTYPE: EntryType.REG,
    tarfile.CONTTYPE: EntryType.REG,
    tarfile.GNUTYPE_SPARSE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


def cached_tar_path(cache_dir: Path, blob_digest: Digest) -> Path:
    """Where the decompressed tar of a layer blob is kept in the cache."""
    return Path(cache_dir) / "layers" / blob_digest.algorithm / f"{blob_digest.hex}.tar"


class _Decompressor:
    """Streaming decompression of concatenated gzip members or zstd frames."""

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._obj = self._new()

    def _new(self):
        if self.compression == "gzip":
            return zlib.decompressobj(wbits=31)
        if self.compression == "zstd":
            return zstandard.ZstdDecompressor().decompressobj()
        return None

    def feed(self, data: bytes) -> bytes:
        if self._obj is None:
            return data
        out = []
        while data:
            out.append(self._obj.decompress(data))
            if not self._obj.eof:
                break
            data = self._obj.unused_data
            self._obj = self._new()
        return b"".join(out)

    def finish(self, layer: str) -> None:
        if self.compression == "gzip" and self._obj.unconsumed_tail:
            raise LayerIndexError(f"layer {layer}: gzip stream ends mid-member")


def index_tar_file(path: Path, *, layer: str, blob_digest: Digest, blob_size: int) -> LayerIndex:
    """The index of an uncompressed tar stored locally at ``path``."""
    entries: list[Entry] = []
    header_bytes = 0
    try:
        with tarfile.open(path, "r:", encoding="utf-8", errors="surrogateescape") as tf:
            for info in tf:
                kind = _KINDS.get(info.type)
                what = f"entry {info.name!r}"
                if kind is None:
                    raise LayerIndexError(
                        f"layer {layer}: {what} has the unsupported tar type {info.type!r}"
                    )
                path_ = normalize_path(info.name, layer=layer)  # the message names the entry
                link = info.linkname
                if kind == EntryType.HARDLINK:
                    link = normalize_path(link, layer=layer, what=f"hardlink target of {what}")
                xattrs = {
                    k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                    for k, v in info.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                }
                entry = Entry(
                    path=path_,
                    type=kind,
                    mode=info.mode & 0o7777,
                    uid=info.uid,
                    gid=info.gid,
                    uname=info.uname,
                    gname=info.gname,
                    size=info.size if kind == EntryType.REG else 0,
                    mtime_ns=_mtime_ns(info),
                    link=link,
                    dev_major=info.devmajor,
                    dev_minor=info.devminor,
                    xattrs=xattrs,
                )
                if kind == EntryType.REG and info.size:
                    entry.chunks = _chunks(info)
                header_bytes += 512
                entries.append(entry)
    except tarfile.TarError as exc:
        raise LayerIndexError(f"layer {layer}: not a valid tar ({exc})") from None
    return LayerIndex(
        format="tar",
        dialect="local copy",
        blob_digest=blob_digest,
        blob_size=blob_size,
        entries=entries,
        index_size=header_bytes,
        local_path=str(path),
    )


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The mtime in nanoseconds, exact: a PAX record's decimal text, not tarfile's float."""
    text = info.pax_headers.get("mtime")
    if text:
        try:
            return int(decimal.Decimal(text) * 1_000_000_000)
        except decimal.InvalidOperation:
            pass
    return int(info.mtime) * 1_000_000_000


def _chunks(info: tarfile.TarInfo) -> list[Chunk]:
    runs = info.sparse if info.sparse else [(0, info.size)]
    chunks = []
    position = stored = 0
    for offset, length in runs:
        if offset > position:
            chunks.append(Chunk(position, offset - position, 0, 0, 0, CODEC_ZEROS))
        if length:
            chunks.append(Chunk(offset, length, info.offset_data + stored, length, 0, CODEC_NONE))
        stored += length
        position = offset + length
    if position < info.size:
        chunks.append(Chunk(position, info.size - position, 0, 0, 0, CODEC_ZEROS))
    return chunks


async def build_plain_index(
    blob: BlobReader,
    *,
    media_type: str,
    layer: str,
    cache_dir: Path,
    diff_id: Digest | None = None,
) -> LayerIndex:
    """Stream the layer into the cache (unless it is there already) and index the copy."""
    target = cached_tar_path(cache_dir, blob.digest)
    if not target.exists():
        await _download(blob, media_type, layer, target, diff_id)
    return index_tar_file(target, layer=layer, blob_digest=blob.digest, blob_size=blob.size)


async def _download(
    blob: BlobReader, media_type: str, layer: str, target: Path, diff_id: Digest | None
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    decompressor = _Decompressor(mediatypes.layer_compression(media_type))
    tar_hash = (diff_id or Digest.of(b"")).hasher()
    try:
        with open(tmp, "wb") as f:

            def sink(piece: bytes) -> None:
                try:
                    data = decompressor.feed(piece)
                except (zlib.error, zstandard.ZstdError) as exc:
                    raise LayerIndexError(f"layer {layer}: cannot decompress ({exc})") from None
                tar_hash.update(data)
                f.write(data)

            await blob.stream(sink)
            decompressor.finish(layer)
            f.flush()
            os.fsync(f.fileno())
        if diff_id is not None and tar_hash.hexdigest() != diff_id.hex:
            raise LayerIndexError(
                f"layer {layer}: the uncompressed layer does not match its diff ID {diff_id}"
            )
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
        await trio.lowlevel.checkpoint()
