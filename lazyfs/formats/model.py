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
from dataclasses import dataclass, field

from ..errors import LayerIndexError
from ..oci.digest import Digest

__all__ = [
    "CODEC_GZIP",
    "CODEC_NONE",
    "CODEC_ZEROS",
    "CODEC_ZSTD",
    "Chunk",
    "Entry",
    "EntryType",
    "LayerIndex",
    "normalize_path",
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


@dataclass(slots=True)
class LayerIndex:
    """Everything known about one layer's content before any file is read.

    ``format``: ``"estargz"``, ``"zstd:chunked"`` or ``"tar"`` (a layer with no index of its
    own, indexed locally; its chunks point into ``local_path``, the layer's decompressed tar
    in the local cache). ``index_size``: bytes of the index as stored (uncompressed TOC, or
    the tar's headers). ``prefetch_offset``: chunks starting before this blob offset belong
    to the files to prefetch first (from an eStargz landmark or our converter's boundary);
    None when the layer marks none. ``no_prefetch``: the layer asks not to be prefetched.
    """

    format: str
    blob_digest: Digest
    blob_size: int
    entries: list[Entry]
    index_size: int = 0
    prefetch_offset: int | None = None
    no_prefetch: bool = False
    local_path: str | None = None
    dialect: str = ""

    @property
    def chunk_count(self) -> int:
        return sum(len(e.chunks) for e in self.entries)

    def summary(self) -> dict:
        """Counts for ``lazyfs inspect``."""
        return {
            "format": self.format,
            "dialect": self.dialect,
            "entries": len(self.entries),
            "chunks": self.chunk_count,
            "index_size": self.index_size,
            "prefetch_offset": self.prefetch_offset,
        }


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
