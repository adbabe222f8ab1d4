"""The eStargz reader: footers, TOC location and verification, limits, landmarks.

The blobs here come from a tiny writer in this file (one gzip member per tar header run and
per payload chunk, a TOC member, a footer), enough to exercise the reader's paths; blobs
written by the real peer tool are tested in ``test_peer_vectors_ctr_remote.py``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import struct
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import DigestMismatch, LayerIndexError
from lazyfs.formats import estargz
from lazyfs.formats.annotations import ESTARGZ_TOC_DIGEST
from lazyfs.formats.estargz import parse_estargz_footer, read_estargz_index
from lazyfs.formats.model import CODEC_GZIP, EntryType, LayerIndex
from lazyfs.formats.toc import TAIL_SIZE
from lazyfs.oci.blobs import BytesBlob
from tests.harness.indexcheck import assert_index_matches_tar, tar_members

#: A footer written by ``ctr-remote image convert --estargz`` (TOC member at 0x12c3c).
CTR_REMOTE_FOOTER = bytes.fromhex(
    "1f8b08040000000000ff1a0053471600303030303030303030303031326333635354"
    "4152475a010000ffff0000000000000000"
)


# ---------------------------------------------------------------- a tiny writer


def footer(toc_offset: int, *, legacy: bool = False, digits: bytes | None = None) -> bytes:
    """An eStargz (51 bytes) or legacy stargz (47 bytes) footer."""
    payload = (digits if digits is not None else b"%016x" % toc_offset) + b"STARGZ"
    if legacy:
        extra = struct.pack("<H", 22) + payload
    else:
        extra = struct.pack("<H", 26) + b"SG" + struct.pack("<H", 22) + payload
    return b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + extra + b"\x01\x00\x00\xff\xff" + bytes(8)


@dataclass
class F:
    """A file to write. ``chunk``: split the payload; ``shared``: continue the open member."""

    name: str
    data: bytes = b""
    kind: str = "reg"
    link: str = ""
    chunk: int = 0
    shared: bool = False
    xattrs: dict[str, bytes] = field(default_factory=dict)


_TAR_TYPES = {"reg": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}


@dataclass
class Built:
    blob: bytes
    toc_json: bytes
    tar: bytes  # the layer's tar without the TOC entry
    toc_offset: int

    @property
    def annotations(self) -> dict[str, str]:
        return {ESTARGZ_TOC_DIGEST: "sha256:" + hashlib.sha256(self.toc_json).hexdigest()}


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()  # finished members
        self.open = bytearray()  # the member being written
        self.tar = bytearray()
        self.toc: list[dict] = []

    def new_member(self) -> int:
        if self.open:
            self.out += gzip.compress(bytes(self.open), mtime=0)
            self.open.clear()
        return len(self.out)

    def write(self, data: bytes) -> None:
        self.open += data
        self.tar += data

    def add(self, f: F) -> None:
        info = tarfile.TarInfo(f.name)
        info.type, info.size, info.mtime = _TAR_TYPES[f.kind], len(f.data), 1_700_000_000
        info.mode, info.linkname = 0o755 if f.kind == "dir" else 0o644, f.link
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode() for k, v in f.xattrs.items()}
        self.write(info.tobuf(tarfile.PAX_FORMAT))
        entry = {
            "name": f.name,
            "type": f.kind,
            "mode": info.mode,
            "modtime": "2023-11-14T22:13:20Z",
            "linkName": f.link,
            "xattrs": {k: base64.b64encode(v).decode() for k, v in f.xattrs.items()},
        }
        self.toc.append(entry)
        if f.kind != "reg" or not f.data:
            return
        entry.update(size=len(f.data), digest="sha256:" + hashlib.sha256(f.data).hexdigest())
        step = f.chunk or len(f.data)
        for at in range(0, len(f.data), step):
            piece = f.data[at : at + step]
            if f.shared or at:
                offset, inner = len(self.out), len(self.open)
            else:
                offset, inner = self.new_member(), 0
            chunk = entry if at == 0 else {"name": f.name, "type": "chunk"}
            chunk.update(offset=offset, chunkOffset=at, chunkSize=len(piece))
            chunk["chunkDigest"] = "sha256:" + hashlib.sha256(piece).hexdigest()
            if inner:
                chunk["innerOffset"] = inner
            if chunk is not entry:
                self.toc.append(chunk)
            self.write(piece)
            if f.chunk and at + step < len(f.data):
                self.new_member()
        self.write(bytes(-len(f.data) % 512))


def build(files: Sequence[F], *, legacy: bool = False, toc: bytes | None = None) -> Built:
    """An eStargz blob of ``files``; ``toc`` replaces the TOC JSON when given."""
    w = _Writer()
    for f in files:
        w.add(f)
    toc_offset = w.new_member()
    toc_json = toc if toc is not None else json.dumps({"version": 1, "entries": w.toc}).encode()
    info = tarfile.TarInfo("stargz.index.json")
    info.size = len(toc_json)
    toc_tar = info.tobuf(tarfile.USTAR_FORMAT) + toc_json + bytes(-len(toc_json) % 512 + 1024)
    blob = bytes(w.out) + gzip.compress(toc_tar, mtime=0) + footer(toc_offset, legacy=legacy)
    return Built(blob, toc_json, bytes(w.tar) + bytes(1024), toc_offset)


def sample_files() -> list[F]:
    rng = random.Random(7)
    return [
        F("etc", kind="dir"),
        F("etc/hosts", b"127.0.0.1 localhost\n", xattrs={"user.k": b"v"}),
        F("etc/empty"),
        F("a", b"A" * 10),
        F("b", b"B" * 700, shared=True),  # shares a's gzip member: innerOffset
        F("big", rng.randbytes(300_000), chunk=100_000),
        F("link", kind="symlink", link="etc/hosts"),
    ]


class CountingBlob(BytesBlob):
    """A blob in memory that records every range read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def _pread(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super()._pread(offset, length)


def read(blob: BytesBlob, annotations=None, **kw) -> LayerIndex:
    return trio.run(
        lambda: read_estargz_index(blob, annotations=annotations or {}, layer="L", **kw)
    )


# ---------------------------------------------------------------- footers


def test_the_footer_ctr_remote_writes() -> None:
    assert parse_estargz_footer(CTR_REMOTE_FOOTER) == (0x12C3C, "estargz")
    assert footer(0x12C3C) == CTR_REMOTE_FOOTER
    assert gzip.decompress(CTR_REMOTE_FOOTER) == b""  # an empty gzip member


@pytest.mark.parametrize("legacy", [False, True])
def test_footers_with_something_before_them(legacy: bool) -> None:
    foot = footer(1234, legacy=legacy)
    assert len(foot) == (47 if legacy else 51)
    assert gzip.decompress(foot) == b""
    dialect = "stargz-legacy" if legacy else "estargz"
    for before in (b"", b"x" * 3, b"\x00" * 100):
        assert parse_estargz_footer(before + foot) == (1234, dialect)
    assert parse_estargz_footer(b"\x00" * 5000 + foot, blob_size=6000) == (1234, dialect)


@pytest.mark.parametrize("legacy", [False, True])
def test_every_fixed_byte_is_checked(legacy: bool) -> None:
    foot = footer(1234, legacy=legacy)
    digits_at = 16 if not legacy else 12
    free = set(range(4, 10)) | set(range(digits_at, digits_at + 16))  # MTIME, XFL, OS; offset
    for i in set(range(len(foot))) - free:
        bad = bytearray(foot)
        bad[i] ^= 0x20
        assert parse_estargz_footer(bytes(bad)) is None, i
    for i in free - set(range(digits_at, digits_at + 16)):
        other = bytearray(foot)
        other[i] ^= 0x55
        assert parse_estargz_footer(bytes(other)) is not None, i


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\x1f\x8b",
        footer(1)[:-1],
        footer(1)[1:],
        footer(1, legacy=True)[:46],
        b"x" * 51,
        gzip.compress(b"hello"),
        bytes(64),
    ],
)
def test_not_a_footer(tail: bytes) -> None:
    assert parse_estargz_footer(tail) is None


