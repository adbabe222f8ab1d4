"""The JSON table of contents shared by eStargz and zstd:chunked, read into the index model.

Both formats describe a layer with ``{"version": 1, "entries": [...]}``. Two key sets are in
use and both are accepted in either container:

* eStargz keys: ``offset`` (start of the compressed member/frame holding a chunk),
  ``innerOffset`` (where the chunk starts in that member's decompressed data), ``chunkOffset``,
  ``chunkSize`` (0 on the last chunk: to the end of the file), ``chunkDigest``;
* containers/storage keys: the same plus ``endOffset`` (end of the compressed range) and
  ``chunkType`` (``"zeros"``: a hole, nothing stored).

A chunk's compressed range ends at its ``endOffset`` when it has one, else where the file's
next chunk starts, else at the file entry's ``endOffset``, else where the next chunk of any
file starts, else at ``data_end`` (the start of the TOC). Ranges found that way may include
tar headers of following entries; decoding stops once the chunk's bytes are out.

Every chunk must carry a digest (its own ``chunkDigest``, or the file's ``digest`` when the
chunk is the whole file): content that cannot be verified is refused here, not served later.
The eStargz landmark entries and ``stargz.index.json`` are interpreted and dropped.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import calendar
import gc
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, repeat
from operator import and_, lt, mul

import orjson

from ..errors import LayerIndexError
from ..fs.chunktable import CODEC_CODES, ChunkTable
from ..oci.digest import Digest
from .model import CODEC_ZEROS, Chunk, Entry, EntryTable, EntryType, normalize_path, rows_of

__all__ = [
    "LAZYFS_PREFETCH_KEY",
    "MAX_TOC_SIZE",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "TAIL_SIZE",
    "TOC_TAR_NAME",
    "TocContents",
    "entries_from_toc",
    "parse_rfc3339_ns",
    "parse_toc_json",
]

#: Bytes of a blob's tail fetched first: the footer, and often the whole TOC.
TAIL_SIZE = 64 * 1024
#: Largest uncompressed TOC accepted. A TOC costs about 215 bytes an entry, so this admits
#: images of some 2.4 million entries (a 1M-entry image must mount). containers/storage
#: stops at 150 MiB (its partial pulls fall back to full pulls above): the converter warns.
MAX_TOC_SIZE = 512 * 1024 * 1024
#: containers/storage's own limit, above which podman pulls a layer whole.
CONTAINERS_STORAGE_MAX_TOC = 150 * 1024 * 1024

PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
TOC_TAR_NAME = "stargz.index.json"
#: Top-level TOC key our converter writes: the blob offset where the prioritised files end.
LAZYFS_PREFETCH_KEY = "lazyfsPrefetchOffset"

_TYPES = {
    "reg": EntryType.REG,
    "dir": EntryType.DIR,
    "symlink": EntryType.SYMLINK,
    "hardlink": EntryType.HARDLINK,
    "char": EntryType.CHAR,
    "block": EntryType.BLOCK,
    "fifo": EntryType.FIFO,
}

_RFC3339 = re.compile(
    r"(-?\d{4,})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)


@dataclass(slots=True)
class TocContents:
    """A TOC's entries in the index model (as a table), and what its landmarks say."""

    table: EntryTable
    prefetch_offset: int | None = None
    no_prefetch: bool = False
    _entries: list[Entry] | None = field(default=None, repr=False, compare=False)

    @property
    def entries(self) -> list[Entry]:
        """The table's rows as :class:`Entry` objects (made on first use)."""
        if self._entries is None:
            self._entries = self.table.entries()
        return self._entries


