"""Reading the index of an eStargz (or legacy stargz) layer from its blob.

An eStargz blob is a valid tar.gz made of many gzip members. Its last tar entry,
``stargz.index.json``, is the table of contents (TOC), compressed on its own; a footer after
it (an empty gzip member) records where the TOC's member starts. Two footers exist:

* eStargz, 51 bytes: a gzip header with FLG = FEXTRA, XLEN = 26, one extra subfield with
  SI1 SI2 = ``S`` ``G`` and LEN = 22 holding ``"%016x" % toc_offset + "STARGZ"``, then an
  empty final stored deflate block (``01 00 00 ff ff``), CRC32 = 0 and ISIZE = 0;
* legacy stargz, 47 bytes: the same, except XLEN = 22 and the 22 bytes are the whole extra
  field (no subfield header).

:func:`read_estargz_index` locates the TOC from the footer (in the tail the caller may
already have, else with one range read), fetches it with at most one more read, inflates it
with a bound on its size, checks it against the layer's ``toc.digest`` annotation when there
is one, and converts it with :func:`~lazyfs.formats.toc.entries_from_toc`.
"""

from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Mapping

import trio

from ..errors import DigestMismatch, InvalidDigest, LayerIndexError
from ..oci.blobs import BlobReader
from ..oci.digest import Digest
from .annotations import ESTARGZ_TOC_DIGEST
from .model import CODEC_GZIP, LayerIndex
from .toc import MAX_TOC_SIZE, TAIL_SIZE, TOC_TAR_NAME, entries_from_toc, parse_toc_json

__all__ = [
    "DIALECT_ESTARGZ",
    "DIALECT_LEGACY",
    "ESTARGZ_FOOTER_SIZE",
    "LEGACY_FOOTER_SIZE",
    "parse_estargz_footer",
    "read_estargz_index",
]

#: Footer dialects, as reported in :attr:`LayerIndex.dialect`.
DIALECT_ESTARGZ = "estargz"
DIALECT_LEGACY = "stargz-legacy"

ESTARGZ_FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47

#: ID1 ID2 CM FLG(FEXTRA only); MTIME, XFL and OS follow and may hold anything.
_GZIP_MAGIC = b"\x1f\x8b\x08\x04"
#: An empty final stored deflate block, then CRC32 = 0 and ISIZE = 0.
_EMPTY_TRAILER = b"\x01\x00\x00\xff\xff" + bytes(8)
_ESTARGZ_EXTRA_HEAD = b"\x1a\x00SG\x16\x00"  # XLEN = 26, SI1 SI2 = 'S' 'G', LEN = 22
_LEGACY_EXTRA_HEAD = b"\x16\x00"  # XLEN = 22
_MAGIC_SUFFIX = b"STARGZ"
_HEX16 = re.compile(rb"[0-9a-fA-F]{16}")

#: Room for the tar headers (and end-of-archive blocks) around the TOC JSON.
_TAR_SLACK = 64 * 1024
#: Most bytes one inflate step produces (bounds the memory a bomb can take).
_INFLATE_STEP = 4 * 1024 * 1024
#: TOCs whose compressed form is larger than this are inflated in a worker thread.
_THREAD_THRESHOLD = 256 * 1024


def _footer_layouts() -> tuple[tuple[str, int, bytes], ...]:
    """(dialect, footer size, bytes between the 10-byte gzip header and the 22 payload bytes)."""
    return (
        (DIALECT_ESTARGZ, ESTARGZ_FOOTER_SIZE, _ESTARGZ_EXTRA_HEAD),
        (DIALECT_LEGACY, LEGACY_FOOTER_SIZE, _LEGACY_EXTRA_HEAD),
    )


def _match_footer(footer: bytes, extra_head: bytes) -> bytes | None:
    """The 22 payload bytes if every fixed byte of ``footer`` is right, else None."""
    if not footer.startswith(_GZIP_MAGIC) or not footer.endswith(_EMPTY_TRAILER):
        return None
    start = 10 + len(extra_head)
    if footer[10:start] != extra_head:
        return None
    payload = footer[start : start + 22]
    if len(payload) != 22 or not payload.endswith(_MAGIC_SUFFIX):
        return None
    if start + 22 + len(_EMPTY_TRAILER) != len(footer):
        return None
    return payload