@pytest.mark.parametrize(
    "digits",
    [
        b"0x00000000000010",
        b"zzzzzzzzzzzzzzzz",
        b" 000000000000010",
        b"+000000000000010",
        b"0000_00000000010",
    ],
)
@pytest.mark.parametrize("legacy", [False, True])
def test_offset_not_hex(digits: bytes, legacy: bool) -> None:
    with pytest.raises(LayerIndexError, match="hexadecimal"):
        parse_estargz_footer(footer(0, digits=digits, legacy=legacy))


def test_uppercase_hex_is_read() -> None:
    assert parse_estargz_footer(footer(0, digits=b"00000000000ABCDE")) == (0xABCDE, "estargz")


def test_offset_past_the_blob() -> None:
    foot = footer(1000)
    assert parse_estargz_footer(foot, blob_size=1052) == (1000, "estargz")
    for size in (1051, 1000, 51):
        with pytest.raises(LayerIndexError, match="not before the footer"):
            parse_estargz_footer(foot, blob_size=size)
    with pytest.raises(LayerIndexError, match="not before the footer"):
        parse_estargz_footer(footer(1 << 60, legacy=True), blob_size=1 << 20)


def _is_fine(tail: bytes, blob_size: int | None) -> None:
    try:
        found = parse_estargz_footer(tail, blob_size=blob_size)
    except LayerIndexError:
        return
    if found is not None:
        offset, dialect = found
        assert dialect in ("estargz", "stargz-legacy") and offset >= 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.none() | st.integers(min_value=0, max_value=1 << 64))