def parse_toc_json(data: bytes, *, layer: str) -> dict:
    """Decode a TOC document; a clear :class:`LayerIndexError` when it is not one."""
    enabled = gc.isenabled()
    gc.disable()  # a TOC is a million dicts and no cycle: collections would walk them all
    try:
        toc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LayerIndexError(f"layer {layer}: the TOC is not valid JSON ({exc})") from None
    finally:
        if enabled:
            gc.enable()
    if not isinstance(toc, dict) or not isinstance(toc.get("entries"), list):
        raise LayerIndexError(f"layer {layer}: the TOC has no list of entries")
    return toc


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (Go's zero time gives a negative)."""
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = m.group(7) or ""
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        seconds -= offset if m.group(9) == "+" else -offset
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


class _Reader:
    """Converts one TOC; holds what the conversion of single entries needs."""

    def __init__(self, layer: str, codec: str, data_end: int) -> None:
        self.layer = layer
        self.codec = codec
        self.data_end = data_end
        self.times: dict[str, int] = {}

    def fail(self, what: str, why: str) -> LayerIndexError:
        return LayerIndexError(f"layer {self.layer}: TOC entry {what}: {why}")

    def integer(self, raw: Mapping, key: str, what: str, default: int = 0) -> int:
        value = raw.get(key, default)
        if type(value) is int and value >= 0:  # the common case, first (bool is not int here)
            return value
        if value is None:
            return default
        raise self.fail(what, f"{key} must be a non-negative integer, not {value!r}")

    def string(self, raw: Mapping, key: str, what: str) -> str:
        value = raw.get(key) or ""
        if not isinstance(value, str):
            raise self.fail(what, f"{key} must be a string")
        return value

    def digest(self, raw: Mapping, key: str, what: str) -> Digest | None:
        value = raw.get(key)
        if not value:
            return None
        try:
            return Digest(value)
        except Exception:
            raise self.fail(what, f"{key} {value!r} is not a valid digest") from None

    def mtime(self, raw: Mapping, what: str) -> int:
        text = raw.get("modtime")
        if not text:
            return 0
        if not isinstance(text, str):
            raise self.fail(what, f"modtime must be a string, not {text!r}")
        cached = self.times.get(text)
        if cached is None:
            try:
                cached = parse_rfc3339_ns(text)
            except (ValueError, TypeError, OverflowError):
                raise self.fail(what, f"bad modtime {text!r}") from None
            self.times[text] = cached
        return cached

    def xattrs(self, raw: Mapping, what: str) -> dict[str, bytes]:
        value = raw.get("xattrs")
        if not value:
            return {}
        if not isinstance(value, dict):
            raise self.fail(what, "xattrs must be an object")
        out = {}
        for key, encoded in value.items():
            try:
                out[key] = base64.b64decode(encoded, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise self.fail(what, f"xattr {key!r} is not base64") from None
        return out

    def entry(self, raw: Mapping, kind: EntryType, path: str, what: str) -> Entry:
        link = self.string(raw, "linkName", what)
        if kind == EntryType.HARDLINK:
            link = normalize_path(link, layer=self.layer, what=f"hardlink target of {what}")
            if not link:
                raise self.fail(what, "hardlink to the root")
        return Entry(
            path=path,
            type=kind,
            mode=self.integer(raw, "mode", what) & 0o7777,
            uid=self.integer(raw, "uid", what),
            gid=self.integer(raw, "gid", what),
            uname=self.string(raw, "userName", what),
            gname=self.string(raw, "groupName", what),
            size=self.integer(raw, "size", what) if kind == EntryType.REG else 0,
            mtime_ns=self.mtime(raw, what),
            link=link,
            dev_major=self.integer(raw, "devMajor", what),
            dev_minor=self.integer(raw, "devMinor", what),
            xattrs=self.xattrs(raw, what),
            digest=self.digest(raw, "digest", what),
        )


def entries_from_toc(toc: Mapping, *, layer: str, codec: str, data_end: int) -> TocContents:
    """The model entries of a parsed TOC (see the module docs for the rules).

    TOCs as writers make them are converted column by column (:class:`_Columns`); anything
    out of the ordinary (a value of the wrong type, a path to normalise, holes, ...) goes
    through the entry-by-entry reader, which is the reference for every rule and error.
    """
    enabled = gc.isenabled()
    gc.disable()  # nothing cyclic is made: collections would only walk the parsed TOC
    try:
        fast = _Columns(layer, codec, data_end).read(toc)
    finally:
        if enabled:
            gc.enable()
    if fast is not None:
        return fast
    entries, prefetch_offset, no_prefetch = _entries_one_by_one(
        toc, layer=layer, codec=codec, data_end=data_end
    )
    return TocContents(EntryTable.from_entries(entries, layer=layer), prefetch_offset, no_prefetch)


def _entries_one_by_one(
    toc: Mapping, *, layer: str, codec: str, data_end: int
) -> tuple[list[Entry], int | None, bool]:
    """The reference conversion: entries, prefetch offset and no-prefetch flag."""
    rd = _Reader(layer, codec, data_end)
    out = _Landmarks(entries=[])
    # Per regular file: the raw TOC dicts of its chunks, in order (the file entry first).
    pieces: list[tuple[Entry, list[Mapping]]] = []
    current: tuple[Entry, list[Mapping]] | None = None
    data_offsets: set[int] = set()

    for i, raw in enumerate(toc.get("entries") or ()):
        if not isinstance(raw, dict):
            raise LayerIndexError(f"layer {layer}: TOC entry #{i} is not an object")
        name = raw.get("name")
        if not isinstance(name, str):
            raise LayerIndexError(f"layer {layer}: TOC entry #{i} has no name")
        what = repr(name)
        typ = raw.get("type")
        path = normalize_path(name, layer=layer, what=f"TOC entry {what}")
        if typ == "chunk":
            if current is None or current[0].path != path:
                raise rd.fail(what, "a chunk that does not follow its file")
            current[1].append(raw)
            if raw.get("chunkType") != CODEC_ZEROS:
                data_offsets.add(rd.integer(raw, "offset", what))
            continue
        kind = _TYPES.get(typ) if isinstance(typ, str) else None
        if kind is None:
            raise rd.fail(what, f"unknown type {typ!r}")
        if (
            path in (TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
            and kind == EntryType.REG
        ):
            if path == PREFETCH_LANDMARK:
                out.prefetch_offset = rd.integer(raw, "offset", what)
            elif path == NO_PREFETCH_LANDMARK:
                out.no_prefetch = True
            current = None
            continue
        if not path and kind != EntryType.DIR:
            raise rd.fail(what, "the root must be a directory")
        # An entry for the root itself keeps its metadata under the empty path.
        entry = rd.entry(raw, kind, path, what)
        out.entries.append(entry)
        current = None
        if kind == EntryType.REG and entry.size > 0:
            current = (entry, [raw])
            pieces.append(current)
            if raw.get("chunkType") != CODEC_ZEROS:
                data_offsets.add(rd.integer(raw, "offset", what))

    starts = sorted(data_offsets)
    for entry, raws in pieces:
        entry.chunks = _chunks(rd, entry, raws, starts)
    if out.prefetch_offset is None:
        out.prefetch_offset = _lazyfs_prefetch_offset(toc)
    return out.entries, out.prefetch_offset, out.no_prefetch


@dataclass(slots=True)
class _Landmarks:
    entries: list[Entry]
    prefetch_offset: int | None = None
    no_prefetch: bool = False


def _lazyfs_prefetch_offset(toc: Mapping) -> int | None:
    value = toc.get(LAZYFS_PREFETCH_KEY)
    return value if isinstance(value, int) else None


def _chunks(
    rd: _Reader, entry: Entry | _File, raws: list[Mapping], starts: Sequence[int]
) -> list[Chunk]:
    """The chunks of one regular file, checked to tile it exactly."""
    what = repr(entry.path)
    file_end = rd.integer(raws[0], "endOffset", what) or None
    offsets = [rd.integer(r, "chunkOffset", what) for r in raws]
    chunks: list[Chunk] = []
    for k, raw in enumerate(raws):
        file_offset = offsets[k]
        size = rd.integer(raw, "chunkSize", what)
        if size == 0 or (k == len(raws) - 1 and file_offset + size > entry.size):
            size = (offsets[k + 1] if k + 1 < len(raws) else entry.size) - file_offset
        digest = rd.digest(raw, "chunkDigest", what)
        if digest is None and len(raws) == 1:
            digest = entry.digest
        if raw.get("chunkType") == CODEC_ZEROS:
            chunks.append(Chunk(file_offset, size, 0, 0, 0, CODEC_ZEROS, digest))
            continue
        if digest is None:
            raise rd.fail(what, f"chunk at {file_offset} has no digest, so it cannot be verified")
        start = rd.integer(raw, "offset", what)
        end = _chunk_end(
            rd, raw, raws[k + 1 :], start, file_end, starts, is_main=k == 0, last=k == len(raws) - 1
        )
        if not start < end <= rd.data_end:
            raise rd.fail(
                what, f"chunk at {file_offset} has the bad compressed range {start}-{end}"
            )
        inner = rd.integer(raw, "innerOffset", what)
        chunks.append(Chunk(file_offset, size, start, end - start, inner, rd.codec, digest))
    position = 0
    for c in chunks:
        if c.file_offset != position or c.size <= 0:
            raise rd.fail(what, f"chunks do not tile the file (gap or overlap at byte {position})")
        position += c.size
    if position != entry.size:
        raise rd.fail(what, f"chunks cover {position} bytes of a {entry.size}-byte file")
    return chunks


def _chunk_end(
    rd: _Reader,
    raw: Mapping,
    later: list[Mapping],
    start: int,
    file_end: int | None,
    starts: Sequence[int],
    *,
    is_main: bool,
    last: bool,
) -> int:
    # A file entry's endOffset covers the whole file, so it ends the first chunk only if
    # it is the only one; a chunk entry's own endOffset is its own.
    own = rd.integer(raw, "endOffset", "") if (not is_main or last) else 0
    if own:
        return own
    for nxt in later:
        if nxt.get("chunkType") == CODEC_ZEROS:
            continue
        offset = rd.integer(nxt, "offset", "")
        if offset > start:
            return offset
    if file_end:
        return file_end
    k = bisect.bisect_right(starts, start)
    return starts[k] if k < len(starts) else rd.data_end


# ---------------------------------------------------------------- column by column

#: Row kinds of the column reader: the entry types, and a chunk row.
_CODES = {name: int(kind) for name, kind in _TYPES.items()}
_CHUNK = 7
_CODES["chunk"] = _CHUNK
_REG, _HARDLINK = int(EntryType.REG), int(EntryType.HARDLINK)
_LANDMARK_NAMES = (TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
#: A ``.`` or ``..`` path component, in names joined by NUL (NUL-delimited at both ends).
_DOT_COMPONENT = re.compile("[/\x00][.][.]?(?=[/\x00])")
_NONE = type(None)
_SHA256_PREFIX = "sha256:"
_SHA256_TEXT = len(_SHA256_PREFIX) + 64
#: ``bytes.translate`` tables: kind byte -> 1 for a regular file (or not), and 0 <-> 1.
_IS_REG = bytes(int(k == _REG) for k in range(256))
_NOT_REG = bytes(int(k != _REG) for k in range(256))
_FLIP = bytes([1, 0]) + bytes(254)


@dataclass(slots=True)
class _File:
    """What :func:`_chunks` needs of a regular file's entry."""

    path: str
    size: int
    digest: Digest | None


class _Unusual(Exception):
    """Raised inside :class:`_Columns` for input it leaves to the reference reader."""


class _Columns:
    """Converts a whole TOC column by column, or declines (:meth:`read` returns None).

    Each field is pulled out of every entry at once (``map(dict.get, ...)``, in C; fields
    no entry has are not pulled at all) and checked with set, min and friends over the
    column. It accepts a TOC only when every check passes in the plain way writers produce
    them: then it gives exactly what the entry-by-entry reader gives (the tests compare the
    two). Anything else (a wrong type, a path that needs normalising, an invalid value)
    makes it decline, and the reference reader converts the TOC or raises its precise
    error. Files with chunk rows or holes go through the reference chunk logic
    (:func:`_chunks`) one file at a time.
    """

    def __init__(self, layer: str, codec: str, data_end: int) -> None:
        self.layer = layer
        self.codec = codec
        self.data_end = data_end
        self.keys: set = set()

    def read(self, toc: Mapping) -> TocContents | None:
        try:
            return self._read(toc)
        except _Unusual:
            return None

    # ------------------------------------------------------------------ columns

    def column(self, rows: list[dict], key: str) -> list:
        if key not in self.keys:
            return [None] * len(rows)
        return list(map(dict.get, rows, repeat(key)))

    def ints(self, rows: list[dict], key: str) -> list[int]:
        """A non-negative integer field (missing or null: 0), as the reference reads it."""
        if key not in self.keys:
            return [0] * len(rows)
        col = list(map(dict.get, rows, repeat(key)))
        types = set(map(type, col))
        if types - {int}:
            if types - {int, _NONE}:
                raise _Unusual
            col = [v or 0 for v in col]
        if col and min(col) < 0:
            raise _Unusual
        return col

    def strings(self, rows: list[dict], key: str) -> dict[int, str]:
        """A string field's non-empty values by row."""
        if key not in self.keys:
            return {}
        col = list(map(dict.get, rows, repeat(key)))
        types = set(map(type, col))
        if types == {_NONE}:
            return {}
        if types - {str, _NONE}:
            raise _Unusual
        return {i: v for i, v in enumerate(col) if v}

    @staticmethod
    def digest_texts(col: list) -> list[str | None]:
        """Digest texts as the reference reads them (falsy: None), not yet validated."""
        types = set(map(type, col))
        if types - {str, _NONE}:
            raise _Unusual
        return [v or None for v in col] if "" in col else col

    @staticmethod
    def validate_digests(values: Iterable[str | None]) -> None:
        present = [v for v in values if v is not None]
        if present and _sha256_bytes(present) is None:
            for v in present:  # sha512, or invalid: the reference says which
                try:
                    Digest(v)
                except Exception:
                    raise _Unusual from None

    def mtimes(self, rows: list[dict]) -> list[int]:
        col = self.column(rows, "modtime")
        try:
            distinct = set(col)
        except TypeError:
            raise _Unusual from None
        times = {}
        for text in distinct:
            if not text:
                times[text] = 0
            elif not isinstance(text, str):
                raise _Unusual
            else:
                try:
                    times[text] = parse_rfc3339_ns(text)
                except (ValueError, TypeError, OverflowError):
                    raise _Unusual from None
        if len(times) == 1:
            return [times.popitem()[1]] * len(col)
        return list(map(times.__getitem__, col))

    # ------------------------------------------------------------------ the TOC

    def _read(self, toc: Mapping) -> TocContents:
        rows = toc.get("entries")
        if type(rows) is not list or not rows or set(map(type, rows)) != {dict}:
            raise _Unusual
        self.keys = set(chain.from_iterable(rows))
        names = self.column(rows, "name")
        if set(map(type, names)) != {str}:
            raise _Unusual
        try:
            kinds = bytes(map(_CODES.__getitem__, self.column(rows, "type")))
        except (KeyError, TypeError):
            raise _Unusual from None
        joined = "\x00" + "\x00".join(names) + "\x00"
        if "\x00./" in joined or "\x00.\x00" in joined:
            # Names as `tar -C DIR .` writes them: "./etc", "./" and "." for the root. The
            # reference normalises them to "etc" and ""; in bulk here. Anything else odd
            # ("././x", "a/./b") is still left to the reference below.
            names = [n[2:] if n[:2] == "./" else "" if n == "." else n for n in names]
            joined = "\x00" + "\x00".join(names) + "\x00"
        if (
            joined.count("\x00") != len(names) + 1
            or "//" in joined
            or "\x00/" in joined
            or "/\x00" in joined
            or (("/." in joined or "\x00." in joined) and _DOT_COMPONENT.search(joined))
        ):
            raise _Unusual  # a NUL, or a path to normalise (or to refuse)
        prefetch_offset = None
        no_prefetch = False
        pieces: dict[int, list[dict]] = {}  # row of a file with chunk rows -> its rows
        if _CHUNK in kinds or any(f"\x00{n}\x00" in joined for n in _LANDMARK_NAMES):
            keep, pieces, prefetch_offset, no_prefetch = self._structure(rows, names, kinds)
            rows = [rows[i] for i in keep]
            names = [names[i] for i in keep]
            kinds = bytes(kinds[i] for i in keep)
        if "" in names and any(
            k != EntryType.DIR for n, k in zip(names, kinds, strict=True) if not n
        ):
            raise _Unusual  # a root that is not a directory
        links = self.strings(rows, "linkName")
        for i in rows_of(kinds, _HARDLINK):
            try:
                links[i] = normalize_path(links.get(i, ""), layer=self.layer)
            except LayerIndexError:
                raise _Unusual from None
            if not links[i]:
                raise _Unusual  # a hardlink to the root
        modes = self.ints(rows, "mode")
        if modes and max(modes) > 0o7777:
            modes = list(map(and_, modes, repeat(0o7777)))
        sizes = self.ints(rows, "size")
        if any(compress(sizes, kinds.translate(_NOT_REG))):
            sizes = list(map(mul, sizes, kinds.translate(_IS_REG)))
        majors, minors = self.ints(rows, "devMajor"), self.ints(rows, "devMinor")
        devs = {}
        if any(majors) or any(minors):
            devs = {
                i: (a, b) for i, (a, b) in enumerate(zip(majors, minors, strict=True)) if a or b
            }
        xattrs = {}
        if "xattrs" in self.keys:
            reader = _Reader(self.layer, self.codec, self.data_end)
            try:
                xattrs = {
                    i: x
                    for i, v in enumerate(self.column(rows, "xattrs"))
                    if v is not None and (x := reader.xattrs(rows[i], ""))
                }
            except LayerIndexError:
                raise _Unusual from None
        table = EntryTable(
            paths=names,
            kinds=kinds,
            modes=modes,
            uids=self.ints(rows, "uid"),
            gids=self.ints(rows, "gid"),
            sizes=sizes,
            mtimes=self.mtimes(rows),
            digests=self.digest_texts(self.column(rows, "digest")),
            chunks=ChunkTable(),
            chunk_first=[],
            chunk_count=[],
            links=links,
            unames=self.strings(rows, "userName"),
            gnames=self.strings(rows, "groupName"),
            devs=devs,
            xattrs=xattrs,
        )
        try:
            self._chunk_table(table, rows, pieces)
        except (OverflowError, ValueError):
            raise _Unusual from None  # offsets beyond 64 bits, digests not sha256
        if prefetch_offset is None:
            prefetch_offset = _lazyfs_prefetch_offset(toc)
        return TocContents(table, prefetch_offset, no_prefetch)

    def _structure(
        self, rows: list[dict], names: list[str], kinds: bytes
    ) -> tuple[list[int], dict[int, list[dict]], int | None, bool]:
        """Rows that are entries, the chunk rows of each file, and the landmarks.

        Returns ``(keep, pieces, prefetch_offset, no_prefetch)``; ``pieces`` maps the
        position in ``keep`` of each file that has chunk rows to its rows (its own first).
        """
        keep: list[int] = []
        pieces: dict[int, list[dict]] = {}
        prefetch_offset = None
        no_prefetch = False
        current: list[dict] | None = None
        current_name = None
        for i, kind in enumerate(kinds):
            name = names[i]
            if kind == _CHUNK:
                if current is None or name != current_name:
                    raise _Unusual  # a chunk that does not follow its file
                current.append(rows[i])
                continue
            current = None
            if kind == _REG and name in _LANDMARK_NAMES:
                if name == PREFETCH_LANDMARK:
                    prefetch_offset = self.ints([rows[i]], "offset")[0]
                elif name == NO_PREFETCH_LANDMARK:
                    no_prefetch = True
                continue
            if kind == _REG:
                current, current_name = [rows[i]], name
                pieces[len(keep)] = current
            keep.append(i)
        return keep, {k: v for k, v in pieces.items() if len(v) > 1}, prefetch_offset, no_prefetch

    def _chunk_table(
        self, table: EntryTable, rows: list[dict], pieces: dict[int, list[dict]]
    ) -> None:
        """Every regular file's chunks into ``table.chunks``, each checked as the reference.

        Files of one chunk (the common case) are done column by column; files with chunk
        rows or holes one at a time with :func:`_chunks`. Validates the file digests too.
        """
        n = len(rows)
        has_chunks = bytearray(map(bool, table.sizes))  # regular files, not empty
        files = list(compress(range(n), has_chunks))
        if not pieces.keys() <= set(files):
            raise _Unusual  # chunk rows after an empty file: they do not follow it
        frows = [rows[i] for i in files]
        offsets = self.ints(frows, "offset")
        chunk_types = self.column(frows, "chunkType")
        complex_files = set(pieces)
        if "chunkType" in self.keys:
            complex_files.update(
                i for i, t in zip(files, chunk_types, strict=True) if t is not None
            )
            starts = {o for o, t in zip(offsets, chunk_types, strict=True) if t != CODEC_ZEROS}
        else:
            starts = set(offsets)
        for more in pieces.values():
            later = more[1:]
            types = self.column(later, "chunkType")
            starts.update(
                o
                for o, t in zip(self.ints(later, "offset"), types, strict=True)
                if t != CODEC_ZEROS
            )
        sorted_starts = sorted(starts)
        simple = has_chunks
        if complex_files:
            simple = bytearray(has_chunks)
            for i in complex_files:
                simple[i] = 0
            keep = [k for k, i in enumerate(files) if simple[i]]
            frows = [frows[k] for k in keep]
            offsets = [offsets[k] for k in keep]
        first = self._single_chunks(table, simple, frows, offsets, sorted_starts)
        table.chunk_count = list(simple)
        table.chunk_first = list(accumulate(simple, initial=first))[:-1]  # files before
        unchecked = bytes(1 - s for s in simple) if complex_files else None
        if unchecked is None:
            unchecked = simple.translate(_FLIP)
        self.validate_digests(compress(table.digests, unchecked))
        if not complex_files:
            return
        reader = _Reader(self.layer, self.codec, self.data_end)
        for i in sorted(complex_files):
            digest = table.digests[i]
            file = _File(table.paths[i], table.sizes[i], None if digest is None else Digest(digest))
            try:
                chunks = _chunks(reader, file, pieces.get(i) or [rows[i]], sorted_starts)
            except LayerIndexError:
                raise _Unusual from None
            table.chunk_first[i], table.chunk_count[i] = table.chunks.add_file(chunks)

    def _single_chunks(
        self,
        table: EntryTable,
        simple: bytes | bytearray,
        rows: list[dict],
        offsets: list[int],
        starts: list[int],
    ) -> int:
        """The one chunk of each file ``simple`` marks (``rows``: their TOC rows).

        Validates those files' digests. Returns the index of the first chunk in the table.
        """
        if not rows:
            return len(table.chunks)
        sizes = list(compress(table.sizes, simple))
        ends = self.ints(rows, "endOffset")
        if not all(ends):
            following = dict(zip(starts, [*starts[1:], self.data_end], strict=True))
            ends = [e or following[o] for e, o in zip(ends, offsets, strict=True)]
        if not all(map(lt, offsets, ends)) or max(ends) > self.data_end:
            raise _Unusual  # a bad compressed range
        if any(self.ints(rows, "chunkOffset")):
            raise _Unusual  # chunks that do not tile the file
        if "chunkSize" in self.keys:
            for declared, size in zip(self.ints(rows, "chunkSize"), sizes, strict=True):
                if 0 < declared < size:
                    raise _Unusual  # a chunk shorter than its file: they do not tile it
        file_digests = list(compress(table.digests, simple))
        if "chunkDigest" in self.keys:
            own = self.digest_texts(self.column(rows, "chunkDigest"))
            self.validate_digests(file_digests)
            digests = [c or d for c, d in zip(own, file_digests, strict=True)]
        else:
            digests = file_digests
        if None in digests:
            raise _Unusual  # a chunk without a digest
        raw = _sha256_bytes(digests)
        if raw is None:
            raise _Unusual  # invalid, or sha512 chunk digests: the chunk table holds sha256
        return table.chunks.extend(
            file_offset=[0] * len(rows),
            size=sizes,
            blob_offset=offsets,
            blob_length=list(map(int.__sub__, ends, offsets)),
            inner=self.ints(rows, "innerOffset"),
            codec=bytes([CODEC_CODES[self.codec]]) * len(rows),
            digests=raw,
        )


def _sha256_bytes(digests: list[str]) -> bytes | None:
    """The raw 32 bytes of each ``sha256:<64 lowercase hex>`` text, joined; None if any is
    not one (another algorithm, or not a digest at all)."""
    n = len(digests)
    if set(map(len, digests)) != {_SHA256_TEXT}:
        return None
    joined = "".join(digests)
    for k, char in enumerate(_SHA256_PREFIX):
        if joined[k::_SHA256_TEXT] != char * n:
            return None
    hex_text = joined.replace(_SHA256_PREFIX, "")
    if len(hex_text) != 64 * n:
        return None
    try:
        raw = bytes.fromhex(hex_text)
    except ValueError:
        return None
    return raw if raw.hex() == hex_text else None
