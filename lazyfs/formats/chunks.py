"""Turning a chunk's compressed bytes into its verified content.

:func:`decode_chunk` is the only place where bytes fetched from a blob become file content.
It decompresses no more than the chunk needs (a decompression bomb stops at the declared
size) and checks the chunk's digest before returning anything. What it returns is always a
new ``bytes`` object, never a view of ``data``: callers may reuse the buffer ``data`` lies in
as soon as it returns.

Both functions may run in several threads at once: each thread has its own zstd
decompression context (a context must not be used by two threads at once), and zstd and
sha256 release the GIL while they work on large buffers, so decoding in worker threads runs
in parallel with the event loop.
"""

from __future__ import annotations

import io
import threading
import zlib

import zstandard

from ..errors import ChunkError
from .model import CODEC_GZIP, CODEC_NONE, CODEC_ZEROS, CODEC_ZSTD, Chunk

__all__ = ["decode_chunk", "decompress_prefix"]

_local = threading.local()


def _zstd() -> zstandard.ZstdDecompressor:
    """This thread's decompression context."""
    dctx = getattr(_local, "zstd", None)
    if dctx is None:
        dctx = _local.zstd = zstandard.ZstdDecompressor()
    return dctx


def _zstd_prefix(data: bytes | memoryview, want: int) -> bytes:
    """The first ``want`` bytes (or fewer) of the zstd frames in ``data``."""
    dctx = _zstd()
    # The common case, one frame per chunk whose header declares exactly the size wanted,
    # in one call: the output is allocated once, at the declared (= wanted) size.
    if zstandard.frame_content_size(data) == want:
        out = dctx.decompress(data)
        if len(out) == want:
            return out
    with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
        first = reader.read(want)
        if len(first) >= want or not first:
            return first
        out = bytearray(first)
        while len(out) < want:
            piece = reader.read(want - len(out))
            if not piece:
                break
            out += piece
        return bytes(out)


def decompress_prefix(codec: str, data: bytes | memoryview, want: int, *, what: str) -> bytes:
    """The first ``want`` bytes (or fewer, if there are fewer) decompressed from ``data``.

    ``data`` is one or more complete zstd frames or gzip members; decompression stops as
    soon as ``want`` bytes are out.
    """
    if codec == CODEC_NONE:
        return bytes(data[:want])
    if codec == CODEC_ZSTD:
        try:
            return _zstd_prefix(data, want)
        except zstandard.ZstdError as exc:
            raise ChunkError(f"{what}: not valid zstd data ({exc})") from None
    if codec == CODEC_GZIP:
        out = bytearray()
        rest: bytes | memoryview = data  # zlib reads memoryviews: no copy of the input
        try:
            while len(out) < want and rest:
                member = zlib.decompressobj(wbits=31)
                out += member.decompress(rest, want - len(out))
                if not member.eof:
                    if member.unconsumed_tail:
                        break  # we have what we wanted
                    raise ChunkError(f"{what}: gzip data ends inside a member")
                rest = member.unused_data
        except zlib.error as exc:
            raise ChunkError(f"{what}: not valid gzip data ({exc})") from None
        return bytes(out)
    raise ChunkError(f"{what}: unknown codec {codec!r}")


def decode_chunk(chunk: Chunk, data: bytes | memoryview, *, what: str = "chunk") -> bytes:
    """The ``chunk.size`` bytes of a chunk from its fetched range ``data``, verified.

    ``data`` must be exactly the chunk's ``blob_length`` bytes (nothing for zeros).
    """
    if chunk.codec == CODEC_ZEROS:
        content = bytes(chunk.size)
    else:
        if len(data) != chunk.blob_length:
            raise ChunkError(f"{what}: got {len(data)} bytes, expected {chunk.blob_length}")
        want = chunk.inner_offset + chunk.size
        out = decompress_prefix(chunk.codec, data, want, what=what)
        if len(out) < want:
            raise ChunkError(
                f"{what}: decompresses to {len(out)} bytes, fewer than the {want} declared"
            )
        content = out[chunk.inner_offset :] if chunk.inner_offset else out
    if chunk.digest is not None:
        actual = chunk.digest.hasher()
        actual.update(content)
        if actual.hexdigest() != chunk.digest.hex:
            raise ChunkError(f"{what}: content does not match its digest {chunk.digest}")
    return content
