"""An image opened for mounting: its merged tree and the fetcher behind its file contents.

:func:`open_image` is everything ``lazyfs mount`` does before the kernel is involved:
resolve the reference, read every layer's index (concurrently; a range request or two per
indexed layer, a streamed copy for layers without an index), merge them into one tree, and
set up the chunk fetcher over the layers' blobs and the local cache. :class:`LazyImage`
then answers what the FUSE adapter asks, in the adapter's terms but with no FUSE in it, so
tests drive it directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..errors import unwrap_task_errors
from ..formats.detect import read_layer_index
from ..formats.model import LayerIndex
from ..oci.digest import Digest
from ..oci.manifest import ImageManifest
from ..oci.platform import Platform
from ..oci.resolve import ResolvedImage
from ..oci.store import ImageStore
from .cache import ChunkCache
from .fetcher import ChunkFetcher, LayerSource
from .files import prefetch_if_mapped, read_file
from .tree import MergedTree

__all__ = ["LazyImage", "MountOptions", "default_cache_dir", "open_image"]

log = logging.getLogger("lazyfs.mount")


def default_cache_dir() -> Path:
    """``$LAZYFS_CACHE_DIR``, else ``/var/cache/lazyfs`` for root, else ``~/.cache/lazyfs``."""
    env = os.environ.get("LAZYFS_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/lazyfs")
    return Path.home() / ".cache" / "lazyfs"


@dataclass
class MountOptions:
    """What a mount needs beyond the image: caches, prefetch, platform."""

    platform: Platform | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    cache_bytes: int = 10 * 1024**3
    memory_cache_bytes: int = 256 * 1024**2
    prefetch: bool = True
    prefetch_all: bool = False
    read_timeout: float = 60.0
    index_concurrency: int = 4


@dataclass
class LazyImage:
    """A resolved image with its merged tree and chunk fetcher, ready to serve reads."""

    image: ResolvedImage
    indexes: list[dict]
    tree: MergedTree
    fetcher: ChunkFetcher
    cache: ChunkCache
    options: MountOptions
    timings: dict[str, float]

    async def read(self, ino: int, offset: int, size: int, *, sequential: bool = False) -> bytes:
        """Bytes ``[offset, offset+size)`` of regular file ``ino`` (short at its end)."""
        return await read_file(self.tree, self.fetcher, ino, offset, size, sequential=sequential)

    def opened(self, ino: int, *, executing: bool = False) -> None:
        """A file was opened (``executing``: by ``execve``): see :func:`prefetch_if_mapped`;
        nothing with prefetching off."""
        if self.options.prefetch:
            prefetch_if_mapped(self.tree, self.fetcher, ino, executing=executing)

    def prefetch_whole(self, ino: int) -> bool:
        """Start fetching regular file ``ino`` whole in the background (see
        :meth:`ChunkFetcher.prefetch_file`); whether anything was started. Needs the mount
        (the fetcher running)."""
        content = self.tree.content(ino)
        return content is not None and self.fetcher.prefetch_file(*content)

    def stats(self) -> dict:
        """What a mount reports to ``lazyfs stats``."""
        return {
            "image": str(self.image.reference),
            "digest": str(self.image.digest),
            "platform": str(self.image.platform),
            "inodes": len(self.tree),
            "layers": self.indexes,
            "timings": self.timings,
            "fetch": self.fetcher.stats_snapshot(),
        }

    def close(self) -> None:
        self.cache.close()


async def _read_indexes(
    store: ImageStore,
    manifest: ImageManifest,
    diff_id: Callable[[int], Awaitable[Digest | None]],
    options: MountOptions,
) -> list[LayerIndex]:
    """The index of each of ``manifest``'s layers (``diff_id(i)``: layer ``i``'s, awaited
    only for a layer streamed whole to index it)."""
    layers = manifest.layers
    out: list[LayerIndex | None] = [None] * len(layers)
    limiter = trio.CapacityLimiter(options.index_concurrency)

    async def one(i: int) -> None:
        desc = layers[i]
        async with limiter:
            out[i] = await read_layer_index(
                store.blob_reader(desc),
                media_type=desc.media_type,
                annotations=desc.annotations,
                layer=f"#{i} {desc.digest}",
                cache_dir=options.cache_dir,
                diff_id=lambda: diff_id(i),
            )

    with unwrap_task_errors():
        async with trio.open_nursery() as nursery:
            for i in range(len(layers)):
                nursery.start_soon(one, i)
    return [index for index in out if index is not None]


async def open_image(store: ImageStore, options: MountOptions) -> LazyImage:
    """Resolve, index and merge the image ``store`` names; nothing is mounted yet.

    The layers' indexes are read as soon as the manifest is in, while the config comes.
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    resolved = trio.Event()
    image: ResolvedImage | None = None
    indexes: list[LayerIndex] | None = None

    async def diff_id(i: int) -> Digest | None:
        await resolved.wait()
        assert image is not None
        ids = image.config.diff_ids
        return ids[i] if i < len(ids) else None

    async def read(manifest: ImageManifest) -> None:
        nonlocal indexes
        indexes = await _read_indexes(store, manifest, diff_id, options)

    with unwrap_task_errors():
        async with trio.open_nursery() as nursery:
            image = await store.resolve(
                options.platform, on_manifest=lambda m: nursery.start_soon(read, m)
            )
            timings["resolve"] = time.monotonic() - started
            resolved.set()
            mark = time.monotonic()
            if not nursery.child_tasks and indexes is None:  # on_manifest was not called
                nursery.start_soon(read, image.manifest)
    assert indexes is not None
    timings["index"] = time.monotonic() - mark  # what reading the indexes took beyond resolve

    mark = time.monotonic()
    tree = await trio.to_thread.run_sync(MergedTree.build, indexes)
    timings["merge"] = time.monotonic() - mark

    sources = []
    for i, (desc, index) in enumerate(zip(image.manifest.layers, indexes, strict=True)):
        sources.append(
            LayerSource(
                name=f"#{i} {desc.digest.hex[:12]} {index.format}",
                table=tree.tables[i],
                blob=None if index.local_path else store.blob_reader(desc),
                local_path=index.local_path,
                prefetch_offset=index.prefetch_offset,
                no_prefetch=index.no_prefetch,
            )
        )
    summaries = [
        {"digest": str(d.digest), "size": d.size, **ix.summary()}
        for d, ix in zip(image.manifest.layers, indexes, strict=True)
    ]
    del indexes  # the tree and the chunk tables hold what reads need
    cache = ChunkCache(options.memory_cache_bytes, options.cache_dir, options.cache_bytes)
    fetcher = ChunkFetcher(sources, cache, read_timeout=options.read_timeout)
    timings["total"] = time.monotonic() - started
    return LazyImage(image, summaries, tree, fetcher, cache, options, timings)
