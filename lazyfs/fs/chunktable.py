"""All chunks of one layer in compact columnar arrays.

A mounted image may hold millions of chunks; one Python object each would cost hundreds of
bytes. A :class:`ChunkTable` keeps each field in an ``array`` (about 70 bytes a chunk,
digest included), and hands out :class:`~lazyfs.formats.model.Chunk` objects only for the
chunks a read touches. A regular file's chunks are a contiguous run ``[first, first+count)``
in its layer's table, in file order.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence

from ..formats.model import CODEC_GZIP, CODEC_NONE, CODEC_ZEROS, CODEC_ZSTD, Chunk
from ..oci.digest import Digest

__all__ = ["CODEC_CODES", "ChunkTable"]

_CODECS = (CODEC_ZSTD, CODEC_GZIP, CODEC_NONE, CODEC_ZEROS)
#: The byte each codec is stored as (what :meth:`ChunkTable.extend` takes).
CODEC_CODES = {c: i for i, c in enumerate(_CODECS)}
_CODE = CODEC_CODES
_NO_DIGEST = bytes(32)


class ChunkTable:
    """The chunks of one layer. Append files with :meth:`add_file`, then read."""

    __slots__ = (
        "_blob_length",
        "_blob_offset",
        "_codec",
        "_digests",
        "_file_offset",
        "_has_digest",
        "_inner",
        "_size",
    )

    def __init__(self) -> None:
        self._file_offset = array("Q")
        self._size = array("Q")
        self._blob_offset = array("Q")
        self._blob_length = array("Q")
        self._inner = array("Q")
        self._codec = bytearray()
        self._has_digest = bytearray()
        self._digests = bytearray()

    def __len__(self) -> int:
        return len(self._codec)

    def add_file(self, chunks: Sequence[Chunk]) -> tuple[int, int]:
        """Append one file's chunks; returns ``(first, count)`` to find them again."""
        first = len(self)
        for c in chunks:
            self._file_offset.append(c.file_offset)
            self._size.append(c.size)
            self._blob_offset.append(c.blob_offset)
            self._blob_length.append(c.blob_length)
            self._inner.append(c.inner_offset)
            self._codec.append(_CODE[c.codec])
            if c.digest is not None:
                if c.digest.algorithm != "sha256":
                    raise ValueError(f"chunk digests must be sha256, not {c.digest.algorithm}")
                self._has_digest.append(1)
                self._digests += bytes.fromhex(c.digest.hex)
            else:
                self._has_digest.append(0)
                self._digests += _NO_DIGEST
        return first, len(chunks)

    def extend(
        self,
        *,
        file_offset: Sequence[int],
        size: Sequence[int],
        blob_offset: Sequence[int],
        blob_length: Sequence[int],
        inner: Sequence[int],
        codec: bytes,
        digests: bytes,
        has_digest: bytes | None = None,
    ) -> int:
        """Append many chunks at once, column by column; returns the index of the first.

        ``codec``: one :data:`CODEC_CODES` byte a chunk; ``digests``: 32 raw sha256 bytes a
        chunk (zeros where there is none); ``has_digest``: one 0/1 byte a chunk (default:
        all 1). Every column must have the same length (``ValueError`` otherwise), values
        must fit 64 bits (``OverflowError``).
        """
        n = len(codec)
        if has_digest is None:
            has_digest = b"\x01" * n
        lengths = {len(file_offset), len(size), len(blob_offset), len(blob_length), len(inner)}
        if lengths != {n} or len(has_digest) != n or len(digests) != 32 * n:
            raise ValueError("chunk columns of different lengths")
        if n and max(codec) >= len(_CODECS):
            raise ValueError("unknown codec code")
        columns = [array("Q", c) for c in (file_offset, size, blob_offset, blob_length, inner)]
        first = len(self)
        for mine, new in zip(
            (self._file_offset, self._size, self._blob_offset, self._blob_length, self._inner),
            columns,
            strict=True,
        ):
            mine.extend(new)
        self._codec += codec
        self._has_digest += has_digest
        self._digests += digests
        return first

    def chunk(self, i: int) -> Chunk:
        """Chunk ``i`` as a model object."""
        digest = None
        if self._has_digest[i]:
            digest = Digest("sha256:" + self._digests[32 * i : 32 * i + 32].hex())
        return Chunk(
            self._file_offset[i],
            self._size[i],
            self._blob_offset[i],
            self._blob_length[i],
            self._inner[i],
            _CODECS[self._codec[i]],
            digest,
        )

    def digest_bytes(self, i: int) -> bytes | None:
        """The raw 32-byte sha256 of chunk ``i`` (a cache key), or None."""
        return bytes(self._digests[32 * i : 32 * i + 32]) if self._has_digest[i] else None

    def blob_range(self, i: int) -> tuple[int, int]:
        """``(blob_offset, blob_length)`` of chunk ``i``."""
        return self._blob_offset[i], self._blob_length[i]

    def codec(self, i: int) -> str:
        return _CODECS[self._codec[i]]

    def file_span(self, i: int) -> tuple[int, int]:
        """``(file_offset, size)`` of chunk ``i`` within its file."""
        return self._file_offset[i], self._size[i]

    def find(self, first: int, count: int, offset: int) -> int:
        """Index of the chunk of the file ``[first, first+count)`` holding byte ``offset``."""
        i = bisect.bisect_right(self._file_offset, offset, first, first + count) - 1
        return max(i, first)

    def nbytes(self) -> int:
        """Memory held by the arrays (for the memory figures)."""
        arrays = (self._file_offset, self._size, self._blob_offset, self._blob_length, self._inner)
        return sum(a.itemsize * len(a) for a in arrays) + len(self._codec) * 2 + len(self._digests)
