"""A merged tree's file contents, read and prefetched through a chunk reader.

What a mounted image (:class:`~lazyfs.fs.image.LazyImage`, one tree and one fetcher) and
the layer server's forest (:class:`~lazyfs.fs.forest.LayerForest`, a tree and a fetcher
per layer) both do when the FUSE adapter reads a file or opens one.
"""

from __future__ import annotations

from typing import Protocol

from .tree import MergedTree

__all__ = ["ChunkReader", "prefetch_if_mapped", "read_file"]


class ChunkReader(Protocol):
    """What file content is read through (a :class:`~lazyfs.fs.fetcher.ChunkFetcher`)."""

    async def read(
        self,
        layer: int,
        first: int,
        count: int,
        offset: int,
        size: int,
        *,
        sequential_hint: bool = False,
    ) -> bytes: ...

    def prefetch_file(self, layer: int, first: int, count: int) -> bool: ...


async def read_file(
    tree: MergedTree,
    reader: ChunkReader,
    ino: int,
    offset: int,
    size: int,
    *,
    sequential: bool = False,
) -> bytes:
    """Bytes ``[offset, offset+size)`` of ``tree``'s regular file ``ino`` (short at its end)."""
    file_size = tree.size(ino)
    if offset >= file_size or size <= 0:
        return b""
    size = min(size, file_size - offset)
    content = tree.content(ino)
    if content is None:
        return bytes(size)  # a file whose content is all holes
    layer, first, count = content
    return await reader.read(layer, first, count, offset, size, sequential_hint=sequential)


def prefetch_if_mapped(tree: MergedTree, reader: ChunkReader, ino: int, *, executing: bool) -> None:
    """File ``ino`` was opened (``executing``: by ``execve``): have ``reader`` fetch it whole
    if it is one programs map (see :meth:`~lazyfs.fs.tree.MergedTree.mapped_content`)."""
    content = tree.mapped_content(ino, executing=executing)
    if content is not None:
        reader.prefetch_file(*content)
