"""Reading the index of a zstd:chunked layer (containers/storage's lazily pullable zstd).

A zstd:chunked blob is a plain ``tar+zstd`` stream (each file payload in frames of its own)
followed by zstd *skippable frames* (magic ``0x184D2A50``-``0x184D2A5F``, u32 LE length,
data) that plain decoders ignore::

    ... data frames ... | skippable(TOC) | [skippable(tar-split)] | skippable(footer)

Two dialects of the footer are read, both little-endian and both at the very end of the blob:

* current (containers/storage with tar-split): 64 bytes, ``tocOffset, tocCompressedLen,
  tocUncompressedLen, manifestType, tarSplitOffset, tarSplitCompressedLen,
  tarSplitUncompressedLen`` (7 x u64) and the magic ``GNUlInUx``;
* legacy (older containers/storage, skopeo 1.9.3, stargz-snapshotter's zstdchunked):
  40 bytes, ``tocOffset, tocCompressedLen, tocUncompressedLen, manifestType`` and the magic
  ``GnUlInUx``; no tar-split.

Offsets point at the compressed data, past the 8-byte skippable header; ``manifestType`` is
always 1. The layer descriptor repeats the positions in annotations
(``io.github.containers.zstd-chunked.*``, or ``io.containers.zstd-chunked.*`` for the legacy
dialect) together with ``manifest-checksum``, the sha256 of the *compressed* TOC bytes. The
annotations come from the manifest, so they are trusted before the footer, which is not.

:func:`read_zstd_chunked_index` locates the TOC (annotations first, footer second), fetches
the TOC and tar-split in one request (none when they lie inside a tail the caller already
has), verifies them against every digest there is, decompresses them under a hard size limit
and converts the TOC with :func:`~lazyfs.formats.toc.entries_from_toc`.

Strictness, decided once here: the footer must sit in a skippable frame of exactly its own
size, and the TOC and tar-split each in a skippable frame whose length field equals their
compressed length. A blob breaking either would not even decompress as plain zstd (or was
written by a writer we do not know, such as a fork with a 48-byte footer), so it is refused
with :class:`~lazyfs.errors.LayerIndexError` instead of being guessed at.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio
import zstandard

from ..errors import InvalidDigest, LayerIndexError
from ..oci.blobs import BlobReader
from ..oci.digest import Digest
from .annotations import (
    ESTARGZ_TOC_DIGEST,
    LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION,
    ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    ZSTD_CHUNKED_MANIFEST_POSITION,
    ZSTD_CHUNKED_TARSPLIT_POSITION,
)
from .model import CODEC_ZSTD, LayerIndex
from .toc import MAX_TOC_SIZE, TAIL_SIZE, entries_from_toc, parse_toc_json

__all__ = [
    "CURRENT_FOOTER_MAGIC",
    "CURRENT_FOOTER_SIZE",
    "LEGACY_FOOTER_MAGIC",
    "LEGACY_FOOTER_SIZE",
    "MAX_TAR_SPLIT_SIZE",
    "SKIPPABLE_FRAME_MAGIC",
    "ZSTD_CHUNKED_TARSPLIT_CHECKSUM",
    "ZstdChunkedFooter",
    "ZstdChunkedLayer",
    "footer_from_annotations",
    "parse_zstd_chunked_footer",
    "read_tar_split",
    "read_zstd_chunked",
    "read_zstd_chunked_index",
]

#: The skippable-frame magic writers use (any of ``0x184D2A50``-``0x184D2A5F`` is accepted).
SKIPPABLE_FRAME_MAGIC = 0x184D2A50
#: Magic ending the 64-byte footer of the current dialect.
CURRENT_FOOTER_MAGIC = b"GNUlInUx"
#: Magic ending the 40-byte footer of the legacy dialect.
LEGACY_FOOTER_MAGIC = b"GnUlInUx"
CURRENT_FOOTER_SIZE = 64
LEGACY_FOOTER_SIZE = 40
#: Largest uncompressed tar-split accepted (the same bound as for the TOC).
MAX_TAR_SPLIT_SIZE = MAX_TOC_SIZE
#: Digest of the compressed tar-split, written by newer containers/storage.
ZSTD_CHUNKED_TARSPLIT_CHECKSUM = "io.github.containers.zstd-chunked.tarsplit-checksum"

_MANIFEST_TYPE_CRFS = 1
_FRAME_HEADER = struct.Struct("<II")
_HEADER_SIZE = _FRAME_HEADER.size  # 8
_CURRENT = struct.Struct("<7Q8s")
_LEGACY = struct.Struct("<4Q8s")
_NUMBER = re.compile(r"[0-9]{1,20}")
#: Keys only containers/storage writes into TOC entries; and keys only eStargz writes.
_STORAGE_KEYS = frozenset({"endOffset", "chunkType", "accesstime", "changetime"})
_ESTARGZ_KEYS = frozenset({"innerOffset", "userName", "groupName"})
_ESTARGZ_NAMES = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
#: Decompress in a worker thread above this size, so a big TOC does not stall other tasks.
_THREAD_THRESHOLD = 1 << 20
#: Digests some bytes must match, each with where it comes from (for the error message).
_Checks = list[tuple[str, Digest]]


@dataclass(frozen=True, slots=True)
class ZstdChunkedFooter:
    """Where a zstd:chunked blob keeps its TOC and tar-split (offsets past the frame header).

    ``tarsplit_offset``, ``tarsplit_length`` and ``tarsplit_uncompressed`` are 0 when the
    blob has no tar-split. ``dialect`` is ``"current"`` (64-byte footer, or the
    ``io.github.containers.*`` annotations) or ``"legacy"`` (40-byte footer, or the
    ``io.containers.*`` annotations).
    """

    toc_offset: int
    toc_length: int
    toc_uncompressed: int
    tarsplit_offset: int = 0
    tarsplit_length: int = 0
    tarsplit_uncompressed: int = 0
    dialect: str = "current"

    @property
    def data_end(self) -> int:
        """Blob offset where the TOC's skippable frame header starts (the file data end)."""
        return self.toc_offset - _HEADER_SIZE

    @property
    def has_tar_split(self) -> bool:
        return self.tarsplit_length > 0


