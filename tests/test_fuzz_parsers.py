"""Fuzzing every parser that reads bytes an image or a registry controls.

Each fuzzer feeds a parser inputs derived from valid ones (bytes flipped, cut, repeated,
spliced) or built from the grammar with odd values, and checks that it either succeeds or
raises the one error type its callers expect (a :class:`~lazyfs.errors.LazyfsError`
subclass that the command line prints as one line); never another exception, never a hang:

* zstd:chunked footers, both dialects (``GNUlInUx`` 64 bytes, ``GnUlInUx`` 40 bytes);
* eStargz footers (51 bytes) and legacy stargz footers (47 bytes);
* TOC JSON in both key sets, as text and as structures, read into a layer index and then
  merged into a tree (:meth:`~lazyfs.fs.tree.MergedTree.build`);
* tar headers, through :func:`~lazyfs.formats.plain.index_tar_file` (tarfile);
* ``multipart/byteranges`` bodies and ``Content-Range`` values;
* image references;
* ``WWW-Authenticate`` headers (documented never to raise).

The suite runs a small budget (``LAZYFS_FUZZ_EXAMPLES``, 60 examples a fuzzer by default:
a few seconds in all); ``scripts/fuzz`` runs the same fuzzers with many more.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import tempfile
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.errors import InvalidReference, LayerIndexError, MultipartError
from lazyfs.formats.estargz import parse_estargz_footer
from lazyfs.formats.model import LayerIndex
from lazyfs.formats.plain import index_tar_file
from lazyfs.formats.toc import entries_from_toc, parse_toc_json
from lazyfs.formats.zstd_chunked import parse_zstd_chunked_footer
from lazyfs.fs.tree import MergedTree
from lazyfs.oci.challenge import parse_www_authenticate
from lazyfs.oci.digest import Digest
from lazyfs.oci.multipart import build_byteranges, parse_byteranges, parse_content_range
from lazyfs.oci.reference import Reference

EXAMPLES = int(os.environ.get("LAZYFS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------------------- mutations


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few random edits: flipped bytes, cuts, insertions, repeats, splices."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat", "splice"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("0"), ord("/")]))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 600))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(data)


# ---------------------------------------------------------------------------- footers


def _zstd_footers() -> list[bytes]:
    skip = struct.pack("<II", 0x184D2A50, 64)
    current = struct.pack("<7Q8s", 100, 80, 400, 1, 200, 50, 300, b"GNUlInUx")
    legacy = struct.pack("<4Q8s", 100, 80, 400, 1, b"GnUlInUx")
    return [b"\0" * 300 + skip + current, b"\0" * 300 + legacy, skip + current]


def _estargz_footers() -> list[bytes]:
    payload = b"%016xSTARGZ" % 0x30
    extra_new = struct.pack("<H", 26) + b"SG" + struct.pack("<H", 22) + payload
    extra_old = struct.pack("<H", 22) + payload
    tail = b"\x01\x00\x00\xff\xff" + bytes(8)
    head = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff"
    return [b"x" * 64 + head + extra_new + tail, b"x" * 64 + head + extra_old + tail]


@FUZZ
@given(mutated(_zstd_footers()), st.integers(0, 1 << 40))
def test_zstd_chunked_footers(tail, extra):
    try:
        footer = parse_zstd_chunked_footer(tail, len(tail) + extra, layer="L")
    except LayerIndexError as exc:
        assert "layer L" in str(exc)
        return
    if footer is not None:
        assert 0 <= footer.toc_offset < len(tail) + extra


@FUZZ
@given(mutated(_estargz_footers()), st.none() | st.integers(0, 1 << 40))
def test_estargz_footers(tail, size):
    try:
        found = parse_estargz_footer(tail, blob_size=size)
    except LayerIndexError:
        return
    if found is not None and size is not None:
        assert 0 <= found[0] < size


# ---------------------------------------------------------------------------- TOC JSON

_D = [str(Digest.of(bytes([i]))) for i in range(3)]


def _toc_seeds() -> list[bytes]:
    estargz = {
        "version": 1,
        "entries": [
            {"name": "d/", "type": "dir", "mode": 0o755, "modtime": "2024-01-01T00:00:00Z"},
            {
                "name": "d/f",
                "type": "reg",
                "size": 10,
                "offset": 100,
                "chunkSize": 4,
                "chunkDigest": _D[0],
                "digest": _D[1],
            },
            {
                "name": "d/f",
                "type": "chunk",
                "offset": 150,
                "chunkOffset": 4,
                "innerOffset": 3,
                "chunkDigest": _D[1],
            },
            {"name": "l", "type": "symlink", "linkName": "/etc"},
            {"name": "h", "type": "hardlink", "linkName": "d/f"},
            {
                "name": ".prefetch.landmark",
                "type": "reg",
                "size": 1,
                "offset": 200,
                "digest": _D[2],
            },
        ],
    }
    storage = {
        "version": 1,
        "entries": [
            {
                "name": "a",
                "type": "reg",
                "size": 8,
                "offset": 10,
                "endOffset": 30,
                "digest": _D[0],
                "uid": 1,
                "gid": 2,
                "xattrs": {"user.x": "eA=="},
            },
            {
                "name": "z",
                "type": "reg",
                "size": 100,
                "chunkSize": 60,
                "chunkType": "zeros",
                "chunkDigest": _D[1],
                "digest": _D[2],
            },
            {
                "name": "z",
                "type": "chunk",
                "chunkOffset": 60,
                "chunkSize": 40,
                "offset": 40,
                "endOffset": 70,
                "chunkDigest": _D[2],
            },
            {"name": "c", "type": "char", "devMajor": 1, "devMinor": 3},
            {"name": ".wh.gone", "type": "reg", "size": 0},
        ],
        "lazyfsPrefetchOffset": 40,
    }
    return [json.dumps(estargz).encode(), json.dumps(storage).encode()]


def _layer(toc: dict, n: int) -> LayerIndex:
    contents = entries_from_toc(toc, layer=f"L{n}", codec="zstd", data_end=1000)
    return LayerIndex("zstd:chunked", Digest.of(b"%d" % n), 2000, table=contents.table)


def _merge(tocs: list[dict]) -> None:
    try:
        layers = [_layer(toc, n) for n, toc in enumerate(tocs)]
        MergedTree.build(layers)
    except LayerIndexError as exc:
        assert "layer " in str(exc)


@FUZZ
@given(st.lists(mutated(_toc_seeds()), min_size=1, max_size=2))
def test_toc_json_text(texts):
    tocs = []
    for text in texts:
        try:
            tocs.append(parse_toc_json(text, layer="L"))
        except LayerIndexError:
            return
    _merge(tocs)


_ODD = st.sampled_from(
    [
        None,
        -1,
        0,
        1,
        7,
        2**63,
        2**70,
        "7",
        1.5,
        "",
        "..",
        "/",
        "a/../b",
        "a\0b",
        "\udcff",
        "sha256:" + "0" * 64,
        "sha512:" + "0" * 128,
        "zeros",
        "reg",
        [],
        {},
    ]
)
_KEYS = [
    "name",
    "type",
    "size",
    "offset",
    "endOffset",
    "innerOffset",
    "chunkOffset",
    "chunkSize",
    "chunkDigest",
    "chunkType",
    "digest",
    "linkName",
    "mode",
    "uid",
    "gid",
    "modtime",
    "xattrs",
    "devMajor",
    "devMinor",
]


@FUZZ
@given(
    st.lists(st.integers(0, 1), min_size=1, max_size=2),
    st.lists(st.tuples(st.integers(0, 10), st.sampled_from(_KEYS), _ODD), max_size=8),
)
def test_toc_structures(which, edits):
    tocs = [orjson.loads(_toc_seeds()[w]) for w in which]
    for position, key, value in edits:
        entries = tocs[position % len(tocs)]["entries"]
        if entries:
            entry = entries[position % len(entries)]
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value
    _merge(tocs)


# ---------------------------------------------------------------------------- tar headers


def _tar_seeds() -> list[bytes]:
    out = []
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, kind, data, link in (
                ("dir", tarfile.DIRTYPE, b"", ""),
                ("dir/file", tarfile.REGTYPE, b"hello" * 30, ""),
                ("dir/" + "n" * 90, tarfile.REGTYPE, b"long", ""),
                ("link", tarfile.SYMTYPE, b"", "dir/file"),
                ("hard", tarfile.LNKTYPE, b"", "dir/file"),
            ):
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.size = kind, link, len(data)
                if fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"SCHILY.xattr.user.a": "b", "mtime": "1.5"}
                tar.addfile(info, io.BytesIO(data) if data else None)
        out.append(buf.getvalue())
    return out


@FUZZ
@given(mutated(_tar_seeds()))
def test_tar_headers(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer.tar"
        path.write_bytes(data)
        try:
            index = index_tar_file(
                path, layer="L", blob_digest=Digest.of(data), blob_size=len(data)
            )
        except LayerIndexError as exc:
            assert "layer L" in str(exc)
            return
        for entry in index.entries:
            for chunk in entry.chunks:
                if chunk.codec == "none":
                    assert chunk.blob_offset + chunk.blob_length <= len(data)
        try:
            MergedTree.build([index])
        except LayerIndexError:
            pass


# ---------------------------------------------------------------------------- multipart


def _multipart_seeds() -> list[bytes]:
    blob = bytes(range(256)) * 8
    parts = [(start, blob[start : start + n]) for start, n in ((0, 10), (100, 50), (2000, 48))]
    return [build_byteranges(parts, len(blob), "SEP"), build_byteranges(parts[:1], None, "SEP", "")]


@FUZZ
@given(mutated(_multipart_seeds()))
def test_multipart_bodies(body):
    try:
        parts = parse_byteranges(body, "SEP")
    except MultipartError:
        return
    for part in parts:
        assert len(part.data) == part.end - part.start + 1


@FUZZ
@given(
    st.text(max_size=40)
    | st.sampled_from(
        [
            "bytes 0-9/10",
            "bytes 5-4/10",
            "bytes 0-9/*",
            "bytes */10",
            "bytes 0-99999999999999999999/1",
        ]
    )
)
def test_content_range(value):
    try:
        start, end, total = parse_content_range(value)
    except MultipartError:
        return
    assert 0 <= start <= end and (total is None or end < total)


# ---------------------------------------------------------------------------- references

_REF_SEEDS = [
    b"localhost:5000/ns/app:1.0",
    b"docker.io/library/python@sha256:" + b"a" * 64,
    b"[::1]:5000/x/y:tag@sha256:" + b"0" * 64,
    b"python",
]


@FUZZ
@given(mutated(_REF_SEEDS) | st.binary(max_size=60))
def test_references(raw):
    text = raw.decode("utf-8", "replace")
    try:
        ref = Reference.parse(text)
    except InvalidReference:
        return
    assert Reference.parse(str(ref)) == ref


# ---------------------------------------------------------------------------- WWW-Authenticate

_CHALLENGES = [
    b'Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"',
    b'Basic realm="x", Bearer realm="y",error="invalid_token"',
    b"Bearer realm=unquoted, Basic",
]


@FUZZ
@given(mutated(_CHALLENGES) | st.binary(max_size=80))
def test_www_authenticate(raw):
    for challenge in parse_www_authenticate(raw.decode("utf-8", "replace")):
        assert challenge.scheme