def parse_estargz_footer(tail: bytes, *, blob_size: int | None = None) -> tuple[int, str] | None:
    """Where the TOC starts, from the footer at the end of ``tail``, and the footer's dialect.

    ``tail`` is the last bytes of a blob (at least 51 when the blob has them). Returns
    ``(toc_offset, dialect)`` with dialect ``"estargz"`` (51-byte footer) or
    ``"stargz-legacy"`` (47-byte footer), or None when ``tail`` ends in neither footer (the
    blob is simply not eStargz). A footer that is well formed but whose offset is not 16 hex
    digits, or (when ``blob_size`` is given) does not lie before the footer, raises
    :class:`LayerIndexError`.
    """
    for dialect, size, extra_head in _footer_layouts():
        if len(tail) < size:
            continue
        payload = _match_footer(bytes(tail[-size:]), extra_head)
        if payload is None:
            continue
        digits = payload[:16]
        if not _HEX16.fullmatch(digits):
            raise LayerIndexError(
                f"{dialect} footer: the TOC offset {digits!r} is not 16 hexadecimal digits"
            )
        offset = int(digits, 16)
        if blob_size is not None and offset >= blob_size - size:
            raise LayerIndexError(
                f"{dialect} footer: the TOC offset {offset} is not before the footer "
                f"of the {blob_size}-byte blob"
            )
        return offset, dialect
    return None


def _footer_size(dialect: str) -> int:
    return ESTARGZ_FOOTER_SIZE if dialect == DIALECT_ESTARGZ else LEGACY_FOOTER_SIZE


def _inflate_member(member: zlib._Decompress, data: bytes, out: bytearray, limit: int) -> bool:
    """Inflate one gzip member of ``data`` into ``out``; False if ``out`` would pass ``limit``.

    Output comes in steps of at most :data:`_INFLATE_STEP` bytes, and never more than one
    byte past ``limit``. Returns with ``member.eof`` unset if ``data`` ends inside the member.
    """
    piece = data
    while not member.eof:
        got = member.decompress(piece, min(limit + 1 - len(out), _INFLATE_STEP))
        out += got
        if len(out) > limit:
            return False
        if not got and len(member.unconsumed_tail) == len(piece):
            break  # no progress: the input ran out
        piece = member.unconsumed_tail
    return True


def _inflate_bounded(data: bytes, limit: int, *, layer: str) -> bytes:
    """All gzip members of ``data`` inflated, refusing (and stopping) past ``limit`` bytes."""
    out = bytearray()
    rest = data
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            if not _inflate_member(member, rest, out, limit):
                raise LayerIndexError(
                    f"layer {layer}: the eStargz TOC inflates to more than "
                    f"{MAX_TOC_SIZE // (1024 * 1024)} MiB; refusing it"
                )
            if not member.eof:
                raise LayerIndexError(f"layer {layer}: the eStargz TOC's gzip data is truncated")
            rest = member.unused_data
    except zlib.error as exc:
        raise LayerIndexError(f"layer {layer}: the eStargz TOC is not valid gzip ({exc})") from None
    return bytes(out)


def _toc_json_from_tar(tar: bytes, *, layer: str) -> bytes:
    """The content of the ``stargz.index.json`` entry of the TOC's tar stream."""
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
            for info in tf:
                if info.name == TOC_TAR_NAME and info.isreg():
                    if info.size > MAX_TOC_SIZE:
                        break
                    data = tf.extractfile(info).read()  # type: ignore[union-attr]
                    if len(data) != info.size:
                        raise LayerIndexError(f"layer {layer}: the eStargz TOC entry is truncated")
                    return data
    except tarfile.TarError as exc:
        raise LayerIndexError(
            f"layer {layer}: the eStargz TOC is not a tar stream ({exc})"
        ) from None
    raise LayerIndexError(
        f"layer {layer}: the eStargz TOC member holds no {TOC_TAR_NAME} of at most "
        f"{MAX_TOC_SIZE // (1024 * 1024)} MiB"
    )