@dataclass(frozen=True, slots=True)
class ZstdChunkedLayer:
    """What :func:`read_zstd_chunked` found: the index, the footer used, the tar-split.

    ``tar_split`` is the decompressed tar-split (JSON lines rebuilding the exact tar), or
    None when the blob has none.
    """

    index: LayerIndex
    footer: ZstdChunkedFooter
    tar_split: bytes | None


# ---------------------------------------------------------------- locating the TOC


def parse_zstd_chunked_footer(
    tail: bytes, blob_size: int, *, layer: str = "?"
) -> ZstdChunkedFooter | None:
    """The footer at the very end of ``tail``, the last ``len(tail)`` bytes of the blob.

    None when the last 8 bytes are neither footer magic. With a magic there, the footer and
    its skippable frame header must be complete in ``tail`` and well formed, and its values
    must fit a ``blob_size``-byte blob; otherwise :class:`LayerIndexError`.
    """
    if len(tail) > blob_size:
        raise ValueError(f"a {len(tail)}-byte tail of a {blob_size}-byte blob")
    magic = bytes(tail[-8:])
    if magic == CURRENT_FOOTER_MAGIC:
        size, dialect = CURRENT_FOOTER_SIZE, "current"
    elif magic == LEGACY_FOOTER_MAGIC:
        size, dialect = LEGACY_FOOTER_SIZE, "legacy"
    else:
        return None
    where = f"layer {layer}: the zstd:chunked {dialect} footer"
    if len(tail) < size + _HEADER_SIZE:
        raise LayerIndexError(f"{where} is cut short: only {len(tail)} bytes of the blob end")
    _check_frame_header(tail, len(tail) - size - _HEADER_SIZE, size, where=where)
    if dialect == "current":
        toc_off, toc_len, toc_raw, kind, ts_off, ts_len, ts_raw, _ = _CURRENT.unpack_from(
            tail, len(tail) - size
        )
    else:
        toc_off, toc_len, toc_raw, kind, _ = _LEGACY.unpack_from(tail, len(tail) - size)
        ts_off = ts_len = ts_raw = 0
    if kind != _MANIFEST_TYPE_CRFS:
        raise LayerIndexError(f"{where} has manifest type {kind}, not {_MANIFEST_TYPE_CRFS}")
    footer = ZstdChunkedFooter(toc_off, toc_len, toc_raw, ts_off, ts_len, ts_raw, dialect)
    return _validated(footer, blob_size, where=where)


