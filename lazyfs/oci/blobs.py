"""Random access to a layer blob, wherever it lives.

The format readers (:mod:`lazyfs.formats`) and the chunk fetcher read blobs through
:class:`BlobReader`: a registry blob (byte ranges over HTTP), a file (an OCI layout's blob,
the local cache), or bytes in memory (tests, the converter).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from ..errors import DigestMismatch
from .digest import Digest
from .reference import Reference
from .registry import RegistryClient, range_slots

__all__ = ["BlobReader", "BytesBlob", "FileBlob", "RegistryBlob"]


class BlobReader(Protocol):
    """Read access to one blob of known size."""

    digest: Digest
    size: int

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (the range must lie within the blob)."""
        ...

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several ``(offset, length)`` ranges, in the order asked, in as few requests as can be."""
        ...

    async def read_ranges_into(
        self, ranges: Sequence[tuple[int, int]], buffer: bytearray | memoryview
    ) -> list[memoryview]:
        """:meth:`read_ranges`, written into ``buffer`` one range after the other.

        Returns the slices of ``buffer`` holding each range, in the order asked. ``buffer``
        must hold at least the sum of the lengths; its content is undefined after a failure.
        """
        ...

    async def stream(self, sink: Callable[[bytes], object]) -> None:
        """Feed the whole blob to ``sink`` in order, then verify it against ``digest``."""
        ...


def _check(offset: int, length: int, size: int) -> None:
    if offset < 0 or length < 0 or offset + length > size:
        raise ValueError(f"range ({offset}, {length}) is outside the {size}-byte blob")


class RegistryBlob:
    """A blob in a registry repository, read by HTTP byte ranges."""

    def __init__(self, client: RegistryClient, ref: Reference, digest: Digest, size: int) -> None:
        self.client, self.ref, self.digest, self.size = client, ref, digest, size

    async def read(self, offset: int, length: int) -> bytes:
        _check(offset, length, self.size)
        if length == 0:
            return b""
        return (await self.read_ranges([(offset, length)]))[0]

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return await self.client.fetch_ranges(self.ref, self.digest, ranges, blob_size=self.size)

    async def read_ranges_into(
        self, ranges: Sequence[tuple[int, int]], buffer: bytearray | memoryview
    ) -> list[memoryview]:
        """Streamed straight into ``buffer`` (:meth:`RegistryClient.fetch_ranges_into`)."""
        return await self.client.fetch_ranges_into(
            self.ref, self.digest, ranges, buffer, blob_size=self.size
        )

    async def stream(self, sink: Callable[[bytes], object]) -> None:
        await self.client.stream_blob(self.ref, self.digest, sink, size=self.size)

    def __repr__(self) -> str:
        return f"RegistryBlob({self.ref.name}@{self.digest})"


class FileBlob:
    """A blob stored in a local file (an OCI layout, the cache)."""

    def __init__(
        self, path: str | os.PathLike[str], digest: Digest, size: int | None = None
    ) -> None:
        self.path = Path(path)
        self.digest = digest
        self.size = self.path.stat().st_size if size is None else size
        self.bytes_read = 0

    def _pread(self, offset: int, length: int) -> bytes:
        _check(offset, length, self.size)
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"{self.path}: short read at {offset} ({len(data)} of {length} bytes)")
        self.bytes_read += length
        return data

    async def read(self, offset: int, length: int) -> bytes:
        return self._pread(offset, length)

    async def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self._pread(o, n) for o, n in ranges]

    async def read_ranges_into(
        self, ranges: Sequence[tuple[int, int]], buffer: bytearray | memoryview
    ) -> list[memoryview]:
        slots = range_slots(ranges, buffer)
        for (offset, length), slot in zip(ranges, slots, strict=True):
            slot[:] = self._pread(offset, length)
        return slots

    async def stream(self, sink: Callable[[bytes], object]) -> None:
        hasher = self.digest.hasher()
        with open(self.path, "rb") as f:
            while piece := f.read(1 << 20):
                hasher.update(piece)
                self.bytes_read += len(piece)
                result = sink(piece)
                if hasattr(result, "__await__"):
                    await result
                await trio.lowlevel.checkpoint()
        actual = f"{self.digest.algorithm}:{hasher.hexdigest()}"
        if actual != self.digest:
            raise DigestMismatch(f"blob file {self.path}: expected {self.digest}, got {actual}")

    def __repr__(self) -> str:
        return f"FileBlob({self.path})"


class BytesBlob(FileBlob):
    """A blob held in memory."""

    def __init__(self, data: bytes, digest: Digest | None = None) -> None:
        self.data = data
        self.digest = digest or Digest.of(data)
        self.size = len(data)
        self.bytes_read = 0
        self.path = Path("<memory>")

    def _pread(self, offset: int, length: int) -> bytes:
        _check(offset, length, self.size)
        self.bytes_read += length
        return self.data[offset : offset + length]

    async def stream(self, sink: Callable[[bytes], object]) -> None:
        self.digest.verify(self.data, "in-memory blob")
        for start in range(0, self.size, 1 << 20):
            result = sink(self.data[start : start + (1 << 20)])
            if hasattr(result, "__await__"):
                await result
        self.bytes_read += self.size

    def __repr__(self) -> str:
        return f"BytesBlob({self.size} bytes)"
