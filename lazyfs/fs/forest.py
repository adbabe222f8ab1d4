"""Many single-layer trees under one root directory: what ``lazyfs layerd`` serves.

A containerd snapshotter needs each image layer as a directory overlayfs can use as a lower
directory. ``lazyfs layerd`` serves all of them from one FUSE mount: its root directory has
one entry per layer, and under it that layer's own tree, built with
``MergedTree.build([index], overlay_whiteouts=True)`` (whiteouts as 0/0 character devices,
opaque directories marked with ``trusted.overlay.opaque``).

:class:`LayerForest` is that root with its layers, in the terms the FUSE adapter uses of a
:class:`~lazyfs.fs.tree.MergedTree` (``lookup``, ``attr``, ``children``, ``readlink``,
``xattrs``, ``size``, ``content``, ``path``, ``total_file_bytes``, ``len``) and of a
:class:`~lazyfs.fs.image.LazyImage` (``tree`` and ``read``), so
:class:`~lazyfs.fuse.LazyOperations` can serve it. Nothing here does I/O but :meth:`read`,
which asks the layer's own fetcher.

Inode numbers
-------------

The root is :data:`~lazyfs.fs.tree.ROOT_INODE`. Each layer added gets a *base*: its tree's
inode ``i`` is the forest's inode ``base + i`` (so the layer's root directory is
``base + 1``). Bases are handed out in increasing order, each layer's range after the
previous one's, and never reused while the forest lives: an inode number the kernel still
holds can only name what it named when the kernel learnt it. Finding the layer of an inode
is a binary search over the bases.

Layers come and go
------------------

:meth:`LayerForest.add` makes a new entry appear in the root; :meth:`LayerForest.remove`
takes the name away at once (later lookups do not find it). The kernel may still hold inodes
of a removed layer (an overlay mount over it, an open file, cached dentries), so the layer's
tree and fetcher stay until the kernel has forgotten every one of them: the FUSE adapter
reports lookups (:meth:`LayerForest.note_lookup`) and forgets (:meth:`LayerForest.forget`),
the forest counts them per layer, and a removed layer whose count is zero is *released*
(``on_release`` is called, e.g. to stop the layer's fetcher) and its inodes stop existing
(``KeyError``, like any unknown inode).

The root's children are listed in the order the layers were added (not by name), so that
a directory listing's cursor (the layer's root inode) stays valid while layers come and go.
"""

from __future__ import annotations

import bisect
import stat
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, overload

from .files import prefetch_if_mapped, read_file
from .tree import ROOT_INODE, Attr, MergedTree

if TYPE_CHECKING:
    from .fetcher import ChunkFetcher

__all__ = ["ForestLayer", "LayerForest"]

#: The root directory's mode: anyone may list it and enter the layers.
ROOT_MODE = stat.S_IFDIR | 0o755
_NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})
_INVALID_NAMES = frozenset({"", ".", ".."})


@dataclass(eq=False)
class ForestLayer:
    """One layer of the forest: its name in the root, its tree, where its content comes from.

    ``base``: the tree's inode ``i`` is the forest's ``base + i``. ``info``: what the owner
    wants to remember about it (digest, reference, format...). ``lookups``: how many
    references to its inodes the kernel holds. ``removed``: no longer in the root.
    ``released``: removed and forgotten by the kernel; its inodes no longer exist.
    ``fuse_errors``: FUSE operations on it that failed; ``reads`` and ``read_seconds``:
    the FUSE reads of its files and the time they took (both counted by the adapter).
    """

    name: str
    tree: MergedTree
    fetcher: ChunkFetcher
    base: int
    info: dict[str, Any] = field(default_factory=dict)
    added_at: float = field(default_factory=time.time)
    lookups: int = 0
    removed: bool = False
    released: bool = False
    fuse_errors: int = 0
    reads: int = 0
    read_seconds: float = 0.0

    @property
    def root_inode(self) -> int:
        """The forest's inode of the layer's root directory."""
        return self.base + ROOT_INODE

    @property
    def last_inode(self) -> int:
        """The forest's highest inode number of this layer."""
        return self.base + len(self.tree)


class _ShiftedChildren(Sequence[tuple[bytes, int]]):
    """A layer tree's ``children()`` view with the inode numbers moved by ``base``."""

    __slots__ = ("_base", "_items")

    def __init__(self, items: Sequence[tuple[bytes, int]], base: int) -> None:
        self._items = items
        self._base = base

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, int]]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [(name, ino + self._base) for name, ino in self._items[i]]
        name, ino = self._items[i]
        return name, ino + self._base


