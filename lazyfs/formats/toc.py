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
import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from ..errors import LayerIndexError
from ..oci.digest import Digest
from .model import CODEC_ZEROS, Chunk, Entry, EntryType, normalize_path

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
    """A TOC's entries in the index model, and what its landmarks say."""

    entries: list[Entry]
    prefetch_offset: int | None = None
    no_prefetch: bool = False


def parse_toc_json(data: bytes, *, layer: str) -> dict:
    """Decode a TOC document; a clear :class:`LayerIndexError` when it is not one."""
    try:
        toc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LayerIndexError(f"layer {layer}: the TOC is not valid JSON ({exc})") from None
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
    """The model entries of a parsed TOC (see the module docs for the rules)."""
    rd = _Reader(layer, codec, data_end)
    out = TocContents(entries=[])
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
    if out.prefetch_offset is None and isinstance(toc.get(LAZYFS_PREFETCH_KEY), int):
        out.prefetch_offset = toc[LAZYFS_PREFETCH_KEY]
    return out


def _chunks(rd: _Reader, entry: Entry, raws: list[Mapping], starts: list[int]) -> list[Chunk]:
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
    starts: list[int],
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