def footer_from_annotations(
    annotations: Mapping[str, str], blob_size: int, *, layer: str = "?"
) -> ZstdChunkedFooter | None:
    """The TOC (and tar-split) position the layer descriptor announces, or None.

    The ``io.github.containers.zstd-chunked.*`` keys are used first (dialect ``"current"``),
    then ``io.containers.zstd-chunked.manifest-position`` (``"legacy"``). A malformed value,
    or one that does not fit a ``blob_size``-byte blob, is a :class:`LayerIndexError`
    naming the annotation.
    """
    for key, dialect in (
        (ZSTD_CHUNKED_MANIFEST_POSITION, "current"),
        (LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION, "legacy"),
    ):
        value = annotations.get(key)
        if value is None:
            continue
        where = f"layer {layer}: annotation {key}={value!r}"
        toc_off, toc_len, toc_raw, kind = _position(value, 4, where=where)
        if kind != _MANIFEST_TYPE_CRFS:
            raise LayerIndexError(f"{where}: manifest type {kind}, not {_MANIFEST_TYPE_CRFS}")
        ts_off = ts_len = ts_raw = 0
        ts_value = annotations.get(ZSTD_CHUNKED_TARSPLIT_POSITION) if dialect == "current" else None
        if ts_value is not None:
            ts_where = f"layer {layer}: annotation {ZSTD_CHUNKED_TARSPLIT_POSITION}={ts_value!r}"
            ts_off, ts_len, ts_raw = _position(ts_value, 3, where=ts_where)
            where = f"layer {layer}: annotations {key} and {ZSTD_CHUNKED_TARSPLIT_POSITION}"
        footer = ZstdChunkedFooter(toc_off, toc_len, toc_raw, ts_off, ts_len, ts_raw, dialect)
        return _validated(footer, blob_size, where=where)
    return None


def _position(value: str, count: int, *, where: str) -> list[int]:
    """``count`` decimal numbers separated by ``:`` (no signs, spaces or underscores)."""
    parts = value.split(":")
    if len(parts) != count or not all(_NUMBER.fullmatch(p) for p in parts):
        raise LayerIndexError(f"{where}: expected {count} decimal numbers separated by ':'")
    return [int(p) for p in parts]


def _check_frame_header(data: bytes, at: int, length: int, *, where: str) -> None:
    """The 8 bytes at ``data[at:]`` must be a skippable frame header for ``length`` bytes."""
    magic, declared = _FRAME_HEADER.unpack_from(data, at)
    if magic & 0xFFFFFFF0 != SKIPPABLE_FRAME_MAGIC:
        raise LayerIndexError(f"{where} is not in a zstd skippable frame (magic {magic:#010x})")
    if declared != length:
        raise LayerIndexError(
            f"{where} is in a skippable frame of {declared} bytes, expected {length}"
        )


def _validated(footer: ZstdChunkedFooter, blob_size: int, *, where: str) -> ZstdChunkedFooter:
    """``footer`` if its ranges fit the blob's layout, else :class:`LayerIndexError`.

    The TOC must lie after its frame header and before the smallest footer frame; a tar-split
    (only the current dialect has one) before the current footer frame, not overlapping the
    TOC's frame. A zero tar-split length means no tar-split, whatever the other two say.
    """
    f = footer
    toc_limit = blob_size - _HEADER_SIZE - LEGACY_FOOTER_SIZE
    if f.toc_length == 0 or f.toc_uncompressed == 0:
        raise LayerIndexError(f"{where}: the TOC is empty")
    if f.toc_offset < _HEADER_SIZE or f.toc_offset + f.toc_length > toc_limit:
        raise LayerIndexError(
            f"{where}: the TOC at {f.toc_offset} (+{f.toc_length}) does not fit the "
            f"{blob_size}-byte blob"
        )
    if f.tarsplit_length == 0:
        if f.tarsplit_offset or f.tarsplit_uncompressed:
            f = ZstdChunkedFooter(f.toc_offset, f.toc_length, f.toc_uncompressed, dialect=f.dialect)
        return f
    ts_limit = blob_size - _HEADER_SIZE - CURRENT_FOOTER_SIZE
    if f.tarsplit_offset < _HEADER_SIZE or f.tarsplit_offset + f.tarsplit_length > ts_limit:
        raise LayerIndexError(
            f"{where}: the tar-split at {f.tarsplit_offset} (+{f.tarsplit_length}) does not "
            f"fit the {blob_size}-byte blob"
        )
    if f.tarsplit_uncompressed == 0:
        raise LayerIndexError(f"{where}: the tar-split decompresses to nothing")
    toc_frame = (f.data_end, f.toc_offset + f.toc_length)
    ts_frame = (f.tarsplit_offset - _HEADER_SIZE, f.tarsplit_offset + f.tarsplit_length)
    if toc_frame[0] < ts_frame[1] and ts_frame[0] < toc_frame[1]:
        raise LayerIndexError(f"{where}: the TOC and the tar-split overlap")
    return f


