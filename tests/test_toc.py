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