def _verify_toc_digest(toc_json: bytes, annotations: Mapping[str, str], *, layer: str) -> None:
    """Check the TOC against the ``toc.digest`` annotation, if the layer has one."""
    expected = annotations.get(ESTARGZ_TOC_DIGEST)
    if expected is None:
        return
    try:
        digest = Digest(expected)
    except InvalidDigest:
        raise LayerIndexError(
            f"layer {layer}: annotation {ESTARGZ_TOC_DIGEST} is not a valid digest: {expected!r}"
        ) from None
    if Digest.of(toc_json, digest.algorithm) != digest:
        raise DigestMismatch(
            f"layer {layer}: the eStargz TOC does not match its annotation "
            f"{ESTARGZ_TOC_DIGEST} = {digest}"
        )


def _decode_toc(compressed: bytes, annotations: Mapping[str, str], *, layer: str) -> bytes:
    """The verified TOC JSON from the compressed TOC member(s)."""
    tar = _inflate_bounded(compressed, MAX_TOC_SIZE + _TAR_SLACK, layer=layer)
    toc_json = _toc_json_from_tar(tar, layer=layer)
    _verify_toc_digest(toc_json, annotations, layer=layer)
    return toc_json


async def _fetch_tail(blob: BlobReader, tail: bytes | None) -> bytes:
    """The blob's last ``min(size, TAIL_SIZE)`` bytes, or the caller's ``tail``."""
    if tail is not None:
        if len(tail) > blob.size:
            raise ValueError(f"a {len(tail)}-byte tail of a {blob.size}-byte blob")
        return tail
    length = min(blob.size, TAIL_SIZE)
    return await blob.read(blob.size - length, length)


async def _fetch_toc(blob: BlobReader, tail: bytes, toc_offset: int, footer_start: int) -> bytes:
    """The compressed TOC ``[toc_offset, footer_start)``, from the tail when it holds it."""
    tail_start = blob.size - len(tail)
    if toc_offset >= tail_start:
        return tail[toc_offset - tail_start : footer_start - tail_start]
    return await blob.read(toc_offset, footer_start - toc_offset)


async def read_estargz_index(
    blob: BlobReader,
    *,
    annotations: Mapping[str, str],
    layer: str,
    tail: bytes | None = None,
) -> LayerIndex:
    """The :class:`LayerIndex` of an eStargz or legacy stargz blob.

    ``tail``: the blob's last ``min(size, TAIL_SIZE)`` bytes if the caller has them (any
    shorter suffix is accepted too); otherwise they are fetched with one range read. The TOC
    costs at most one more read. ``annotations`` are the layer descriptor's: when they carry
    ``containerd.io/snapshot/stargz/toc.digest`` the TOC must match it
    (:class:`DigestMismatch` otherwise). ``layer`` names the layer in errors. A blob with
    no footer, a TOC that does not inflate to a tar holding ``stargz.index.json``, or one
    larger than ``MAX_TOC_SIZE`` uncompressed raises :class:`LayerIndexError`.
    """
    tail = await _fetch_tail(blob, tail)
    try:
        found = parse_estargz_footer(tail, blob_size=blob.size)
    except LayerIndexError as exc:
        raise LayerIndexError(f"layer {layer}: {exc}") from None
    if found is None:
        raise LayerIndexError(f"layer {layer}: not an eStargz blob (no stargz footer at its end)")
    toc_offset, dialect = found
    footer_start = blob.size - _footer_size(dialect)
    compressed = await _fetch_toc(blob, tail, toc_offset, footer_start)
    if len(compressed) > _THREAD_THRESHOLD:
        toc_json = await trio.to_thread.run_sync(
            lambda: _decode_toc(compressed, annotations, layer=layer)
        )
    else:
        toc_json = _decode_toc(compressed, annotations, layer=layer)
    toc = parse_toc_json(toc_json, layer=layer)
    contents = entries_from_toc(toc, layer=layer, codec=CODEC_GZIP, data_end=toc_offset)
    return LayerIndex(
        format="estargz",
        dialect=dialect,
        blob_digest=blob.digest,
        blob_size=blob.size,
        table=contents.table,
        index_size=len(toc_json),
        prefetch_offset=contents.prefetch_offset,
        no_prefetch=contents.no_prefetch,
    )