# ---------------------------------------------------------------- reading


async def read_zstd_chunked_index(
    blob: BlobReader,
    *,
    annotations: Mapping[str, str],
    layer: str,
    tail: bytes | None = None,
) -> LayerIndex:
    """The verified :class:`LayerIndex` of a zstd:chunked layer (see :func:`read_zstd_chunked`).

    The tar-split is neither fetched nor decompressed: a mount never needs it, and it is
    often bigger than the TOC (about 1.4 KB an entry).
    """
    layer_data = await read_zstd_chunked(
        blob, annotations=annotations, layer=layer, tail=tail, with_tar_split=False
    )
    return layer_data.index


async def read_zstd_chunked(
    blob: BlobReader,
    *,
    annotations: Mapping[str, str],
    layer: str,
    tail: bytes | None = None,
    with_tar_split: bool = True,
) -> ZstdChunkedLayer:
    """Locate, fetch, verify, decompress and convert a zstd:chunked layer's TOC and tar-split.

    With ``with_tar_split`` off, only the TOC is fetched and ``tar_split`` is None.

    ``annotations`` are the layer descriptor's; ``tail``, when the caller has it, the last
    ``min(blob.size, TAIL_SIZE)`` bytes of the blob. The TOC is located from the annotations,
    else from the footer (fetching the tail in one read if not given). TOC and tar-split
    come in one ``read_ranges`` call, or from ``tail`` when they lie inside it.

    Raises :class:`LayerIndexError` for a blob that is not zstd:chunked or is malformed, and
    :class:`~lazyfs.errors.DigestMismatch` when the TOC or tar-split does not match a digest
    from the annotations or the TOC (the manifest-checksum of either prefix, eStargz's
    ``toc.digest`` of the uncompressed TOC, and, when the blob has a tar-split, the TOC's
    ``tarSplitDigest`` and the tarsplit-checksum annotation).
    Without a manifest-checksum or ``toc.digest`` annotation the TOC is not authenticated by
    the manifest; every chunk still is by the TOC's own digests.
    """
    expected = _expected_digests(annotations, layer=layer)
    footer = footer_from_annotations(annotations, blob.size, layer=layer)
    tail_start = blob.size - len(tail) if tail is not None else blob.size
    if footer is None:
        if tail is None:
            tail_start = max(0, blob.size - TAIL_SIZE)
            tail = await blob.read(tail_start, blob.size - tail_start)
        footer = parse_zstd_chunked_footer(tail, blob.size, layer=layer)
        if footer is None:
            raise LayerIndexError(
                f"layer {layer}: no zstd:chunked annotations and no zstd:chunked footer"
            )
    toc_frame, ts_frame = await _fetch_frames(blob, footer, tail, tail_start, with_tar_split)
    _check_frame_header(toc_frame, 0, footer.toc_length, where=f"layer {layer}: the TOC")
    toc_compressed = toc_frame[_HEADER_SIZE:]
    _verify(expected.get("toc"), toc_compressed, f"layer {layer}: the compressed TOC")
    ts_compressed = None
    if ts_frame is not None:
        _check_frame_header(ts_frame, 0, footer.tarsplit_length, where=f"layer {layer}: tar-split")
        ts_compressed = ts_frame[_HEADER_SIZE:]
        _verify(expected.get("tarsplit"), ts_compressed, f"layer {layer}: the tar-split")
    decode = _Decode(footer, toc_compressed, ts_compressed, expected.get("toc_json"), layer)
    if (
        footer.toc_uncompressed + (footer.tarsplit_uncompressed if ts_compressed else 0)
        > _THREAD_THRESHOLD
    ):
        return await trio.to_thread.run_sync(decode.run, blob)
    return decode.run(blob)


async def read_tar_split(
    blob: BlobReader,
    footer: ZstdChunkedFooter,
    *,
    layer: str = "?",
    expected: Digest | str | None = None,
) -> bytes:
    """The decompressed tar-split of a blob whose footer is known (one range read).

    ``expected``: digest of the compressed tar-split (the TOC's ``tarSplitDigest``), checked
    when given. :class:`LayerIndexError` when the blob has no tar-split.
    """
    if not footer.has_tar_split:
        raise LayerIndexError(f"layer {layer}: the zstd:chunked blob has no tar-split")
    start = footer.tarsplit_offset - _HEADER_SIZE
    frame = await blob.read(start, footer.tarsplit_length + _HEADER_SIZE)
    _check_frame_header(frame, 0, footer.tarsplit_length, where=f"layer {layer}: tar-split")
    data = frame[_HEADER_SIZE:]
    if expected is not None:
        _verify(
            [("tarSplitDigest", _digest(expected, "tarSplitDigest", layer))],
            data,
            f"layer {layer}: the tar-split",
        )
    return bytes(
        _decompress_bounded(
            data, footer.tarsplit_uncompressed, MAX_TAR_SPLIT_SIZE, what=f"layer {layer}: tar-split"
        )
    )