class LayerForest:
    """A root directory holding one single-layer tree per entry; see the module docs.

    Query methods raise ``KeyError`` for an inode that does not exist (never did, or
    belonged to a released layer). ``on_release(layer)`` is called when a removed layer is
    released.
    """

    def __init__(
        self,
        *,
        on_release: Callable[[ForestLayer], None] | None = None,
        prefetch_opened: bool = True,
    ) -> None:
        self.on_release = on_release
        #: Whether :meth:`opened` fetches the files programs map whole.
        self.prefetch_opened = prefetch_opened
        self._by_name: dict[str, ForestLayer] = {}
        # Every layer not yet released, by increasing base (for the inode -> layer search).
        self._bases: list[int] = []
        self._layers: list[ForestLayer] = []
        self._next_base = ROOT_INODE  # the first layer's root is inode 2
        self._mtime_ns = time.time_ns()

    # ------------------------------------------------------------------ the layers

    @property
    def tree(self) -> LayerForest:
        """The forest itself: it is its own tree (what the FUSE adapter queries)."""
        return self

    def add(
        self,
        name: str,
        tree: MergedTree,
        fetcher: ChunkFetcher,
        *,
        info: dict[str, Any] | None = None,
    ) -> ForestLayer:
        """Add ``tree`` as the directory ``name`` of the root; its content comes from ``fetcher``.

        The tree's files are in its ``tables[0]``'s chunks, which ``fetcher.read`` is asked
        for with layer 0. ``ValueError`` if ``name`` is taken or is not a valid file name.
        """
        if name in self._by_name:
            raise ValueError(f"the forest already has a layer named {name!r}")
        encoded = name.encode("utf-8", "surrogateescape")
        if name in _INVALID_NAMES or "/" in name or "\0" in name or len(encoded) > 255:
            raise ValueError(f"{name!r} cannot be a layer's name")
        layer = ForestLayer(name, tree, fetcher, self._next_base, dict(info or {}))
        self._next_base = layer.last_inode
        self._by_name[name] = layer
        self._bases.append(layer.base)
        self._layers.append(layer)
        self._mtime_ns = time.time_ns()
        return layer

    def remove(self, name: str) -> ForestLayer | None:
        """Take layer ``name`` out of the root; it is released once the kernel forgets it.

        Returns the layer, or None if there is no layer of that name.
        """
        layer = self._by_name.pop(name, None)
        if layer is None:
            return None
        layer.removed = True
        self._mtime_ns = time.time_ns()
        if layer.lookups <= 0:
            self._release(layer)
        return layer

    def get(self, name: str) -> ForestLayer | None:
        """The layer named ``name`` in the root, or None."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def layers(self) -> list[ForestLayer]:
        """The layers in the root, in the order they were added."""
        return list(self._by_name.values())

    def pending(self) -> list[ForestLayer]:
        """Removed layers the kernel still holds inodes of (not released yet)."""
        return [layer for layer in self._layers if layer.removed]

    def layer_of(self, ino: int) -> ForestLayer:
        """The layer inode ``ino`` belongs to; ``KeyError`` for the root and unknown inodes."""
        i = bisect.bisect_left(self._bases, ino) - 1
        if i >= 0:
            layer = self._layers[i]
            if ino <= layer.last_inode:
                return layer
        raise KeyError(ino)

    def is_layer_root(self, ino: int) -> bool:
        """True if ``ino`` is the root directory of a layer (an entry of the forest's root)."""
        try:
            return self.layer_of(ino).root_inode == ino
        except KeyError:
            return False

    def _locate(self, ino: int) -> tuple[MergedTree, int]:
        layer = self.layer_of(ino)
        return layer.tree, ino - layer.base

    def _release(self, layer: ForestLayer) -> None:
        i = bisect.bisect_left(self._bases, layer.base)
        if i < len(self._layers) and self._layers[i] is layer:
            del self._bases[i]
            del self._layers[i]
        layer.released = True
        if self.on_release is not None:
            self.on_release(layer)

    # ------------------------------------------------------------------ kernel references

    def note_lookup(self, ino: int, count: int = 1) -> None:
        """The kernel now holds ``count`` more references to ``ino`` (a lookup's answer)."""
        if ino == ROOT_INODE:
            return
        self.layer_of(ino).lookups += count

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` references to ``ino``; may release a removed layer."""
        if ino == ROOT_INODE:
            return
        try:
            layer = self.layer_of(ino)
        except KeyError:
            return
        layer.lookups -= count
        if layer.removed and layer.lookups <= 0:
            self._release(layer)

    # ------------------------------------------------------------------ tree queries

    def __len__(self) -> int:
        """Inodes in the root's layers, the root included."""
        return 1 + sum(len(layer.tree) for layer in self._by_name.values())

    @property
    def inode_count(self) -> int:
        return len(self)

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode named ``name`` in directory ``parent``, or None."""
        if parent == ROOT_INODE:
            if name in (b".", b".."):
                return ROOT_INODE
            layer = self._by_name.get(name.decode("utf-8", "surrogateescape"))
            return None if layer is None else layer.root_inode
        layer = self.layer_of(parent)
        local = parent - layer.base
        if name == b".." and local == ROOT_INODE:
            return ROOT_INODE
        found = layer.tree.lookup(local, name)
        return None if found is None else found + layer.base

    def attr(self, ino: int) -> Attr:
        """The attributes of inode ``ino``; the root is a 0755 directory owned by 0:0."""
        if ino == ROOT_INODE:
            return Attr(
                ROOT_INODE, ROOT_MODE, 2 + len(self._by_name), 0, 0, 0, self._mtime_ns, 0, 0
            )
        tree, local = self._locate(ino)
        a = tree.attr(local)
        return Attr(ino, a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime_ns, a.rdev, a.blocks)

    def size(self, ino: int) -> int:
        """``st_size`` of inode ``ino``."""
        if ino == ROOT_INODE:
            return 0
        tree, local = self._locate(ino)
        return tree.size(local)

    def children(self, ino: int) -> Sequence[tuple[bytes, int]]:
        """``(name, inode)`` of each entry of directory ``ino``.

        A layer's directories list by name (byte order); the root lists its layers in the
        order they were added.
        """
        if ino == ROOT_INODE:
            return [
                (layer.name.encode("utf-8", "surrogateescape"), layer.root_inode)
                for layer in self._by_name.values()
            ]
        layer = self.layer_of(ino)
        return _ShiftedChildren(layer.tree.children(ino - layer.base), layer.base)

    def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``; ValueError for anything else."""
        if ino == ROOT_INODE:
            raise ValueError("the root is not a symlink")
        tree, local = self._locate(ino)
        return tree.readlink(local)

    def xattrs(self, ino: int) -> Mapping[bytes, bytes]:
        """The extended attributes of inode ``ino`` (none on the root)."""
        if ino == ROOT_INODE:
            return _NO_XATTRS
        tree, local = self._locate(ino)
        return tree.xattrs(local)

    def content(self, ino: int) -> tuple[int, int, int] | None:
        """``(layer_no, first_chunk, chunk_count)`` in the inode's own layer tree, or None."""
        if ino == ROOT_INODE:
            return None
        tree, local = self._locate(ino)
        return tree.content(local)

    def path(self, ino: int) -> str:
        """``LAYER/path/in/layer`` of inode ``ino`` (``""`` for the root), for messages."""
        if ino == ROOT_INODE:
            return ""
        layer = self.layer_of(ino)
        inner = layer.tree.path(ino - layer.base)
        return f"{layer.name}/{inner}" if inner else layer.name

    def total_file_bytes(self) -> int:
        """The sizes of the layers' regular files added up (for ``statfs``)."""
        return sum(layer.tree.total_file_bytes() for layer in self._by_name.values())

    def __iter__(self) -> Iterator[ForestLayer]:
        return iter(self.layers())

    # ------------------------------------------------------------------ contents

    def opened(self, ino: int, *, executing: bool = False) -> None:
        """A file was opened (``executing``: by ``execve``): have its layer's reader fetch
        it whole if programs map it (see :meth:`~lazyfs.fs.tree.MergedTree.mapped_content`)."""
        if not self.prefetch_opened or ino == ROOT_INODE:
            return
        try:
            layer = self.layer_of(ino)
        except KeyError:
            return
        prefetch_if_mapped(layer.tree, layer.fetcher, ino - layer.base, executing=executing)

    async def read(self, ino: int, offset: int, size: int, *, sequential: bool = False) -> bytes:
        """Bytes ``[offset, offset+size)`` of regular file ``ino`` (short at its end).

        Read through the file's layer's fetcher. ``KeyError`` for an unknown inode.
        """
        layer = self.layer_of(ino)
        return await read_file(
            layer.tree, layer.fetcher, ino - layer.base, offset, size, sequential=sequential
        )
