"""The shared TOC reader: both key sets, and a clear error for every unsafe or broken entry."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import LayerIndexError
from lazyfs.formats.model import CODEC_GZIP, CODEC_ZEROS, CODEC_ZSTD, EntryType
from lazyfs.formats.toc import entries_from_toc, parse_rfc3339_ns, parse_toc_json

D = "sha256:" + hashlib.sha256(b"x").hexdigest()


def read(entries, codec=CODEC_ZSTD, data_end=10_000, **extra):
    return entries_from_toc(
        {"version": 1, "entries": entries, **extra}, layer="L", codec=codec, data_end=data_end
    )


def test_containers_storage_keys_with_chunks_and_zeros():
    toc = read(
        [
            {"type": "dir", "name": "etc/", "mode": 0o40755, "modtime": "2025-05-28T02:24:19Z"},
            {
                "type": "reg",
                "name": "etc/a",
                "size": 30,
                "offset": 100,
                "endOffset": 400,
                "digest": D,
                "chunkSize": 10,
                "chunkDigest": D,
            },
            {
                "type": "chunk",
                "name": "etc/a",
                "chunkOffset": 10,
                "chunkSize": 10,
                "chunkType": "zeros",
            },
            {
                "type": "chunk",
                "name": "etc/a",
                "offset": 300,
                "endOffset": 400,
                "chunkOffset": 20,
                "chunkSize": 10,
                "chunkDigest": D,
            },
            {"type": "hardlink", "name": "etc/b", "linkName": "/etc/a"},
            {
                "type": "reg",
                "name": "etc/one",
                "size": 5,
                "offset": 500,
                "endOffset": 520,
                "digest": D,
            },
        ]
    )
    by = {e.path: e for e in toc.entries}
    assert by["etc"].type == EntryType.DIR and by["etc"].mode == 0o755
    a = by["etc/a"].chunks
    assert [(c.file_offset, c.size, c.codec) for c in a] == [
        (0, 10, CODEC_ZSTD),
        (10, 10, CODEC_ZEROS),
        (20, 10, CODEC_ZSTD),
    ]
    assert (a[0].blob_offset, a[0].blob_length) == (
        100,
        200,
    )  # ends where the next data chunk starts
    assert (a[2].blob_offset, a[2].blob_length) == (300, 100)
    assert by["etc/b"].link == "etc/a"
    assert by["etc/one"].chunks[0].digest == D  # the file's digest verifies a single chunk
    assert by["etc"].mtime_ns == 1748399059 * 10**9


def test_estargz_keys_inner_offsets_and_landmarks():
    toc = read(
        [
            {
                "type": "reg",
                "name": ".prefetch.landmark",
                "size": 1,
                "offset": 50,
                "chunkDigest": D,
            },
            {
                "type": "reg",
                "name": "f",
                "size": 8,
                "offset": 100,
                "chunkSize": 4,
                "chunkDigest": D,
            },
            {
                "type": "chunk",
                "name": "f",
                "offset": 100,
                "innerOffset": 4,
                "chunkOffset": 4,
                "chunkDigest": D,
            },
            {"type": "reg", "name": "g", "size": 3, "offset": 700, "chunkDigest": D},
            {"type": "reg", "name": "stargz.index.json", "offset": 900},
        ],
        codec=CODEC_GZIP,
        data_end=900,
    )
    assert [e.path for e in toc.entries] == ["f", "g"]
    assert toc.prefetch_offset == 50
    f = toc.entries[0].chunks
    assert [(c.blob_offset, c.blob_length, c.inner_offset) for c in f] == [
        (100, 600, 0),
        (100, 600, 4),
    ]
    assert (toc.entries[1].chunks[0].blob_offset, toc.entries[1].chunks[0].blob_length) == (
        700,
        200,
    )


def test_no_prefetch_landmark():
    toc = read(
        [{"type": "reg", "name": ".no.prefetch.landmark", "size": 1, "offset": 0, "chunkDigest": D}]
    )
    assert toc.no_prefetch and toc.entries == []


def test_xattrs_and_devices():
    raw = base64.b64encode(b"\x00\xff").decode()
    toc = read(
        [{"type": "char", "name": "dev/x", "devMajor": 1, "devMinor": 3, "xattrs": {"user.a": raw}}]
    )
    e = toc.entries[0]
    assert (e.type, e.dev_major, e.dev_minor, e.xattrs) == (
        EntryType.CHAR,
        1,
        3,
        {"user.a": b"\x00\xff"},
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "reg", "name": "../x"}, "'..'"),
        ({"type": "reg", "name": "a/../../x"}, "'..'"),
        ({"type": "reg", "name": "a\u0000b"}, "NUL"),
        ({"type": "hardlink", "name": "h", "linkName": "../../etc/passwd"}, "'..'"),
        ({"type": "hardlink", "name": "h", "linkName": "/"}, "root"),
        ({"type": "socket", "name": "s"}, "unknown type"),
        ({"type": "reg", "name": "f", "size": -1}, "non-negative"),
        ({"type": "reg", "name": "f", "size": 5, "offset": 0, "endOffset": 9}, "no digest"),
        (
            {"type": "reg", "name": "f", "size": 5, "offset": 0, "endOffset": 20_000, "digest": D},
            "compressed range",
        ),
        (
            {"type": "reg", "name": "f", "size": 5, "offset": 9, "endOffset": 3, "digest": D},
            "compressed range",
        ),
        ({"type": "reg", "name": "f", "modtime": "yesterday"}, "modtime"),
        ({"type": "reg", "name": "f", "xattrs": {"user.a": "%%%"}}, "base64"),
        ({"type": "reg", "name": "f", "digest": "md5:abc"}, "digest"),
        ({"type": "chunk", "name": "f"}, "does not follow"),
        ({"type": "symlink", "name": ""}, "root"),
    ],
)
def test_bad_entries_are_clear_errors(entry, message):
    with pytest.raises(LayerIndexError, match=message) as info:
        read([entry])
    assert "layer L" in str(info.value)


def test_overlapping_chunks_are_refused():
    with pytest.raises(LayerIndexError, match="tile"):
        read(
            [
                {
                    "type": "reg",
                    "name": "f",
                    "size": 20,
                    "offset": 0,
                    "chunkSize": 10,
                    "chunkDigest": D,
                },
                {
                    "type": "chunk",
                    "name": "f",
                    "offset": 50,
                    "chunkOffset": 5,
                    "chunkSize": 15,
                    "chunkDigest": D,
                },
            ]
        )


def test_chunks_larger_than_the_file_are_refused():
    with pytest.raises(LayerIndexError, match=r"tile|cover"):
        read(
            [
                {
                    "type": "reg",
                    "name": "f",
                    "size": 10,
                    "offset": 0,
                    "chunkSize": 10,
                    "chunkDigest": D,
                },
                {
                    "type": "chunk",
                    "name": "f",
                    "offset": 50,
                    "chunkOffset": 10,
                    "chunkSize": 10,
                    "chunkDigest": D,
                },
            ]
        )


def test_parse_toc_json_errors():
    with pytest.raises(LayerIndexError, match="not valid JSON"):
        parse_toc_json(b"{", layer="L")
    with pytest.raises(LayerIndexError, match="no list of entries"):
        parse_toc_json(b"[]", layer="L")
    assert parse_toc_json(orjson.dumps({"entries": []}), layer="L") == {"entries": []}


def test_rfc3339():
    assert parse_rfc3339_ns("1970-01-01T00:00:01Z") == 10**9
    assert parse_rfc3339_ns("1970-01-01T01:00:01+01:00") == 10**9
    assert parse_rfc3339_ns("1970-01-01T00:00:00.5Z") == 5 * 10**8
    assert parse_rfc3339_ns("0001-01-01T00:00:00Z") < 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
_entry = st.fixed_dictionaries(
    {
        "name": st.text(max_size=20),
        "type": st.sampled_from(["reg", "dir", "chunk", "hardlink", "x"]),
    },
    optional={
        k: _json
        for k in (
            "size",
            "offset",
            "endOffset",
            "chunkOffset",
            "chunkSize",
            "digest",
            "chunkDigest",
            "modtime",
            "xattrs",
            "linkName",
            "mode",
            "uid",
        )
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry | _json, max_size=6))
def test_fuzz_only_layer_index_errors(entries):
    try:
        read(entries)
    except LayerIndexError:
        pass


# ---------------------------------------------------------------------------- two readers
# entries_from_toc converts ordinary TOCs column by column and leaves everything unusual to
# the entry-by-entry reader, which is the reference. On TOCs near what writers make, with
# random perturbations, the column reader must give exactly the reference's entries, or
# decline (then the reference decides), but never accept what the reference refuses.

from lazyfs.formats.toc import _Columns, _entries_one_by_one  # noqa: E402

_DIGESTS = ["sha256:" + hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
_ODD = st.sampled_from(
    [
        None,
        -1,
        2**70,
        "7",
        1.5,
        "",
        "sha256:xyz",
        "sha512:" + "0" * 128,
        "../x",
        "/abs",
        "a//b",
        ".",
        "./",
        "././x",
        "./a/./b",
        "./../x",
    ]
)


@st.composite
def _writer_like_toc(draw):
    entries = []
    offset = 64
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True))
    for i, name in enumerate(names):
        kind = draw(st.sampled_from(["reg", "reg", "dir", "symlink", "hardlink", "char", "fifo"]))
        row = {
            "type": kind,
            "name": f"d{i % 2}/{name}" if draw(st.booleans()) else name,
            "mode": draw(st.sampled_from([0o644, 0o755, 0o4755, 0o600])),
            "uid": draw(st.integers(0, 70000)),
            "gid": draw(st.integers(0, 70000)),
            "modtime": draw(st.sampled_from(["2024-01-01T00:00:00Z", "1970-01-01T00:00:00Z"])),
        }
        if draw(st.booleans()):
            row["xattrs"] = {"user.k": base64.b64encode(b"v").decode()}
        chunk_rows = []
        if kind == "reg":
            size = draw(st.integers(0, 3000))
            row["size"] = size
            if size:
                parts = draw(st.integers(1, 3)) if size >= 3 else 1
                step = -(-size // parts)
                row["digest"] = draw(st.sampled_from(_DIGESTS))
                row["offset"] = offset
                row["endOffset"] = offset + 50
                row["chunkSize"] = min(step, size)
                row["chunkDigest"] = draw(st.sampled_from(_DIGESTS))
                offset += 50
                for k in range(1, parts):
                    start = k * step
                    if start >= size:
                        break
                    chunk_rows.append(
                        {
                            "type": "chunk",
                            "name": row["name"],
                            "offset": offset,
                            "endOffset": offset + 50,
                            "chunkOffset": start,
                            "chunkSize": min(step, size - start),
                            "chunkDigest": draw(st.sampled_from(_DIGESTS)),
                        }
                    )
                    offset += 50
        elif kind in ("symlink", "hardlink"):
            row["linkName"] = draw(st.sampled_from(["a", "d0/b", "/etc/x", "../up"]))
        elif kind == "char":
            row["devMajor"], row["devMinor"] = 1, 3
        entries.append(row)
        entries.extend(chunk_rows)
    # Perturb a few fields with odd values.
    for _ in range(draw(st.integers(0, 2))):
        row = entries[draw(st.integers(0, len(entries) - 1))]
        key = draw(
            st.sampled_from(
                [
                    "name",
                    "size",
                    "offset",
                    "uid",
                    "mode",
                    "digest",
                    "chunkDigest",
                    "linkName",
                    "chunkSize",
                    "modtime",
                    "type",
                ]
            )
        )
        value = draw(_ODD)
        if value is None:
            row.pop(key, None)
        else:
            row[key] = value
    if draw(st.booleans()):
        # As `tar -C DIR .` names them: "./a", with the root as "./" or ".".
        for row in entries:
            if isinstance(row.get("name"), str):
                row["name"] = "./" + row["name"]
        if draw(st.booleans()):
            entries.insert(0, {"type": "dir", "name": draw(st.sampled_from([".", "./"]))})
    return {"version": 1, "entries": entries}


def test_the_column_reader_takes_names_with_a_leading_dot_slash():
    """`tar -C DIR .` names ("./etc", "./" or "." for the root) stay on the fast path."""
    rows = [
        {"type": "dir", "name": "./", "mode": 0o755},
        {"type": "dir", "name": "./etc", "mode": 0o755},
        {"type": "reg", "name": "./etc/hostname", "mode": 0o644, "size": 0},
        {"type": "symlink", "name": "./etc/mtab", "linkName": "../proc/mounts"},
    ]
    toc = {"version": 1, "entries": rows}
    fast = _Columns("L", CODEC_ZSTD, 10**6).read(toc)
    assert fast is not None, "declined"
    entries, _, _ = _entries_one_by_one(toc, layer="L", codec=CODEC_ZSTD, data_end=10**6)
    assert fast.entries == entries
    assert [e.path for e in entries] == ["", "etc", "etc/hostname", "etc/mtab"]
    for odd in ("././etc/x", "./etc/./x"):
        toc["entries"] = [*rows, {"type": "reg", "name": odd, "size": 0}]
        assert _Columns("L", CODEC_ZSTD, 10**6).read(toc) is None  # left to the reference


@settings(max_examples=400, deadline=None)
@given(_writer_like_toc())
def test_column_reader_agrees_with_the_reference(toc):
    try:
        reference = _entries_one_by_one(toc, layer="L", codec=CODEC_ZSTD, data_end=10**6)
    except LayerIndexError:
        reference = None
    try:
        fast = _Columns("L", CODEC_ZSTD, 10**6).read(toc)
    except LayerIndexError:
        fast = "refused"
    if fast is None:
        return  # declined: the reference decides
    assert reference is not None, "the column reader accepted a TOC the reference refuses"
    assert fast != "refused", "the column reader refused a TOC the reference accepts"
    entries, prefetch_offset, no_prefetch = reference
    assert fast.entries == entries
    assert (fast.prefetch_offset, fast.no_prefetch) == (prefetch_offset, no_prefetch)