def _expected_digests(annotations: Mapping[str, str], *, layer: str) -> dict[str, _Checks]:
    """Digests the annotations promise, by what they cover, each with its annotation name.

    ``toc``: the compressed TOC; ``toc_json``: the uncompressed TOC; ``tarsplit``: the
    compressed tar-split. A malformed digest is a :class:`LayerIndexError` naming its key.
    """
    out: dict[str, _Checks] = {}
    for key, slot in (
        (LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM, "toc"),
        (ZSTD_CHUNKED_MANIFEST_CHECKSUM, "toc"),
        (ESTARGZ_TOC_DIGEST, "toc_json"),
        (ZSTD_CHUNKED_TARSPLIT_CHECKSUM, "tarsplit"),
    ):
        value = annotations.get(key)
        if value is None:
            continue
        out.setdefault(slot, []).append((key, _digest(value, f"annotation {key}", layer)))
    return out


def _digest(value: object, what: str, layer: str) -> Digest:
    """``value`` as a :class:`Digest`, or a :class:`LayerIndexError` naming ``what``."""
    try:
        return Digest(value)
    except InvalidDigest as exc:
        raise LayerIndexError(f"layer {layer}: {what}: {exc}") from None


async def _fetch_frames(
    blob: BlobReader,
    footer: ZstdChunkedFooter,
    tail: bytes | None,
    tail_start: int,
    with_tar_split: bool = True,
) -> tuple[bytes, bytes | None]:
    """The TOC's and the tar-split's skippable frames (header included), in one request.

    Ranges inside ``tail`` are cut from it; the rest are merged into one span when they are
    adjacent (as writers lay them out), and fetched with a single ``read_ranges`` call.
    """
    wanted = [(footer.data_end, footer.toc_length + _HEADER_SIZE)]
    if footer.has_tar_split and with_tar_split:
        ts_start = footer.tarsplit_offset - _HEADER_SIZE
        wanted.append((ts_start, footer.tarsplit_length + _HEADER_SIZE))
    out: list[bytes | None] = [None] * len(wanted)
    missing = []
    for i, (off, length) in enumerate(wanted):
        if tail is not None and off >= tail_start:
            out[i] = bytes(tail[off - tail_start : off - tail_start + length])
        else:
            missing.append(i)
    if missing:
        spans = _spans([wanted[i] for i in missing])
        datas = await blob.read_ranges(spans)
        for i in missing:
            off, length = wanted[i]
            for (s_off, _), data in zip(spans, datas, strict=True):
                if s_off <= off and off + length <= s_off + len(data):
                    out[i] = data[off - s_off : off - s_off + length]
                    break
    toc_frame = out[0]
    assert toc_frame is not None
    return toc_frame, out[1] if len(out) > 1 else None


