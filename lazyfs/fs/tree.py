"""The merged directory tree of an image: its layers applied in order, frozen compact.

:meth:`MergedTree.build` applies the layer indexes bottom (index 0) to top, as the OCI
image specification's layer changesets say, then freezes the result into flat arrays. The
FUSE adapter asks it for every ``lookup``, ``getattr`` and ``readdir``; the chunk fetcher
asks it where a file's content is (:meth:`MergedTree.content`, a run of chunks in the
layer's :class:`~lazyfs.fs.chunktable.ChunkTable`). Nothing here does I/O.

How the layers combine
----------------------

* An entry adds its path or replaces what is there. A directory over a directory merges:
  the upper entry's metadata wins (mode, owner, mtime, and its xattrs replace the lower
  ones), the children stay. Anything else replaces the old node, and a directory's whole
  subtree with it.
* A layer's whiteouts act on what the layers *below* it left, never on its own entries:
  they are applied first, then the layer's other entries in their order. ``.wh.NAME``
  (whatever its entry type) removes ``NAME`` and its subtree; ``.wh..wh..opq`` in a
  directory ``D`` removes every child ``D`` had, ``D`` itself staying. So an entry of the
  layer with the path of one of its whiteouts, or under its opaque directory, stays
  whatever the order of the two in the layer. A whiteout whose directory is not in the
  tree (or is not a directory) has nothing to remove, and creates no directory.
* Parent directories a layer leaves implicit (an entry ``a/b/c`` with no ``a`` or ``a/b``
  in the tree) are made up: mode 0755, owner 0:0, mtime 0. Ones the tree already has are
  kept as they are.
* **A non-directory in the way of a path** (``x/y`` when ``x`` is a file, symlink, device
  or fifo) **is replaced by a made-up directory; a symlink is never followed.** The layer
  says ``x`` is a directory now (tar extractors that follow the symlink write outside the
  node the entry names, possibly outside the image: this is the one safe reading). In the
  same spirit, whiteouts and hardlink targets are looked up without following symlinks:
  a whiteout under a symlink removes nothing, a hardlink whose target path crosses one has
  no target.
* A hardlink names the inode its target path has *at that point* of the merge (the
  target may come from a lower layer, or from the same layer earlier on); the hardlink
  entry's own metadata is ignored, as ``link(2)`` would. ``st_nlink`` counts the names an
  inode has in the final tree: a name replaced or whited out later stops counting and the
  other names keep the old content. A hardlink to a missing target, or to a directory, is
  a :class:`~lazyfs.errors.LayerIndexError`.
* Directories have ``st_nlink`` 2 + their subdirectories. Symlinks have mode 0777 whatever
  the layer says (Linux shows no other). A regular file's ``st_blocks`` is its size in
  512-byte units, rounded up; other nodes have 0.
* Names starting with ``.wh..wh.`` other than the opaque marker are AUFS metadata and are
  skipped (as Docker does). Any other entry *under* a ``.wh.`` name, an entry for the root
  that is not a directory, an invalid name, mode or id is a :class:`LayerIndexError`
  naming the layer and the entry; no other exception leaves :meth:`MergedTree.build`.

With ``overlay_whiteouts=True`` (one layer shown as an overlayfs lower directory, for a
snapshotter) whiteouts are not applied but shown the way overlayfs stores them:
``.wh.NAME`` becomes a character device 0:0 named ``NAME`` (mode 0000, the whiteout's
owner and mtime), and a directory holding ``.wh..wh..opq`` gets the xattr
``trusted.overlay.opaque`` = ``y`` (the marker itself is not shown). Each is an ordinary
entry of the layer there, applied in order.

Memory
------

A mounted image may have a million entries and the tree lives as long as the mount, so it
holds no Python object per entry. Building uses temporary structures (one dict of children
per directory, columns of node attributes in ``array``\\s; replaced nodes are just left
behind). Freezing then walks the live tree breadth first, children in byte order of
their names, and numbers inodes in that order (so the same layers always give the same
numbers, and the children of a directory mostly have consecutive numbers). It keeps:

* per inode, one ``array`` per attribute (mode, uid, gid, size, mtime, nlink, parent,
  first name) and a ``start``/``count`` pair whose meaning follows the type: a
  directory's children (a run of names), a regular file's chunks (a run in the table of
  layer ``layer``), a symlink's target (bytes of one blob of targets);
* per name ("dentry"), its inode and the end of its bytes in one blob of all names. A
  directory's names are contiguous and sorted, so :meth:`~MergedTree.lookup` is a binary
  search and :meth:`~MergedTree.children` a slice; a hardlink is one more name of an inode;
* device numbers and xattrs, which few nodes have, in dicts keyed by inode.

Each array uses the smallest item type its values fit (uids that are all 0 cost one byte
each): typically about 30 bytes an inode, plus 8 bytes and the name's length a name, plus
the chunk tables (about 74 bytes a chunk, digest included). ``bench/tree_memory.py``
measures it: about 130 bytes an entry for a million one-chunk files, 55 of them the tree's.
The tree keeps no reference to the layer indexes; the chunks of files replaced by upper
layers stay in their layer's table (they cost memory, not correctness).
"""

from __future__ import annotations

import bisect
import gc
import os
import stat
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate, compress
from operator import is_not, itemgetter, mul, or_
from types import MappingProxyType
from typing import overload

from ..errors import LayerIndexError
from ..formats.model import EntryTable, EntryType, LayerIndex, rows_of
from .chunktable import ChunkTable