def test_arbitrary_tails_never_raise_anything_else(tail: bytes, blob_size: int | None) -> None:
    _is_fine(tail, blob_size)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=16, max_size=16),
    st.booleans(),
    st.binary(max_size=8),
    st.none() | st.integers(min_value=0, max_value=1 << 64),
)
def test_footer_shaped_tails_never_raise_anything_else(
    digits: bytes, legacy: bool, before: bytes, blob_size: int | None
) -> None:
    _is_fine(before + footer(0, digits=digits, legacy=legacy), blob_size)


# ---------------------------------------------------------------- reading the index


@pytest.mark.parametrize("legacy", [False, True])
def test_read_index_and_every_file(legacy: bool) -> None:
    built = build(sample_files(), legacy=legacy)
    blob = BytesBlob(built.blob)
    index = read(blob, built.annotations)
    assert (index.format, index.dialect) == ("estargz", "stargz-legacy" if legacy else "estargz")
    assert (index.blob_digest, index.blob_size) == (blob.digest, len(built.blob))
    assert index.index_size == len(built.toc_json)
    assert (index.prefetch_offset, index.no_prefetch) == (None, False)
    assert [e.path for e in index.entries] == [
        "etc",
        "etc/hosts",
        "etc/empty",
        "a",
        "b",
        "big",
        "link",
    ]
    by_path = {e.path: e for e in index.entries}
    assert by_path["b"].chunks[0].inner_offset > 0  # shares a's member
    assert [c.size for c in by_path["big"].chunks] == [100_000] * 3
    assert all(c.codec == CODEC_GZIP for e in index.entries for c in e.chunks)
    assert all(c.blob_end <= built.toc_offset for e in index.entries for c in e.chunks)
    # The blob is an ordinary tar.gz, and the index describes its tar exactly.
    assert gzip.decompress(built.blob).startswith(built.tar[:-1024])
    trio.run(assert_index_matches_tar, blob, index, built.tar)


def test_one_read_when_the_tail_holds_the_toc() -> None:
    built = build(sample_files())
    blob = CountingBlob(built.blob)
    read(blob)
    size = len(built.blob)
    assert blob.reads == [(size - TAIL_SIZE, TAIL_SIZE)]
    assert size > TAIL_SIZE + 100_000


def test_no_read_when_the_given_tail_holds_the_toc() -> None:
    built = build(sample_files())
    blob = CountingBlob(built.blob)
    index = read(blob, tail=built.blob[-TAIL_SIZE:])
    assert blob.reads == []
    assert len(index.entries) == 7


def test_exactly_the_toc_is_fetched_when_the_tail_misses_it() -> None:
    built = build(sample_files())
    blob = CountingBlob(built.blob)
    size = len(built.blob)
    read(blob, tail=built.blob[-60:])
    assert blob.reads == [(built.toc_offset, size - 51 - built.toc_offset)]


def test_small_blob_tail_is_the_whole_blob() -> None:
    built = build([F("x", b"x")])
    blob = CountingBlob(built.blob)
    read(blob)
    assert blob.reads == [(0, len(built.blob))]


def test_toc_digest_is_verified() -> None:
    built = build(sample_files())
    blob = BytesBlob(built.blob)
    read(blob, built.annotations)
    wrong = {ESTARGZ_TOC_DIGEST: "sha256:" + hashlib.sha256(b"other").hexdigest()}
    with pytest.raises(DigestMismatch, match="layer L"):
        read(blob, wrong)
    with pytest.raises(LayerIndexError, match=r"layer L.*not a valid digest"):
        read(blob, {ESTARGZ_TOC_DIGEST: "md5:abc"})
    read(blob, {"unrelated": "x"})  # no annotation: nothing to check against


def test_landmarks_are_hidden_and_interpreted() -> None:
    files = [F("first", b"1" * 100), F(".prefetch.landmark", b"\x0f"), F("later", b"2" * 100)]
    built = build(files)
    index = read(BytesBlob(built.blob), built.annotations)
    assert [e.path for e in index.entries] == ["first", "later"]
    landmark = next(e for e in json.loads(built.toc_json)["entries"] if e["name"] == files[1].name)
    assert index.prefetch_offset == landmark["offset"]
    assert not index.no_prefetch

    built = build([F(".no.prefetch.landmark", b"\x0f"), F("x", b"x")])
    index = read(BytesBlob(built.blob))
    assert [e.path for e in index.entries] == ["x"]
    assert index.no_prefetch and index.prefetch_offset is None


