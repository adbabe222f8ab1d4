"""A merged tree's file contents, read and prefetched through a chunk fetcher.

What a mounted image (:class:`~lazyfs.fs.image.LazyImage`, one tree and one fetcher) and
the layer server's forest (:class:`~lazyfs.fs.forest.LayerForest`, a tree and a fetcher
per layer) both do when the FUSE adapter reads a file or opens one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .tree import MergedTree

if TYPE_CHECKING:
    from .fetcher import ChunkFetcher

__all__ = ["prefetch_if_mapped", "read_file"]


async def read_file(
    tree: MergedTree,
    fetcher: ChunkFetcher,
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
    return await fetcher.read(layer, first, count, offset, size, sequential_hint=sequential)


def prefetch_if_mapped(
    tree: MergedTree, fetcher: ChunkFetcher, ino: int, *, executing: bool
) -> None:
    """File ``ino`` was opened (``executing``: by ``execve``): have ``fetcher`` get it whole
    if it is one programs map (see :meth:`~lazyfs.fs.tree.MergedTree.mapped_content`)."""
    content = tree.mapped_content(ino, executing=executing)
    if content is not None:
        fetcher.prefetch_file(*content)