__all__ = ["OVERLAY_OPAQUE_XATTR", "ROOT_INODE", "Attr", "MergedTree"]

#: The inode number of the root directory (pyfuse3's ``ROOT_INODE``).
ROOT_INODE = 1
#: The xattr overlayfs marks an opaque directory with (``overlay_whiteouts=True``).
OVERLAY_OPAQUE_XATTR = b"trusted.overlay.opaque"

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_AUFS_PREFIX = ".wh..wh."

_IFMT = stat.S_IFMT(0o777777)
_MADE_UP_DIR_MODE = stat.S_IFDIR | 0o755
_NOT_REG_TABLE = bytes(int(k != EntryType.REG) for k in range(256))
_NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})
_LEAF_TYPES = {
    EntryType.REG: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}
#: Exceptions malformed entry fields cause (wrong types, values out of range, bad text).
_BAD_INPUT = (AttributeError, KeyError, OverflowError, TypeError, ValueError)


@dataclass(frozen=True, slots=True)
class Attr:
    """The ``stat`` of one inode, as FUSE reports it.

    ``mode`` includes the file type bits. ``rdev`` is ``os.makedev(major, minor)`` for
    devices, 0 otherwise. ``blocks`` counts 512-byte units: the size rounded up for regular
    files, 0 for everything else.
    """

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    rdev: int
    blocks: int