def test_entry_types_and_metadata() -> None:
    built = build(sample_files())
    index = read(BytesBlob(built.blob))
    by_path = {e.path: e for e in index.entries}
    assert by_path["etc"].type == EntryType.DIR and by_path["etc"].mode == 0o755
    assert by_path["link"].type == EntryType.SYMLINK and by_path["link"].link == "etc/hosts"
    assert by_path["etc/hosts"].xattrs == {"user.k": b"v"}
    assert by_path["etc/hosts"].mtime_ns == 1_700_000_000 * 10**9
    assert set(tar_members(built.tar)) == set(by_path)


# ---------------------------------------------------------------- refusals


def _blob_with_toc_member(member: bytes) -> bytes:
    return member + footer(0)


def test_not_estargz() -> None:
    for data in (gzip.compress(b"plain tar.gz" * 100), b"", b"x"):
        with pytest.raises(LayerIndexError, match="layer L: not an eStargz blob"):
            read(BytesBlob(data))


def test_bad_footer_offset_names_the_layer() -> None:
    with pytest.raises(LayerIndexError, match="layer L: estargz footer: the TOC offset 1000"):
        read(BytesBlob(b"x" * 100 + footer(1000)))


def test_toc_member_not_gzip() -> None:
    with pytest.raises(LayerIndexError, match="not valid gzip"):
        read(BytesBlob(_blob_with_toc_member(b"definitely not gzip")))


def test_toc_member_truncated() -> None:
    member = gzip.compress(b"x" * 10000)
    with pytest.raises(LayerIndexError, match="truncated"):
        read(BytesBlob(_blob_with_toc_member(member[:-20])))


def test_toc_without_the_index_entry() -> None:
    info = tarfile.TarInfo("something.else")
    info.size = 3
    tar = info.tobuf(tarfile.USTAR_FORMAT) + b"abc" + bytes(509 + 1024)
    with pytest.raises(LayerIndexError, match=r"no stargz\.index\.json"):
        read(BytesBlob(_blob_with_toc_member(gzip.compress(tar))))
    with pytest.raises(LayerIndexError, match=r"not a tar stream|no stargz"):
        read(BytesBlob(_blob_with_toc_member(gzip.compress(b"\x01" * 700))))


def test_toc_not_json() -> None:
    built = build([F("x", b"x")], toc=b"{not json")
    with pytest.raises(LayerIndexError, match="layer L"):
        read(BytesBlob(built.blob), built.annotations)


def test_toc_in_several_gzip_members() -> None:
    built = build(sample_files())
    toc_tar = zlib.decompress(built.blob[built.toc_offset : -51], wbits=31)
    split = b"".join(
        gzip.compress(toc_tar[i : i + 300], mtime=0) for i in range(0, len(toc_tar), 300)
    )
    blob = built.blob[: built.toc_offset] + split + footer(built.toc_offset)
    index = read(BytesBlob(blob), built.annotations)
    assert len(index.entries) == 7


def _bomb(uncompressed: int, members: int = 1) -> bytes:
    """A TOC tar whose one entry claims ``uncompressed`` bytes, in ``members`` gzip members."""
    info = tarfile.TarInfo("stargz.index.json")
    info.size = uncompressed
    per_member, out = uncompressed // members, io.BytesIO()
    header = info.tobuf(tarfile.USTAR_FORMAT)
    zero = bytes(1 << 20)
    for m in range(members):
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        out.write(c.compress(header if m == 0 else b""))
        for start in range(0, per_member, len(zero)):
            out.write(c.compress(zero[: min(len(zero), per_member - start)]))
        out.write(c.flush())
    return out.getvalue()


def test_toc_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estargz, "MAX_TOC_SIZE", 8 << 20)  # the real limit, just cheaper to test
    member = _bomb((8 << 20) + (1 << 20))
    assert len(member) < 1 << 20  # small on the wire, 9 MiB inflated
    with pytest.raises(LayerIndexError, match=r"layer L.*more than 8 MiB"):
        read(BytesBlob(_blob_with_toc_member(member)))


def test_toc_bomb_over_many_members_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estargz, "MAX_TOC_SIZE", 1 << 20)
    monkeypatch.setattr(estargz, "_TAR_SLACK", 0)
    monkeypatch.setattr(estargz, "_INFLATE_STEP", 4096)
    seen: list[int] = []
    real = estargz._inflate_member

    def spy(member, data, out, limit):  # type: ignore[no-untyped-def]
        ok = real(member, data, out, limit)
        seen.append(len(out))
        return ok

    monkeypatch.setattr(estargz, "_inflate_member", spy)
    with pytest.raises(LayerIndexError, match="more than"):
        read(BytesBlob(_blob_with_toc_member(_bomb(8 << 20, members=16))))
    assert max(seen) == (1 << 20) + 1  # inflation stopped one byte past the limit
