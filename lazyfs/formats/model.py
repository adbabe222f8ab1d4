"""The one index model every layer format maps to.

A :class:`LayerIndex` lists a layer's entries in the order the layer has them. Each regular
file's content is a list of :class:`Chunk`: where its bytes are in the blob, how they are
compressed, and their digest. Readers of each format (eStargz, zstd:chunked, plain tar)
produce this model; everything after them (the merged tree, the chunk fetcher) sees only it.

Paths are normalised and checked once, here, by :func:`normalize_path`: relative, ``/``
separated, no ``.`` or ``..`` components, no NUL, no trailing slash. A leading ``/`` or
``./`` is dropped (as tar does when extracting). Anything else that could escape the root
is a :class:`~lazyfs.errors.LayerIndexError` naming the layer and the entry.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import LayerIndexError
from ..oci.digest import Digest

if TYPE_CHECKING:
    from ..fs.chunktable import ChunkTable

__all__ = [
    "CODEC_GZIP",
    "CODEC_NONE",
    "CODEC_ZEROS",
    "CODEC_ZSTD",
    "Chunk",
    "Entry",
    "EntryTable",
    "EntryType",
    "LayerIndex",
    "normalize_path",
    "rows_of",
]

#: How a chunk's bytes are stored in the blob.
CODEC_ZSTD = "zstd"  # one or more complete zstd frames
CODEC_GZIP = "gzip"  # one or more complete gzip members
CODEC_NONE = "none"  # stored as they are (plain tar, or the local copy of a layer)
CODEC_ZEROS = "zeros"  # a run of zero bytes with nothing in the blob


class EntryType(enum.IntEnum):
    """The kind of a layer entry (tar's types, hardlinks as links to another entry)."""

    REG = 0
    DIR = 1
    SYMLINK = 2
    HARDLINK = 3
    CHAR = 4
    BLOCK = 5
    FIFO = 6

    @property
    def s_ifmt(self) -> int:
        """The ``st_mode`` file type bits (a hardlink has its target's, a regular file's here)."""
        return _IFMT[self]


_IFMT = {
    EntryType.REG: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.HARDLINK: stat.S_IFREG,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


@dataclass(slots=True)
class Chunk:
    """A piece of one regular file's content and where to get it.

    ``file_offset`` and ``size``: which bytes of the file this is. ``blob_offset`` and
    ``blob_length``: the compressed byte range to fetch (nothing for ``zeros``).
    Decompressing that range gives data in which the chunk starts at ``inner_offset``.
    ``digest``: sha256 of the chunk's ``size`` bytes, checked before any is served; None only
    for ``zeros`` chunks and for layers whose whole content is verified another way (the
    local copy of a plain layer, checked against its diff ID).
    """

    file_offset: int
    size: int
    blob_offset: int
    blob_length: int
    inner_offset: int
    codec: str
    digest: Digest | None = None

    @property
    def blob_end(self) -> int:
        return self.blob_offset + self.blob_length


@dataclass(slots=True)
class Entry:
    """One entry of a layer: a file, directory, link, device, fifo or whiteout.

    ``mode`` holds the permission bits only (``0o7777``); the type is ``type``. ``link`` is a
    symlink's target as written, or a hardlink's target path (normalised like ``path``).
    ``mtime_ns`` is nanoseconds since the epoch. ``xattrs`` values are raw bytes.
    ``digest`` is the sha256 of a regular file's whole content, when the format records it.
    Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) are ordinary entries here; the merged tree
    gives them their meaning.
    """

    path: str
    type: EntryType
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    size: int = 0
    mtime_ns: int = 0
    link: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: Digest | None = None
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def st_mode(self) -> int:
        return self.type.s_ifmt | self.mode

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.rpartition("/")[2]


def rows_of(kinds: bytes, kind: int) -> list[int]:
    """The rows of an :class:`EntryTable` ``kinds`` column holding ``kind`` (for kinds few
    rows have: one ``bytes.find`` per row found)."""
    out = []
    i = kinds.find(kind)
    while i >= 0:
        out.append(i)
        i = kinds.find(kind, i + 1)
    return out


class EntryTable:
    """One layer's entries as columns: row ``i`` is the layer's ``i``-th entry.

    The TOC readers build this directly (no Python object per entry: a million-entry layer
    would otherwise cost a gigabyte and seconds); :meth:`entry` gives one row as an
    :class:`Entry`. Columns hold exactly what the :class:`Entry` fields would:

    * ``paths``: normalised paths; ``kinds``: one :class:`EntryType` value a byte;
    * ``modes`` (permission bits), ``uids``, ``gids``, ``sizes`` (0 for all but regular
      files), ``mtimes`` (ns): sequences of ints;
    * sparse dicts by row, for what most entries lack: ``links``, ``unames``, ``gnames``,
      ``devs`` (``(major, minor)``), ``xattrs`` (name -> raw bytes);
    * ``digests``: each row's whole-file digest text (already validated) or None;
    * ``chunks``: a :class:`~lazyfs.fs.chunktable.ChunkTable` holding every regular file's
      chunks, each file's a contiguous run in file order: ``chunk_first[i]`` and
      ``chunk_count[i]`` (count 0: no chunks). Files need not be in table order.
    """

    __slots__ = (
        "chunk_count",
        "chunk_first",
        "chunks",
        "devs",
        "digests",
        "gids",
        "gnames",
        "kinds",
        "links",
        "modes",
        "mtimes",
        "paths",
        "sizes",
        "uids",
        "unames",
        "xattrs",
    )

    def __init__(
        self,
        *,
        paths: Sequence[str],
        kinds: bytes,
        modes: Sequence[int],
        uids: Sequence[int],
        gids: Sequence[int],
        sizes: Sequence[int],
        mtimes: Sequence[int],
        digests: Sequence[str | None],
        chunks: ChunkTable,
        chunk_first: Sequence[int],
        chunk_count: Sequence[int],
        links: dict[int, str] | None = None,
        unames: dict[int, str] | None = None,
        gnames: dict[int, str] | None = None,
        devs: dict[int, tuple[int, int]] | None = None,
        xattrs: dict[int, dict[str, bytes]] | None = None,
    ) -> None:
        self.paths = paths
        self.kinds = kinds
        self.modes = modes
        self.uids = uids
        self.gids = gids
        self.sizes = sizes
        self.mtimes = mtimes
        self.digests = digests
        self.chunks = chunks
        self.chunk_first = chunk_first
        self.chunk_count = chunk_count
        self.links = links or {}
        self.unames = unames or {}
        self.gnames = gnames or {}
        self.devs = devs or {}
        self.xattrs = xattrs or {}

    @classmethod
    def from_entries(cls, entries: Sequence[Entry], *, layer: str) -> EntryTable:
        """The table of a list of entries (their chunks copied into a new chunk table).

        Values are taken as they are (the merged tree checks them); chunks the chunk table
        cannot hold (an unknown codec, a digest that is not sha256) are a
        :class:`LayerIndexError` naming ``layer`` and the entry.
        """
        from ..fs.chunktable import ChunkTable  # the chunk table imports this module

        chunks = ChunkTable()
        first = [0] * len(entries)
        count = [0] * len(entries)
        links, unames, gnames, devs, xattrs = {}, {}, {}, {}, {}
        for i, e in enumerate(entries):
            if e.chunks:
                try:
                    first[i], count[i] = chunks.add_file(e.chunks)
                except (AttributeError, KeyError, OverflowError, TypeError, ValueError) as exc:
                    raise LayerIndexError(
                        f"layer {layer}: entry {e.path!r}: invalid ({type(exc).__name__}: {exc})"
                    ) from None
            if e.link:
                links[i] = e.link
            if e.uname:
                unames[i] = e.uname
            if e.gname:
                gnames[i] = e.gname
            if e.dev_major or e.dev_minor:
                devs[i] = (e.dev_major, e.dev_minor)
            if e.xattrs:
                xattrs[i] = e.xattrs
        return cls(
            paths=[e.path for e in entries],
            kinds=_kinds_of(entries),
            modes=[e.mode for e in entries],
            uids=[e.uid for e in entries],
            gids=[e.gid for e in entries],
            sizes=[e.size for e in entries],
            mtimes=[e.mtime_ns for e in entries],
            digests=[e.digest for e in entries],
            chunks=chunks,
            chunk_first=first,
            chunk_count=count,
            links=links,
            unames=unames,
            gnames=gnames,
            devs=devs,
            xattrs=xattrs,
        )

    def __len__(self) -> int:
        return len(self.kinds)

    def entry(self, i: int) -> Entry:
        """Row ``i`` as a model :class:`Entry` (its chunks included)."""
        major, minor = self.devs.get(i, (0, 0))
        digest = self.digests[i]
        first = self.chunk_first[i]
        return Entry(
            path=self.paths[i],
            type=EntryType(self.kinds[i]),
            mode=self.modes[i],
            uid=self.uids[i],
            gid=self.gids[i],
            uname=self.unames.get(i, ""),
            gname=self.gnames.get(i, ""),
            size=self.sizes[i],
            mtime_ns=self.mtimes[i],
            link=self.links.get(i, ""),
            dev_major=major,
            dev_minor=minor,
            xattrs=dict(self.xattrs.get(i, {})),
            digest=None if digest is None else Digest(digest),
            chunks=[self.chunks.chunk(c) for c in range(first, first + self.chunk_count[i])],
        )

    def entries(self) -> list[Entry]:
        """Every row as an :class:`Entry` (costly for big layers: for tests and tools)."""
        return [self.entry(i) for i in range(len(self))]


def _kinds_of(entries: Sequence[Entry]) -> bytes:
    """The entries' types, a byte each; 255 for a type that is not an :class:`EntryType`."""
    valid = set(EntryType)
    return bytes(e.type if e.type in valid and type(e.type) is not bool else 255 for e in entries)


class LayerIndex:
    """Everything known about one layer's content before any file is read.

    ``format``: ``"estargz"``, ``"zstd:chunked"`` or ``"tar"`` (a layer with no index of its
    own, indexed locally; its chunks point into ``local_path``, the layer's decompressed tar
    in the local cache). ``index_size``: bytes of the index as stored (uncompressed TOC, or
    the tar's headers). ``prefetch_offset``: chunks starting before this blob offset belong
    to the files to prefetch first (from an eStargz landmark or our converter's boundary);
    None when the layer marks none. ``no_prefetch``: the layer asks not to be prefetched.

    The entries come either as a list of :class:`Entry` (``entries``) or as an
    :class:`EntryTable` (``table``, what the TOC readers give); ``entries`` is then made
    from the table when first asked for. The merged tree reads the table when there is one.
    """

    __slots__ = (
        "_entries",
        "blob_digest",
        "blob_size",
        "dialect",
        "format",
        "index_size",
        "local_path",
        "no_prefetch",
        "prefetch_offset",
        "table",
    )

    def __init__(
        self,
        format: str,
        blob_digest: Digest,
        blob_size: int,
        entries: list[Entry] | None = None,
        index_size: int = 0,
        prefetch_offset: int | None = None,
        no_prefetch: bool = False,
        local_path: str | None = None,
        dialect: str = "",
        *,
        table: EntryTable | None = None,
    ) -> None:
        if (entries is None) == (table is None):
            raise TypeError("a LayerIndex takes either entries or a table")
        self.format = format
        self.blob_digest = blob_digest
        self.blob_size = blob_size
        self._entries = entries
        self.table = table
        self.index_size = index_size
        self.prefetch_offset = prefetch_offset
        self.no_prefetch = no_prefetch
        self.local_path = local_path
        self.dialect = dialect

    @property
    def entries(self) -> list[Entry]:
        """The entries in layer order (made from ``table`` on first use, then kept)."""
        if self._entries is None:
            assert self.table is not None
            self._entries = self.table.entries()
        return self._entries

    @property
    def entry_count(self) -> int:
        return len(self.table) if self.table is not None else len(self.entries)

    @property
    def chunk_count(self) -> int:
        if self.table is not None:
            return sum(self.table.chunk_count)
        return sum(len(e.chunks) for e in self.entries)

    def summary(self) -> dict:
        """Counts for ``lazyfs inspect``."""
        return {
            "format": self.format,
            "dialect": self.dialect,
            "entries": self.entry_count,
            "chunks": self.chunk_count,
            "index_size": self.index_size,
            "prefetch_offset": self.prefetch_offset,
        }

    def __repr__(self) -> str:
        return (
            f"<LayerIndex {self.format} {self.blob_digest} {self.entry_count} entries "
            f"{self.chunk_count} chunks>"
        )


def normalize_path(name: str, *, layer: str, what: str = "entry") -> str:
    """``name`` as a clean relative path, or :class:`LayerIndexError` if it could escape.

    ``""`` is the root. ``layer`` and ``what`` name the layer and the entry in errors.
    """
    if "\x00" in name:
        raise LayerIndexError(f"layer {layer}: {what} {name!r} contains a NUL byte")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerIndexError(f"layer {layer}: {what} {name!r} has a '..' component")
        parts.append(part)
    return "/".join(parts)