class MergedTree:
    """An image's merged file tree, read-only. Make one with :meth:`build`.

    Inode numbers run from :data:`ROOT_INODE` to :attr:`inode_count`; the query methods
    raise ``KeyError`` for any other number.
    """

    __slots__ = (
        "_count",
        "_dentries",
        "_first_name",
        "_gid",
        "_layer",
        "_mode",
        "_mtime",
        "_name_end",
        "_name_ino",
        "_names",
        "_nlink",
        "_parent",
        "_rdevs",
        "_size",
        "_start",
        "_targets",
        "_total_file_bytes",
        "_uid",
        "_xattrs",
        "tables",
    )

    #: The per-inode columns (index = inode number; row 0 is unused).
    _INODE_COLUMNS = (
        "mode",
        "uid",
        "gid",
        "size",
        "mtime",
        "nlink",
        "parent",
        "first_name",
        "start",
        "count",
        "layer",
    )

    def __init__(
        self,
        *,
        tables: list[ChunkTable],
        columns: Mapping[str, array],
        names: bytes,
        name_end: array,
        name_ino: array,
        targets: bytes,
        rdevs: dict[int, int],
        xattrs: dict[int, Mapping[bytes, bytes]],
    ) -> None:
        """Wrap frozen parts; use :meth:`build` rather than calling this."""
        self.tables = tables
        self._mode = columns["mode"]
        self._uid = columns["uid"]
        self._gid = columns["gid"]
        self._size = columns["size"]
        self._mtime = columns["mtime"]
        self._nlink = columns["nlink"]
        self._parent = columns["parent"]
        self._first_name = columns["first_name"]
        self._start = columns["start"]
        self._count = columns["count"]
        self._layer = columns["layer"]
        self._names = names
        self._name_end = name_end
        self._name_ino = name_ino
        self._dentries = range(len(name_ino))
        self._targets = targets
        self._rdevs = rdevs
        self._xattrs = xattrs
        self._total_file_bytes = sum(compress(self._size, map(stat.S_ISREG, self._mode)))

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, layers: Sequence[LayerIndex], *, overlay_whiteouts: bool = False) -> MergedTree:
        """Merge ``layers``, bottom (index 0) first, into a tree.

        Regular files' chunks go to ``tables[n]`` for the file's layer ``n``. With
        ``overlay_whiteouts``, whiteouts are shown as overlayfs stores them instead of being
        applied (see the module documentation). Raises :class:`LayerIndexError`, naming the
        layer and the entry, for input no merge can make sense of.
        """
        # The build makes a dict a directory and nothing cyclic: the collector would only
        # walk the whole heap (the parsed TOCs too) again and again, for nothing.
        enabled = gc.isenabled()
        gc.disable()
        try:
            builder = _Builder(layers, overlay_whiteouts=overlay_whiteouts)
            rows = builder.columns()
            for layer in builder.layers:
                builder.apply(layer)
            return builder.freeze(cls, rows)
        finally:
            if enabled:
                gc.enable()

    # ------------------------------------------------------------------ queries

    @property
    def inode_count(self) -> int:
        """How many inodes the tree has (the root included)."""
        return len(self._mode) - 1

    def __len__(self) -> int:
        return len(self._mode) - 1

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode named ``name`` in directory ``parent``, or None.

        ``.`` and ``..`` name the directory and its parent (the root's parent is itself).
        None as well when ``parent`` is not a directory.
        """
        self._check(parent)
        if self._mode[parent] & _IFMT != stat.S_IFDIR:
            return None
        if name == b".":
            return parent
        if name == b"..":
            return self._parent[parent]
        lo = self._start[parent]
        hi = lo + self._count[parent]
        j = bisect.bisect_left(self._dentries, name, lo, hi, key=self._name)
        if j < hi and self._name(j) == name:
            return self._name_ino[j]
        return None

    def attr(self, ino: int) -> Attr:
        """The attributes of inode ``ino``."""
        self._check(ino)
        mode = self._mode[ino]
        size = self._size[ino]
        return Attr(
            ino,
            mode,
            self._nlink[ino],
            self._uid[ino],
            self._gid[ino],
            size,
            self._mtime[ino],
            self._rdevs.get(ino, 0),
            (size + 511) >> 9 if mode & _IFMT == stat.S_IFREG else 0,
        )

    def size(self, ino: int) -> int:
        """``st_size`` of inode ``ino``, without building its whole :class:`Attr` (reads)."""
        self._check(ino)
        return self._size[ino]

    def children(self, ino: int) -> Sequence[tuple[bytes, int]]:
        """``(name, inode)`` of each entry of directory ``ino``, sorted by name.

        No ``.`` or ``..``; empty for anything but a directory. The sequence is a view:
        indexing or slicing it costs only what is read.
        """
        self._check(ino)
        if self._mode[ino] & _IFMT != stat.S_IFDIR:
            return ()
        return _Children(self, self._start[ino], self._count[ino])

    def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino``; ValueError for anything else."""
        self._check(ino)
        if self._mode[ino] & _IFMT != stat.S_IFLNK:
            raise ValueError(f"inode {ino} ({self.path(ino)!r}) is not a symlink")
        start = self._start[ino]
        return self._targets[start : start + self._count[ino]]

    def xattrs(self, ino: int) -> Mapping[bytes, bytes]:
        """The extended attributes of inode ``ino`` (name -> value, both bytes)."""
        self._check(ino)
        return self._xattrs.get(ino, _NO_XATTRS)

    def content(self, ino: int) -> tuple[int, int, int] | None:
        """``(layer_no, first_chunk, chunk_count)`` of a regular file with content.

        The chunks are ``tables[layer_no]``'s ``[first_chunk, first_chunk + chunk_count)``.
        None for a file without chunks (empty, or all holes) and for anything but a file.
        """
        self._check(ino)
        count = self._count[ino]
        if not count or self._mode[ino] & _IFMT != stat.S_IFREG:
            return None
        return self._layer[ino], self._start[ino], count

    def mapped_content(self, ino: int, *, executing: bool) -> tuple[int, int, int] | None:
        """:meth:`content` of a file programs map when they open it, if it has 2+ chunks.

        That is a file opened to be executed (``executing``: the kernel's open for
        ``execve``, of the program and of its ELF interpreter) or a shared library (a name
        with ``.so`` followed by its end or a dot, like ``libc.so.6``, which the dynamic
        loader opens like any file): the kernel maps it and faults its pages in, here and
        there, each fault a read. The fetcher gets such a file whole when it is opened
        (:meth:`~lazyfs.fs.fetcher.ChunkFetcher.prefetch_file`). An executable that is only
        read (``cp``, ``file``, a scanner) is not. A file of one chunk gains nothing: its
        first read fetches all of it.
        """
        content = self.content(ino)
        if content is None or content[2] < 2:
            return None
        if executing:
            return content
        name = self._name(self._first_name[ino])
        at = name.find(b".so")
        while at >= 0:
            after = name[at + 3 : at + 4]
            if after in (b"", b"."):
                return content
            at = name.find(b".so", at + 3)
        return None

    def path(self, ino: int) -> str:
        """The path of inode ``ino`` (its first name, for a hardlinked one), for messages.

        Relative, like the layer indexes' paths: ``""`` is the root.
        """
        self._check(ino)
        parts = []
        while ino != ROOT_INODE:
            parts.append(self._name(self._first_name[ino]))
            ino = self._parent[ino]
        return "/".join(p.decode("utf-8", "surrogateescape") for p in reversed(parts))

    def total_file_bytes(self) -> int:
        """The sizes of all regular files added up, each inode once (for ``statfs``)."""
        return self._total_file_bytes

    def memory_bytes(self) -> int:
        """About how many bytes the tree holds: arrays, names, targets, tables, dicts."""
        arrays = [getattr(self, "_" + c) for c in self._INODE_COLUMNS]
        arrays += [self._name_end, self._name_ino]
        total = sum(a.itemsize * len(a) for a in arrays)
        total += len(self._names) + len(self._targets)
        total += sum(t.nbytes() for t in self.tables)
        total += sys.getsizeof(self._rdevs) + 32 * len(self._rdevs)
        total += sys.getsizeof(self._xattrs)
        for xattrs in self._xattrs.values():
            total += sys.getsizeof(xattrs) + sum(
                sys.getsizeof(k) + sys.getsizeof(v) for k, v in xattrs.items()
            )
        return total

    # ------------------------------------------------------------------ internals

    def _check(self, ino: int) -> None:
        if not 0 < ino < len(self._mode):
            raise KeyError(ino)

    def _name(self, dentry: int) -> bytes:
        """The name of ``dentry`` (any but 0, the root's)."""
        ends = self._name_end
        return self._names[ends[dentry - 1] : ends[dentry]]

    def _dentry(self, dentry: int) -> tuple[bytes, int]:
        return self._name(dentry), self._name_ino[dentry]


class _Children(Sequence[tuple[bytes, int]]):
    """The entries of one directory: names ``[start, start + count)`` of a tree."""

    __slots__ = ("_range", "_tree")

    def __init__(self, tree: MergedTree, start: int, count: int) -> None:
        self._tree = tree
        self._range = range(start, start + count)

    def __len__(self) -> int:
        return len(self._range)

    @overload
    def __getitem__(self, i: int) -> tuple[bytes, int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[bytes, int]]: ...
    def __getitem__(self, i: int | slice) -> tuple[bytes, int] | list[tuple[bytes, int]]:
        if isinstance(i, slice):
            return [self._tree._dentry(j) for j in self._range[i]]
        return self._tree._dentry(self._range[i])

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        return map(self._tree._dentry, self._range)

    def __repr__(self) -> str:
        return f"<{len(self)} children>"


def _narrow(values: array) -> array:
    """``values`` in the smallest type they fit."""
    if not values:
        return values
    code = _typecode(min(values), max(values))
    return values if code == values.typecode else array(code, values)


def _invalid(exc: BaseException) -> str:
    return f"invalid ({type(exc).__name__}: {exc})"


def _first_bad(values: Sequence, typecode: str) -> int | None:
    """The first of ``values`` an ``array`` of ``typecode`` cannot hold (its row)."""
    for i, value in enumerate(values):
        try:
            array(typecode, [value])
        except _BAD_INPUT:
            return i
    return None


def _typecode(lo: int, hi: int) -> str:
    """The smallest ``array`` type holding every integer from ``lo`` to ``hi``."""
    for code in "BHIQ" if lo >= 0 else "bhiq":
        bits = 8 * array(code).itemsize
        if lo >= 0 and hi < 1 << bits:
            return code
        if -(1 << (bits - 1)) <= lo and hi < 1 << (bits - 1):
            return code
    raise OverflowError(f"no array type holds {lo} to {hi}")


@dataclass
class _Numbering:
    """The live tree, numbered: what :meth:`_Builder.freeze` packs.

    ``order``, ``parent``, ``first_name``: by inode (row 0 unused). ``names`` and
    ``name_ino``: by name (name 0 is the root's, ``b""``). ``dirs``: (inode, first name,
    name count) of each directory; ``subdirs``: directory inode -> subdirectories;
    ``links``: names of each inode that has more than one. ``ino_of``: node -> inode (0 for
    the nodes no longer in the tree).
    """

    ino_of: array
    order: array = field(default_factory=lambda: array("I", [0, 0]))
    parent: array = field(default_factory=lambda: array("I", [0, ROOT_INODE]))
    first_name: array = field(default_factory=lambda: array("I", [0, 0]))
    names: list[bytes] = field(default_factory=lambda: [b""])
    name_ino: array = field(default_factory=lambda: array("I", [ROOT_INODE]))
    dirs: list[tuple[int, int, int]] = field(default_factory=list)
    subdirs: dict[int, int] = field(default_factory=dict)
    links: dict[int, int] = field(default_factory=dict)


class _Layer:
    """One layer as the builder reads it: its table, paths as bytes, where its rows start."""

    __slots__ = ("base", "bpaths", "entries", "label", "table")

    def __init__(self, layer_no: int, index: LayerIndex, base: int) -> None:
        self.label = f"#{layer_no} {getattr(index, 'blob_digest', '?')}"
        table = getattr(index, "table", None)
        self.entries = None
        if table is None:
            self.entries = index.entries
            table = EntryTable.from_entries(self.entries, layer=self.label)
        self.table = table
        self.base = base
        self.bpaths: list[bytes] = []

    def error(self, row: int | None, message: str) -> LayerIndexError:
        where = f"layer {self.label}"
        if row is not None:
            path = self.table.paths[row]
            where += f": entry {path!r}"
        return LayerIndexError(f"{where}: {message}")

    def encode_paths(self) -> None:
        """Every path as UTF-8 bytes (surrogate escapes kept), in one go when possible."""
        paths = self.table.paths
        try:
            joined = "\0".join(paths)
            if joined.count("\0") == len(paths) - 1 or not paths:
                self.bpaths = joined.encode("utf-8", "surrogateescape").split(b"\0")
                if not paths:
                    self.bpaths = []
                return
        except (TypeError, UnicodeEncodeError):
            pass
        out = []
        for i, path in enumerate(paths):
            try:
                out.append(path.encode("utf-8", "surrogateescape"))
            except (AttributeError, UnicodeEncodeError):
                raise self.error(i, f"has {path!r}, which is not valid as a name") from None
        self.bpaths = out


_IFMT_OF_KIND = [0] * 256  # EntryType -> its st_mode type bits, for map() over a kinds column
for _kind in EntryType:
    _IFMT_OF_KIND[_kind] = _kind.s_ifmt
_REG, _DIR, _SYMLINK, _HARDLINK, _CHAR, _BLOCK, _FIFO = (int(k) for k in EntryType)
#: Kinds whose mode the tree uses (a symlink's is always 0777, a hardlink's is ignored).
_MODE_KINDS = frozenset((_REG, _DIR, _CHAR, _BLOCK, _FIFO))
_IS_REG = bytes(int(k == _REG) for k in range(256))
_WH = WHITEOUT_PREFIX.encode()
_OPAQUE = OPAQUE_MARKER.encode()
_AUFS = _AUFS_PREFIX.encode()
_INVALID_BNAMES = frozenset((b"", b".", b".."))


class _Builder:
    """A mutable tree of numbered nodes that layers are applied to, then frozen.

    The layers' rows are numbered globally (layer after layer; see :meth:`columns`) and a
    node is the row it came from (``src``; -1 for a made-up directory) rather than copies
    of its attributes: freezing gathers them. ``kids[n]`` is the dict of a live directory's
    children (encoded name -> node) and None for anything else. Nodes that are replaced or
    removed stay, unreachable; :meth:`freeze` keeps only what the root reaches. ``dirs``
    remembers the node of directory paths (bytes) already walked (reset whenever a
    directory leaves the tree, the root always in it).
    """

    def __init__(self, layers: Sequence[LayerIndex], *, overlay_whiteouts: bool) -> None:
        self.overlay = overlay_whiteouts
        self.layers: list[_Layer] = []
        base = 0
        for layer_no, index in enumerate(layers):
            layer = _Layer(layer_no, index, base)
            self.layers.append(layer)
            base += len(layer.table)
        self.tables = [layer.table.chunks for layer in self.layers]
        self.src = array("q")
        self.kids: list[dict[bytes, int] | None] = []
        self.targets: dict[int, bytes] = {}
        self.rdevs: dict[int, int] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.synthetic: dict[int, tuple[int, int, int, int]] = {}  # overlay whiteouts
        self.opaque: set[int] = set()
        self.root = self._new(-1, {})
        self.dirs: dict[bytes, int] = {b"": self.root}
        self.layer: _Layer | None = None
        self.row: int | None = None
        self.hardlinks = False  # whether a node got a second name

    # ------------------------------------------------------------------ all layers

    def columns(self) -> dict[str, array]:
        """Every row's attributes, layer after layer, and one last row for made-up dirs.

        Checks them (a :class:`LayerIndexError` naming the first bad entry).
        """
        out = {
            "mode": array("I"),
            "uid": array("I"),
            "gid": array("I"),
            "size": array("Q"),
            "mtime": array("q"),
            "layer": array("I"),
            "first": array("Q"),
            "count": array("Q"),
        }
        for layer_no, layer in enumerate(self.layers):
            t = layer.table
            n = len(t)
            if 255 in t.kinds:
                i = t.kinds.index(255)
                kind = layer.entries[i].type if layer.entries is not None else "?"
                raise layer.error(i, f"has an unknown type {kind!r}")
            self._check_modes(layer)
            modes = list(map(or_, map(_IFMT_OF_KIND.__getitem__, t.kinds), t.modes))
            for i in rows_of(t.kinds, _SYMLINK):
                modes[i] = stat.S_IFLNK | 0o777
            sizes = t.sizes
            if any(compress(sizes, t.kinds.translate(_NOT_REG_TABLE))):
                sizes = list(map(mul, sizes, t.kinds.translate(_IS_REG)))
            for key, values in (
                ("mode", modes),
                ("uid", t.uids),
                ("gid", t.gids),
                ("size", sizes),
                ("mtime", t.mtimes),
                ("first", t.chunk_first),
                ("count", t.chunk_count),
            ):
                try:
                    out[key].extend(array(out[key].typecode, values))
                except _BAD_INPUT as exc:
                    bad = _first_bad(values, out[key].typecode)
                    raise layer.error(bad, _invalid(exc)) from None
            out["layer"].extend(array("I", [layer_no]) * n)
        for key, value in (("mode", _MADE_UP_DIR_MODE),):
            out[key].append(value)
        for key in ("uid", "gid", "size", "mtime", "layer", "first", "count"):
            out[key].append(0)
        return out

    def _check_modes(self, layer: _Layer) -> None:
        modes, kinds = layer.table.modes, layer.table.kinds
        try:
            if not modes or (min(modes) >= 0 and max(modes) <= 0o7777):
                return
        except TypeError:
            pass
        for i, (mode, kind) in enumerate(zip(modes, kinds, strict=True)):
            if kind in _MODE_KINDS and not (type(mode) is int and 0 <= mode <= 0o7777):
                if isinstance(mode, int):
                    why = f"has the mode {mode!r}, not permission bits (0 to 0o7777)"
                    raise layer.error(i, why)
                raise layer.error(i, f"invalid (TypeError: mode {mode!r})")
        modes = [m if k in _MODE_KINDS else 0 for m, k in zip(modes, kinds, strict=True)]
        layer.table.modes = modes

    # ------------------------------------------------------------------ one layer

    def apply(self, layer: _Layer) -> None:
        """Apply one layer: its whiteouts first (unless shown), then its other entries."""
        self.layer = layer
        self.row = None
        layer.encode_paths()
        bpaths = layer.bpaths
        special: set[int] = set()
        if any(_WH in p for p in bpaths):
            special = {i for i, p in enumerate(bpaths) if _WH in p}
        try:
            if special and not self.overlay:
                for i in sorted(special):
                    self.row = i
                    self._whiteout(bpaths[i])
            self._entries(layer, special)
            if special and self.overlay:
                self._opaque_replacements(special)
        except _BAD_INPUT as exc:
            raise self._error(_invalid(exc)) from None

    def _entries(self, layer: _Layer, special: set[int]) -> None:
        """The layer's entries in order (the common case inline, for speed)."""
        t = layer.table
        kinds, bpaths, base = t.kinds, layer.bpaths, layer.base
        kids, src = self.kids, self.src
        src_append, kids_append = src.append, kids.append
        xattrs = t.xattrs
        for i, bpath in enumerate(bpaths):
            if special and i in special:
                self.row = i
                self._special(i, bpath)
                continue
            kind = kinds[i]
            if not bpath:
                self.row = i
                if kind != _DIR:
                    raise self._error("is the root, which must be a directory")
                self._set_dir_metadata(self.root, base + i, i)
                continue
            parent_path, _, name = bpath.rpartition(b"/")
            if name in _INVALID_BNAMES:
                self.row = i
                raise self._error("has an invalid name")
            parent = self.dirs.get(parent_path)
            if parent is None:
                self.row = i
                parent = self._make_dir(parent_path)
            siblings = kids[parent]
            old = siblings.get(name)  # type: ignore[union-attr]
            if kind == _REG and not xattrs:
                node = len(kids)
                src_append(base + i)
                kids_append(None)
            elif kind == _DIR:
                if old is not None and kids[old] is not None:
                    self._set_dir_metadata(old, base + i, i)
                    continue
                node = len(kids)
                src_append(base + i)
                kids_append({})
                if i in xattrs:
                    self.row = i
                    self._set_xattrs(node, xattrs[i])
            elif kind == _HARDLINK:
                self.row = i
                node = self._link_target(t.links.get(i, ""))
                self.hardlinks = True
            else:
                self.row = i
                node = self._new_leaf(kind, i, base + i)
            if old is not None:
                if old == node:
                    continue  # a hardlink to the name itself
                self._forget(old)
            siblings[name] = node  # type: ignore[index]

    def _classify(self, path: bytes) -> tuple[str, bytes, bytes]:
        """``(kind, parent, name)`` of a path holding ``.wh.``.

        ``kind`` is ``"entry"`` (an ordinary name that merely contains it), ``"whiteout"``
        (``name`` is what it removes), ``"opaque"`` or ``"aufs"`` (skipped).
        """
        parent, _, name = path.rpartition(b"/")
        if _WH in parent:
            for part in parent.split(b"/"):
                if part.startswith(_AUFS):
                    return "aufs", parent, name
                if part.startswith(_WH):
                    shown = part.decode("utf-8", "surrogateescape")
                    raise self._error(f"is under the whiteout {shown!r}")
        if name == _OPAQUE:
            return "opaque", parent, name
        if name.startswith(_AUFS):
            return "aufs", parent, name
        if name.startswith(_WH):
            target = name[len(_WH) :]
            if target in _INVALID_BNAMES:
                shown = target.decode("utf-8", "surrogateescape")
                raise self._error(f"is a whiteout of {shown!r}, which cannot be a name")
            return "whiteout", parent, target
        return "entry", parent, name

    def _whiteout(self, path: bytes) -> None:
        """Apply a whiteout to the tree the lower layers left (no-op for other entries)."""
        kind, parent, name = self._classify(path)
        if kind == "whiteout":
            directory = self._find_dir(parent)
            if directory is not None:
                node = self._kids(directory).pop(name, None)
                if node is not None:
                    self._forget(node)
        elif kind == "opaque":
            directory = self._find_dir(parent)
            if directory is not None:
                kids = self._kids(directory)
                for node in kids.values():
                    self._forget(node)
                kids.clear()

    def _special(self, i: int, path: bytes) -> None:
        """An entry whose path holds ``.wh.``, in the entry pass."""
        kind, parent, name = self._classify(path)
        if kind == "entry":
            self._add(i, path)
        elif not self.overlay or kind == "aufs":
            return  # applied before the entries, or skipped
        elif kind == "opaque":
            self.opaque.add(self._make_dir(parent))
        else:
            directory = self._make_dir(parent)
            existing = self._kids(directory).get(name)
            if existing is not None and self.kids[existing] is not None:
                return  # a directory of this layer replaces it: opaque (see below)
            t = self.layer.table  # type: ignore[union-attr]
            node = self._new(-1, None)
            self.synthetic[node] = (stat.S_IFCHR, t.uids[i], t.gids[i], t.mtimes[i])
            self._place(directory, name, node)

    def _opaque_replacements(self, special: set[int]) -> None:
        """Overlay form: a layer that whites a name out and makes a directory of it hides
        what lower layers had there, so that directory is opaque (overlayfs keeps no
        whiteout next to a directory of the same name)."""
        bpaths = self.layer.bpaths  # type: ignore[union-attr]
        for i in special:
            kind, parent, name = self._classify(bpaths[i])
            if kind != "whiteout":
                continue
            directory = self._find_dir(parent)
            node = None if directory is None else self._kids(directory).get(name)
            if node is not None and self.kids[node] is not None and node not in self.synthetic:
                self.opaque.add(node)

    def _add(self, i: int, path: bytes) -> None:
        """Add, replace or merge the node at ``path`` (row ``i``): the general case."""
        layer = self.layer
        assert layer is not None
        t = layer.table
        kind = t.kinds[i]
        if not path:
            if kind != _DIR:
                raise self._error("is the root, which must be a directory")
            self._set_dir_metadata(self.root, layer.base + i, i)
            return
        parent_path, _, name = path.rpartition(b"/")
        if name in _INVALID_BNAMES:
            raise self._error("has an invalid name")
        parent = self.dirs.get(parent_path)
        if parent is None:
            parent = self._make_dir(parent_path)
        if kind == _DIR:
            old = self._kids(parent).get(name)
            if old is not None and self.kids[old] is not None:
                self._set_dir_metadata(old, layer.base + i, i)
                return
            node = self._new(layer.base + i, {})
            self._set_xattrs(node, t.xattrs.get(i))
        elif kind == _HARDLINK:
            node = self._link_target(t.links.get(i, ""))
            self.hardlinks = True
        else:
            node = self._new_leaf(kind, i, layer.base + i)
        self._place(parent, name, node)

    def _place(self, parent: int, name: bytes, node: int) -> None:
        """Make ``name`` in directory ``parent`` refer to ``node``, forgetting what it did."""
        kids = self._kids(parent)
        old = kids.get(name)
        if old == node:
            return  # a hardlink to the name itself
        if old is not None:
            self._forget(old)
        kids[name] = node

    def _new_leaf(self, kind: int, i: int, row: int) -> int:
        """A new node for a regular file, symlink, device or fifo entry (row ``i``)."""
        t = self.layer.table  # type: ignore[union-attr]
        if kind == _SYMLINK:
            link = t.links.get(i, "")
            target = self._encode(link)
            if not target or b"\0" in target:
                raise self._error(f"is a symlink to {link!r}, which cannot be a target")
            node = self._new(row, None)
            self.targets[node] = target
        elif kind in (_REG, _CHAR, _BLOCK, _FIFO):
            node = self._new(row, None)
            if kind in (_CHAR, _BLOCK):
                self._set_rdev(node, *t.devs.get(i, (0, 0)))
        else:
            raise self._error(f"has an unknown type {kind!r}")
        self._set_xattrs(node, t.xattrs.get(i))
        return node

    def _link_target(self, link: str) -> int:
        """The node a hardlink to ``link`` names, as the tree is now."""
        if not link:
            raise self._error("is a hardlink to the root directory")
        parent_path, _, name = self._encode(link).rpartition(b"/")
        parent = self._find_dir(parent_path)
        node = None if parent is None else self._kids(parent).get(name)
        if node is None:
            raise self._error(f"is a hardlink to {link!r}, which is not in the tree at that point")
        if self.kids[node] is not None:
            raise self._error(f"is a hardlink to {link!r}, which is a directory")
        return node

    # ------------------------------------------------------------------ the node tree

    def _new(self, row: int, kids: dict[bytes, int] | None) -> int:
        """A new node from global row ``row`` (-1: a made-up directory); returns its number.

        A directory when ``kids`` is a dict.
        """
        node = len(self.kids)
        self.src.append(row)
        self.kids.append(kids)
        return node

    def _kids(self, directory: int) -> dict[bytes, int]:
        """The children of a directory node in the tree."""
        kids = self.kids[directory]
        assert kids is not None, "not a directory"
        return kids

    def _find_dir(self, path: bytes) -> int | None:
        """The directory node at ``path``, or None; symlinks are not followed."""
        return self._walk(path, create=False)

    def _make_dir(self, path: bytes) -> int:
        """The directory node at ``path``, made if need be.

        Missing directories and non-directories in the way (symlinks included: they are
        not followed) are replaced by made-up directories.
        """
        node = self._walk(path, create=True)
        assert node is not None
        return node

    def _walk(self, path: bytes, *, create: bool) -> int | None:
        """:meth:`_find_dir` or, with ``create``, :meth:`_make_dir`."""
        node = self.dirs.get(path)
        if node is not None:
            return node
        missing = []
        known = path
        while node is None:
            known, _, name = known.rpartition(b"/")
            missing.append(name)
            node = self.dirs.get(known)
        for name in reversed(missing):
            node = self._subdir(node, name, create=create)
            if node is None:
                return None
            known = known + b"/" + name if known else name
            self.dirs[known] = node
        return node

    def _subdir(self, parent: int, name: bytes, *, create: bool) -> int | None:
        """The directory ``name`` in directory ``parent`` (see :meth:`_walk`)."""
        kids = self._kids(parent)
        node = kids.get(name)
        if node is not None and self.kids[node] is not None:
            return node
        if not create:
            return None
        if name in _INVALID_BNAMES:
            raise self._error("has an invalid path component")
        directory = self._new(-1, {})
        kids[name] = directory
        return directory  # what was in the way is a non-directory: nothing to forget

    def _forget(self, node: int) -> None:
        """``node`` left the tree: drop the children of it and of its subdirectories."""
        if self.kids[node] is None:
            return  # a non-directory: freezing counts the names left
        stack = [node]
        while stack:
            n = stack.pop()
            kids = self.kids[n]
            if kids is not None:  # a directory (the others have no children to drop)
                stack.extend(kids.values())
                self.kids[n] = None
        self.dirs = {b"": self.root}

    def _set_dir_metadata(self, node: int, row: int, i: int) -> None:
        """A directory entry over a directory: its metadata wins, the children stay."""
        self.src[node] = row
        self.xattrs.pop(node, None)
        self._set_xattrs(node, self.layer.table.xattrs.get(i))  # type: ignore[union-attr]

    def _set_xattrs(self, node: int, xattrs: Mapping[str, bytes] | None) -> None:
        if not xattrs:
            return
        out = {}
        for name, value in xattrs.items():
            key = self._encode(name)
            if not key or b"\0" in key or not isinstance(value, bytes):
                raise self._error(f"has an invalid xattr {name!r}")
            out[key] = value
        self.xattrs[node] = out

    def _set_rdev(self, node: int, major: int, minor: int) -> None:
        if not (0 <= major < 1 << 32 and 0 <= minor < 1 << 32):
            raise self._error(f"has invalid device numbers {major}:{minor}")
        rdev = os.makedev(major, minor)
        if rdev:
            self.rdevs[node] = rdev

    def _encode(self, text: str) -> bytes:
        try:
            return text.encode("utf-8", "surrogateescape")
        except (AttributeError, UnicodeEncodeError):
            raise self._error(f"has {text!r}, which is not valid as a name") from None

    def _error(self, message: str) -> LayerIndexError:
        if self.layer is None:
            return LayerIndexError(message)
        return self.layer.error(self.row, message)

    # ------------------------------------------------------------------ freezing

    def freeze(self, cls: type[MergedTree], rows: dict[str, array]) -> MergedTree:
        """Number the live nodes breadth first and pack everything into a ``cls``."""
        n = self._number()
        srcs = list(map(self.src.__getitem__, n.order))
        srcs[0] = -1  # row 0 of the columns is unused
        gather = itemgetter(*srcs)  # one C loop a column (there are always 2 rows or more)

        def column(values: array) -> array:
            """``values`` (by row) by inode, in the smallest type all rows fit."""
            return array(_typecode(min(values), max(values)), gather(values))

        mode = array("H", gather(rows["mode"]))  # st_mode always fits 16 bits
        size, start, count = (
            array(rows[k].typecode, gather(rows[k])) for k in ("size", "first", "count")
        )
        uid, gid, mtime = column(rows["uid"]), column(rows["gid"]), column(rows["mtime"])
        if self.synthetic:
            uid, gid, mtime = array("I", uid), array("I", gid), array("q", mtime)
            for node, (m, u, g, t) in self.synthetic.items():
                if ino := n.ino_of[node]:
                    mode[ino], uid[ino], gid[ino], mtime[ino] = m, u, g, t
                    size[ino] = start[ino] = count[ino] = 0
            uid, gid, mtime = (array(_typecode(min(a), max(a)), a) for a in (uid, gid, mtime))
        for ino, first, names in n.dirs:  # a directory's names, a symlink's target bytes
            start[ino], count[ino] = first, names
        targets = bytearray()
        for node, target in sorted(self.targets.items(), key=lambda item: n.ino_of[item[0]]):
            if ino := n.ino_of[node]:
                start[ino], count[ino] = len(targets), len(target)
                size[ino] = len(target)
                targets += target
        nlink = array("I", [1]) * len(n.order)
        for ino, links in n.links.items():
            nlink[ino] = links
        for ino, subdirs in n.subdirs.items():
            nlink[ino] = 2 + subdirs
        columns = {
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "size": _narrow(size),
            "mtime": mtime,
            "nlink": array(_typecode(1, max(nlink)), nlink),
            "parent": n.parent,
            "first_name": n.first_name,
            "start": _narrow(start),
            "count": _narrow(count),
            "layer": column(rows["layer"]),
        }
        name_bytes = sum(map(len, n.names))
        return cls(
            tables=self.tables,
            columns=columns,
            names=b"".join(n.names),
            name_end=array(_typecode(0, name_bytes), accumulate(map(len, n.names))),
            name_ino=n.name_ino,
            targets=bytes(targets),
            rdevs={n.ino_of[node]: r for node, r in self.rdevs.items() if n.ino_of[node]},
            xattrs=self._frozen_xattrs(n.ino_of),
        )

    def _number(self) -> _Numbering:
        """Walk the live tree breadth first, each directory's names in byte order.

        Without hardlinks every node has one name, and each directory's children are
        numbered in bulk; with them, one by one (a node may already have its inode).
        """
        kids_of = self.kids
        self.kids = []
        n = _Numbering(ino_of=array("I", bytes(4 * len(kids_of))))
        n.ino_of[self.root] = ROOT_INODE
        n.order[ROOT_INODE] = self.root
        if self.hardlinks:
            self._number_one_by_one(kids_of, n)
            return n
        order, names, parent = n.order, n.names, n.parent
        first_name, name_ino = n.first_name, n.name_ino
        dirs = [ROOT_INODE]  # directory inodes, in inode order
        not_none = partial(is_not, None)
        for ino in dirs:
            kids = kids_of[order[ino]]
            kids_of[order[ino]] = None  # done with it
            count = len(kids)  # type: ignore[arg-type]
            n.dirs.append((ino, len(names), count))
            n.subdirs[ino] = 0
            if not count:
                continue
            items = sorted(kids.items())  # type: ignore[union-attr]
            nodes = list(map(itemgetter(1), items))
            base = len(order)
            order.extend(nodes)
            parent.extend(array("I", [ino]) * count)
            first_name.extend(range(len(names), len(names) + count))
            name_ino.extend(range(base, base + count))
            names.extend(map(itemgetter(0), items))
            subdirs = list(
                compress(range(base, base + count), map(not_none, map(kids_of.__getitem__, nodes)))
            )
            n.subdirs[ino] = len(subdirs)
            dirs.extend(subdirs)
        ino_of = n.ino_of
        for ino, node in enumerate(order):
            ino_of[node] = ino
        ino_of[self.root] = ROOT_INODE
        return n

    def _number_one_by_one(self, kids_of: list, n: _Numbering) -> None:
        """:meth:`_number` for a tree with hardlinks."""
        order_append, parent_append = n.order.append, n.parent.append
        first_name_append, names_append = n.first_name.append, n.names.append
        name_ino_append = n.name_ino.append
        ino_of, order, names = n.ino_of, n.order, n.names
        ino = ROOT_INODE
        while ino < len(order):
            kids = kids_of[order[ino]]
            if kids is not None:
                first = len(names)
                subdirs = 0
                for name, node in sorted(kids.items()):
                    child = ino_of[node]
                    if child:  # one more name of a hardlinked inode
                        n.links[child] = n.links.get(child, 1) + 1
                    else:
                        child = ino_of[node] = len(order)
                        order_append(node)
                        parent_append(ino)
                        first_name_append(len(names))
                        if kids_of[node] is not None:
                            subdirs += 1
                    names_append(name)
                    name_ino_append(child)
                n.dirs.append((ino, first, len(kids)))
                n.subdirs[ino] = subdirs
                kids_of[order[ino]] = None  # done with it
            ino += 1

    def _frozen_xattrs(self, ino_of: array) -> dict[int, Mapping[bytes, bytes]]:
        """The live nodes' xattrs by inode, overlayfs opaque markers added."""
        out: dict[int, dict[bytes, bytes]] = {
            ino_of[n]: xattrs for n, xattrs in self.xattrs.items() if ino_of[n]
        }
        for node in self.opaque:
            if ino := ino_of[node]:
                out[ino] = {**out.get(ino, {}), OVERLAY_OPAQUE_XATTR: b"y"}
        return {ino: MappingProxyType(xattrs) for ino, xattrs in out.items()}