def _spans(ranges: Sequence[tuple[int, int]], gap: int = TAIL_SIZE) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges merged where less than ``gap`` bytes separate them."""
    merged: list[list[int]] = []
    for off, length in sorted(ranges):
        if merged and off - (merged[-1][0] + merged[-1][1]) < gap:
            last = merged[-1]
            last[1] = max(last[1], off + length - last[0])
        else:
            merged.append([off, length])
    return [(o, n) for o, n in merged]


def _verify(checks: _Checks | None, data: bytes, what: str) -> None:
    """:class:`DigestMismatch` unless ``data`` matches every ``(source, digest)`` check."""
    for source, digest in checks or ():
        digest.verify(data, f"{what} (checked against {source})")


class _Decode:
    """The CPU-bound part of reading: decompress, parse, convert (runs in a thread if big)."""

    def __init__(
        self,
        footer: ZstdChunkedFooter,
        toc_compressed: bytes,
        ts_compressed: bytes | None,
        toc_json_checks: _Checks | None,
        layer: str,
    ) -> None:
        self.footer = footer
        self.toc_compressed = toc_compressed
        self.ts_compressed = ts_compressed
        self.toc_json_checks = toc_json_checks
        self.layer = layer

    def run(self, blob: BlobReader) -> ZstdChunkedLayer:
        footer, layer = self.footer, self.layer
        toc_json = _decompress_bounded(
            self.toc_compressed, footer.toc_uncompressed, MAX_TOC_SIZE, what=f"layer {layer}: TOC"
        )
        _verify(self.toc_json_checks, toc_json, f"layer {layer}: the uncompressed TOC")
        toc = parse_toc_json(toc_json, layer=layer)
        del toc_json  # the parsed TOC is all that is needed now (a 1M-entry TOC is 200 MB)
        tar_split = None
        if self.ts_compressed is not None:
            self._check_tar_split_digest(toc)
            tar_split = bytes(
                _decompress_bounded(
                    self.ts_compressed,
                    footer.tarsplit_uncompressed,
                    MAX_TAR_SPLIT_SIZE,
                    what=f"layer {layer}: tar-split",
                )
            )
        contents = entries_from_toc(toc, layer=layer, codec=CODEC_ZSTD, data_end=footer.data_end)
        dialect = footer.dialect + (", estargz keys" if _uses_estargz_keys(toc) else "")
        del toc
        index = LayerIndex(
            format="zstd:chunked",
            blob_digest=blob.digest,
            blob_size=blob.size,
            table=contents.table,
            index_size=footer.toc_uncompressed,
            prefetch_offset=contents.prefetch_offset,
            no_prefetch=contents.no_prefetch,
            dialect=dialect,
        )
        return ZstdChunkedLayer(index, footer, tar_split)

    def _check_tar_split_digest(self, toc: Mapping) -> None:
        """The TOC's ``tarSplitDigest`` (when present) must match the compressed tar-split."""
        value = toc.get("tarSplitDigest")
        if not value:
            return
        digest = _digest(value, "TOC tarSplitDigest", self.layer)
        assert self.ts_compressed is not None
        _verify(
            [("the TOC's tarSplitDigest", digest)],
            self.ts_compressed,
            f"layer {self.layer}: the tar-split",
        )


def _decompress_bounded(data: bytes, declared: int, limit: int, *, what: str) -> bytes | bytearray:
    """Exactly ``declared`` bytes decompressed from ``data``, never more than that is produced.

    :class:`LayerIndexError` when ``declared`` exceeds ``limit``, when the data is not zstd,
    or when it decompresses to fewer or more bytes than declared (decompression stops one
    byte past ``declared``: a bomb costs no more memory than an honest TOC).
    """
    if declared > limit:
        raise LayerIndexError(
            f"{what} declares {declared} uncompressed bytes, more than the {limit} accepted"
        )
    try:
        if zstandard.frame_content_size(data) == declared:
            # The common case: one frame whose header declares the size (so the output is
            # allocated once, at that size, and nothing more can come out of it): one call,
            # half the time of streaming. Anything after the frame: streamed, for the error.
            whole = zstandard.ZstdDecompressor().decompressobj()
            out = whole.decompress(data)
            if whole.eof and not whole.unused_data and len(out) == declared:
                return out
    except zstandard.ZstdError:
        pass  # the streaming below says what is wrong
    out = bytearray()
    try:
        decompressor = zstandard.ZstdDecompressor()
        with decompressor.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while len(out) <= declared:
                piece = reader.read(declared + 1 - len(out))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as exc:
        raise LayerIndexError(f"{what} is not valid zstd data ({exc})") from None
    if len(out) != declared:
        more = "more" if len(out) > declared else f"only {len(out)}"
        raise LayerIndexError(f"{what} decompresses to {more} bytes, not the {declared} declared")
    return out  # not copied into bytes: it may be hundreds of MB


def _uses_estargz_keys(toc: Mapping) -> bool:
    """Whether the TOC's entries use eStargz keys (stargz-snapshotter's zstdchunked).

    containers/storage writes ``endOffset`` on every file with content (and access/change
    times); eStargz never does, and alone writes ``innerOffset``, owner names and landmarks.
    """
    estargz = False
    for raw in toc.get("entries") or ():
        if not isinstance(raw, dict):
            continue
        if not _STORAGE_KEYS.isdisjoint(raw):
            return False
        only_estargz = not _ESTARGZ_KEYS.isdisjoint(raw) or raw.get("name") in _ESTARGZ_NAMES
        offset_without_end = raw.get("type") == "reg" and bool(raw.get("offset"))
        estargz = estargz or only_estargz or offset_without_end
    return estargz
