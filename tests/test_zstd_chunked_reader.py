"""The zstd:chunked reader on synthetic blobs built here, byte by byte.

:func:`chunked_blob` writes a real ``tar+zstd`` stream (tar headers in frames of their own,
every file chunk in a frame), then the TOC, the tar-split and the footer in skippable frames,
in either dialect and with either TOC key set. The whole read path runs through
:class:`BytesBlob` and is checked with ``assert_index_matches_tar``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import struct
import tarfile
import time
import tracemalloc
from dataclasses import dataclass

import pytest
import trio
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.errors import DigestMismatch, LayerIndexError
from lazyfs.formats.model import CODEC_ZEROS, CODEC_ZSTD, EntryType
from lazyfs.formats.toc import MAX_TOC_SIZE, TAIL_SIZE
from lazyfs.formats.zstd_chunked import (
    ZstdChunkedFooter,
    footer_from_annotations,
    parse_zstd_chunked_footer,
    read_tar_split,
    read_zstd_chunked,
    read_zstd_chunked_index,
)
from lazyfs.oci.blobs import BytesBlob
from tests.harness.images import Entry, tar_layer
from tests.harness.indexcheck import assert_index_matches_tar

SKIP = 0x184D2A50
CUR = "io.github.containers.zstd-chunked."
OLD = "io.containers.zstd-chunked."
TAR_SPLIT = b'{"type":2,"payload":"aGVhZGVy","position":0}\n{"type":1,"name":"x","size":5}\n'
_Z = zstandard.ZstdCompressor(level=3)


# ---------------------------------------------------------------- building blobs


def skippable(data: bytes) -> bytes:
    return struct.pack("<II", SKIP, len(data)) + data


def current_footer(toc: tuple[int, int, int], ts: tuple[int, int, int] = (0, 0, 0), kind=1):
    return struct.pack("<7Q8s", toc[0], toc[1], toc[2], kind, *ts, b"GNUlInUx")


def legacy_footer(toc: tuple[int, int, int], kind=1):
    return struct.pack("<4Q8s", *toc, kind, b"GnUlInUx")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass
class Built:
    """A synthetic zstd:chunked blob and everything a test checks it against."""

    data: bytes
    tar: bytes
    annotations: dict[str, str]
    toc: dict
    footer: ZstdChunkedFooter


_TOC_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def toc_entry(info: tarfile.TarInfo, keys: str) -> dict:
    """The metadata part of a TOC entry for ``info`` in the ``storage`` or ``estargz`` keys."""
    e = {"type": _TOC_TYPES[info.type], "name": info.name, "mode": info.mode}
    e.update(uid=info.uid, gid=info.gid, size=info.size, modtime=rfc3339(int(info.mtime)))
    if info.linkname:
        e["linkName"] = info.linkname
    if info.ischr() or info.isblk():
        e.update(devMajor=info.devmajor, devMinor=info.devminor)
    xattrs = {
        k[13:]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
        for k, v in info.pax_headers.items()
        if k.startswith("SCHILY.xattr.")
    }
    if xattrs:
        e["xattrs"] = xattrs
    if keys == "storage":
        e.update(accesstime="0001-01-01T00:00:00Z", changetime="0001-01-01T00:00:00Z")
    else:
        e.update(userName=info.uname, groupName=info.gname)
    return e


def chunked_blob(
    entries: list[Entry],
    *,
    dialect: str = "current",
    keys: str = "storage",
    chunk_size: int = 0,
    tar_split: bytes | None = TAR_SPLIT,
    toc_extra: dict | None = None,
    compressed_toc: bytes | None = None,
) -> Built:
    """A zstd:chunked blob of ``entries``.

    ``chunk_size``: files larger than this are split into chunks of that size (a chunk of
    zeros becomes ``chunkType: zeros`` with the storage keys). The TOC gets ``toc_extra``
    merged in; ``compressed_toc`` replaces the compressed TOC bytes (for bombs).
    """
    tar = tar_layer(entries)
    out = bytearray()
    toc_entries = []
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for info in tf:
            payload = tar[info.offset_data : info.offset_data + info.size]
            if not info.isreg() or not payload:
                toc_entries.append(toc_entry(info, keys))
                continue
            out += _Z.compress(tar[pos : info.offset_data])
            toc_entries.extend(file_entries(info, payload, out, keys, chunk_size))
            pos = info.offset_data + info.size
    out += _Z.compress(tar[pos:])
    toc: dict = {"version": 1, "entries": toc_entries}
    has_ts = dialect == "current" and tar_split is not None
    zts = _Z.compress(tar_split) if has_ts else b""
    if has_ts:
        toc["tarSplitDigest"] = sha(zts)
    toc.update(toc_extra or {})
    toc_json = json.dumps(toc).encode()
    ztoc = compressed_toc if compressed_toc is not None else _Z.compress(toc_json)
    toc_pos = (len(out) + 8, len(ztoc), len(toc_json))
    out += skippable(ztoc)
    ts_pos = (len(out) + 8, len(zts), len(tar_split or b"")) if has_ts else (0, 0, 0)
    if has_ts:
        out += skippable(zts)
    prefix = CUR if dialect == "current" else OLD
    annotations = {
        prefix + "manifest-checksum": sha(ztoc),
        prefix + "manifest-position": "{}:{}:{}:1".format(*toc_pos),
    }
    if dialect == "current":
        out += skippable(current_footer(toc_pos, ts_pos))
        if has_ts:
            annotations[CUR + "tarsplit-position"] = "{}:{}:{}".format(*ts_pos)
    else:
        out += skippable(legacy_footer(toc_pos))
    footer = ZstdChunkedFooter(*toc_pos, *ts_pos, dialect=dialect)
    return Built(bytes(out), tar, annotations, toc, footer)


def file_entries(
    info: tarfile.TarInfo, payload: bytes, out: bytearray, keys: str, chunk_size: int
) -> list[dict]:
    """Compress a file's payload into ``out`` (a frame per chunk); its TOC entries."""
    step = chunk_size or len(payload)
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]
    raws = []
    for k, piece in enumerate(pieces):
        raw = toc_entry(info, keys) if k == 0 else {"type": "chunk", "name": info.name}
        start = len(out)
        out += _Z.compress(piece)
        raw["offset"] = start
        if k:
            raw["chunkOffset"] = k * step
        if len(pieces) > 1:
            raw.update(chunkSize=len(piece), chunkDigest=sha(piece))
            if keys == "storage":
                raw["endOffset"] = len(out)
                if not piece.strip(b"\0"):
                    raw["chunkType"] = "zeros"
        raws.append(raw)
    raws[0]["digest"] = sha(payload)
    if keys == "storage":
        raws[0]["endOffset"] = len(out)
    return raws


def every_kind() -> list[Entry]:
    return [
        Entry("etc", "dir", mode=0o750, uid=3, gid=4),
        Entry("etc/empty"),
        Entry("etc/hosts", data=b"127.0.0.1 localhost\n", xattrs={"user.k": b"v\x01"}),
        Entry("etc/hosts.hl", "hardlink", linkname="etc/hosts"),
        Entry("etc/link", "symlink", linkname="hosts"),
        Entry("dev/null", "char", devmajor=1, devminor=3),
        Entry("dev/sda", "block", devmajor=8, devminor=0),
        Entry("run/fifo", "fifo"),
        Entry("etc/.wh.gone"),
        Entry("d" * 120 + "/" + "f" * 150, data=b"long name\n"),
    ]


def big_file() -> bytes:
    """12 KiB: 4 KiB of text, 4 KiB of zeros, 4 KiB of text again."""
    text = bytes((i * 31 + i // 7) % 251 for i in range(4096))
    return text + bytes(4096) + text[::-1]


class CountingBlob(BytesBlob):
    """A :class:`BytesBlob` that counts the requests a reader makes."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.requests += 1
        return await super().read(offset, length)

    async def read_ranges(self, ranges):
        self.requests += 1
        return await super().read_ranges(ranges)


def read(built: Built, **kw):
    """``read_zstd_chunked`` of ``built`` (annotations unless given); returns (result, blob)."""
    blob = CountingBlob(built.data)
    kw.setdefault("annotations", built.annotations)
    result = trio.run(lambda: read_zstd_chunked(blob, layer="test", **kw))
    return result, blob


def check_against_tar(built: Built, index, *, owner_names: bool = False) -> int:
    blob = BytesBlob(built.data)
    return trio.run(
        lambda: assert_index_matches_tar(blob, index, built.tar, check_owner_names=owner_names)
    )


# ---------------------------------------------------------------- footers


def test_current_footer_parsed():
    tail = b"x" * 100 + skippable(current_footer((500, 40, 90), (548, 20, 70)))
    footer = parse_zstd_chunked_footer(tail, 1000)
    assert footer == ZstdChunkedFooter(500, 40, 90, 548, 20, 70, "current")
    assert footer.data_end == 492 and footer.has_tar_split


def test_legacy_footer_parsed():
    tail = skippable(legacy_footer((8, 40, 90)))
    blob_size = 8 + 40 + len(tail)
    footer = parse_zstd_chunked_footer(tail, blob_size)
    assert footer == ZstdChunkedFooter(8, 40, 90, dialect="legacy")
    assert not footer.has_tar_split


@pytest.mark.parametrize(
    "tail",
    [b"", b"G", b"nUx", b"\0" * 200, b"GNUlInU", skippable(legacy_footer((8, 4, 9)))[:-1]],
)
def test_no_magic_means_no_footer(tail):
    assert parse_zstd_chunked_footer(tail, 10_000) is None


def test_magic_with_a_cut_footer_is_an_error():
    tail = skippable(current_footer((8, 4, 9)))[-50:]
    with pytest.raises(LayerIndexError, match="cut short"):
        parse_zstd_chunked_footer(tail, 10_000)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (struct.pack("<II", SKIP, 40) + current_footer((8, 4, 9)), "skippable frame of 40"),
        (struct.pack("<II", 0xFD2FB528, 64) + current_footer((8, 4, 9)), "not in a zstd skip"),
        # A fork's 48-byte footer: 8 more bytes before the legacy layout.
        (struct.pack("<II", SKIP, 48) + b"\0" * 8 + legacy_footer((8, 4, 9)), "not in a zstd"),
    ],
    ids=["wrong-length", "not-skippable", "48-byte-footer"],
)
def test_footer_outside_its_own_skippable_frame_is_refused(frame, message):
    with pytest.raises(LayerIndexError, match=message):
        parse_zstd_chunked_footer(b"\0" * 100 + frame, 10_000)


def test_another_skippable_magic_is_accepted():
    frame = struct.pack("<II", SKIP + 7, 40) + legacy_footer((8, 4, 9))
    assert parse_zstd_chunked_footer(frame, 1000).toc_length == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"toc": (8, 4, 9), "kind": 2}, "manifest type 2"),
        ({"toc": (8, 0, 9)}, "TOC is empty"),
        ({"toc": (8, 4, 0)}, "TOC is empty"),
        ({"toc": (4, 4, 9)}, "does not fit"),
        ({"toc": (900, 100, 9)}, "does not fit"),
        ({"toc": (2**64 - 1, 2**64 - 1, 9)}, "does not fit"),
        ({"toc": (8, 4, 9), "ts": (900, 100, 9)}, "tar-split at 900"),
        ({"toc": (8, 4, 9), "ts": (20, 4, 0)}, "decompresses to nothing"),
        ({"toc": (8, 40, 9), "ts": (20, 4, 9)}, "overlap"),
    ],
)
def test_footer_values_that_cannot_be_are_refused(values, message):
    tail = skippable(
        current_footer(values["toc"], values.get("ts", (0, 0, 0)), values.get("kind", 1))
    )
    with pytest.raises(LayerIndexError, match=message):
        parse_zstd_chunked_footer(tail, 1000)


def test_zero_length_tar_split_means_none():
    tail = skippable(current_footer((8, 4, 9), (77, 0, 5)))
    assert parse_zstd_chunked_footer(tail, 1000) == ZstdChunkedFooter(8, 4, 9)


def footer_like_tails():
    """Tails ending in a plausible footer frame with arbitrary values, or arbitrary bytes."""
    u64 = st.integers(0, 2**64 - 1) | st.integers(0, 5000)
    current = st.builds(
        lambda a, b, c, k, d, e, f: skippable(
            struct.pack("<7Q8s", a, b, c, k, d, e, f, b"GNUlInUx")
        ),
        u64,
        u64,
        u64,
        st.sampled_from([1, 1, 0, 2]),
        u64,
        u64,
        u64,
    )
    legacy = st.builds(
        lambda a, b, c, k: skippable(struct.pack("<4Q8s", a, b, c, k, b"GnUlInUx")),
        u64,
        u64,
        u64,
        st.sampled_from([1, 1, 3]),
    )
    framed = st.tuples(st.binary(max_size=64), current | legacy).map(lambda t: t[0] + t[1])
    cut = framed.flatmap(lambda t: st.integers(0, len(t)).map(lambda n: t[n:]))
    return st.binary(max_size=200) | framed | cut


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(tail=footer_like_tails(), extra=st.integers(0, 10_000))
def test_arbitrary_tails_give_a_footer_none_or_layer_index_error(tail, extra):
    blob_size = len(tail) + extra
    try:
        footer = parse_zstd_chunked_footer(tail, blob_size)
    except LayerIndexError:
        return
    if footer is not None:
        assert footer.toc_offset >= 8
        assert footer.toc_offset + footer.toc_length <= blob_size - 48
        assert footer.toc_length > 0 and footer.toc_uncompressed > 0
        if footer.has_tar_split:
            assert footer.tarsplit_offset + footer.tarsplit_length <= blob_size - 72


# ---------------------------------------------------------------- annotations


def test_annotations_current_keys_first():
    ann = {
        OLD + "manifest-position": "8:4:9:1",
        CUR + "manifest-position": "100:50:500:1",
        CUR + "tarsplit-position": "158:10:40",
    }
    assert footer_from_annotations(ann, 1000) == ZstdChunkedFooter(100, 50, 500, 158, 10, 40)


def test_annotations_legacy_keys():
    ann = {OLD + "manifest-position": "8:4:9:1", CUR + "tarsplit-position": "158:10:40"}
    assert footer_from_annotations(ann, 1000) == ZstdChunkedFooter(8, 4, 9, dialect="legacy")


def test_no_position_annotation_means_none():
    assert footer_from_annotations({OLD + "manifest-checksum": sha(b"")}, 1000) is None
    assert footer_from_annotations({}, 1000) is None


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (CUR + "manifest-position", "8:4:9"),
        (CUR + "manifest-position", "8:4:9:1:0"),
        (CUR + "manifest-position", "8:4:9:2"),
        (CUR + "manifest-position", "8:-4:9:1"),
        (CUR + "manifest-position", "8: 4:9:1"),
        (CUR + "manifest-position", "8:4_0:9:1"),
        (CUR + "manifest-position", "8:x:9:1"),
        (CUR + "manifest-position", "8:950:9:1"),
        (OLD + "manifest-position", ""),
        (OLD + "manifest-position", "\u0661:4:9:1"),
        (CUR + "tarsplit-position", "50:10"),
        (CUR + "tarsplit-position", "5000:10:40"),
    ],
)
def test_malformed_position_annotation_is_named(key, value):
    ann = {CUR + "manifest-position": "8:4:9:1"} if "tarsplit" in key else {}
    ann[key] = value
    with pytest.raises(LayerIndexError, match=key.replace(".", r"\.")):
        footer_from_annotations(ann, 1000)


def test_malformed_checksum_annotation_is_named():
    built = chunked_blob(every_kind())
    ann = dict(built.annotations)
    ann[CUR + "manifest-checksum"] = "sha256:nothex"
    with pytest.raises(LayerIndexError, match="manifest-checksum"):
        read(built, annotations=ann)


# ---------------------------------------------------------------- the whole read path


@pytest.mark.parametrize("dialect", ["current", "legacy"])
def test_every_entry_kind_reads_back(dialect):
    built = chunked_blob([*every_kind(), Entry("big", data=big_file())], dialect=dialect)
    result, blob = read(built)
    index = result.index
    assert blob.requests == 1  # TOC and tar-split together
    assert (index.format, index.dialect) == ("zstd:chunked", dialect)
    assert index.blob_size == len(built.data) and index.blob_digest == blob.digest
    assert index.index_size == built.footer.toc_uncompressed
    assert result.footer == built.footer
    assert result.tar_split == (TAR_SPLIT if dialect == "current" else None)
    assert check_against_tar(built, index) == 5
    types = {e.path: e.type for e in index.entries}
    assert types["etc/hosts.hl"] == EntryType.HARDLINK
    assert types["etc/.wh.gone"] == EntryType.REG


def test_chunked_file_with_zeros_chunk():
    entries = [Entry("a", data=b"first\n"), Entry("big", data=big_file()), Entry("z", data=b"z")]
    built = chunked_blob(entries, chunk_size=1024)
    index = read(built)[0].index
    big = next(e for e in index.entries if e.path == "big")
    assert len(big.chunks) == 12
    assert [c.codec for c in big.chunks] == [CODEC_ZSTD] * 4 + [CODEC_ZEROS] * 4 + [CODEC_ZSTD] * 4
    assert [c.file_offset for c in big.chunks] == list(range(0, 12 * 1024, 1024))
    assert all(c.blob_length == 0 for c in big.chunks if c.codec == CODEC_ZEROS)
    assert check_against_tar(built, index) == 3


def test_estargz_keys_in_a_legacy_blob():
    entries = [*every_kind(), Entry("big", data=big_file(), uname="ann", gname="grp")]
    built = chunked_blob(entries, dialect="legacy", keys="estargz", chunk_size=5000)
    index = read(built)[0].index
    assert index.dialect == "legacy, estargz keys"
    assert check_against_tar(built, index, owner_names=True) == 5


def test_footer_only_fetches_the_tail_once():
    built = chunked_blob(every_kind())
    result, blob = read(built, annotations={})
    assert blob.requests == 1  # the tail, which holds the TOC
    assert result.index.dialect == "current" and result.tar_split == TAR_SPLIT
    check_against_tar(built, result.index)


def test_given_tail_holding_the_toc_needs_no_request():
    built = chunked_blob(every_kind(), dialect="legacy")
    tail = built.data[-TAIL_SIZE:]
    for ann in (built.annotations, {}):
        result, blob = read(built, annotations=ann, tail=tail)
        assert blob.requests == 0
        assert result.index.dialect == "legacy"


def test_toc_outside_the_tail_is_fetched_in_one_request():
    pad = random.Random(0).randbytes(100_000).hex()  # a TOC of ~100 KB compressed
    built = chunked_blob(every_kind(), toc_extra={"pad": pad})
    assert built.footer.data_end < len(built.data) - TAIL_SIZE
    result, blob = read(built, annotations={})
    assert blob.requests == 2  # the tail, then TOC and tar-split together
    assert result.tar_split == TAR_SPLIT
    check_against_tar(built, result.index)


def test_annotations_win_over_a_lying_footer():
    built = chunked_blob(every_kind(), dialect="legacy")
    # The same blob with a footer pointing at nonsense: annotations are used, not the footer.
    bad = built.data[:-40] + legacy_footer((8, 1, 1))
    blob = BytesBlob(bad)
    index = trio.run(
        lambda: read_zstd_chunked_index(blob, annotations=built.annotations, layer="t")
    )
    assert len(index.entries) == len(built.toc["entries"])


def test_not_zstd_chunked_at_all():
    blob = BytesBlob(_Z.compress(b"plain tar+zstd" * 100))
    with pytest.raises(LayerIndexError, match="no zstd:chunked annotations and no"):
        trio.run(lambda: read_zstd_chunked_index(blob, annotations={}, layer="t"))


# ---------------------------------------------------------------- verification


def test_manifest_checksum_mismatch():
    built = chunked_blob(every_kind())
    for prefix in (CUR, OLD):
        ann = dict(built.annotations)
        ann[prefix + "manifest-checksum"] = sha(b"something else")
        with pytest.raises(DigestMismatch, match="compressed TOC"):
            read(built, annotations=ann)


def test_tampered_toc_bytes_are_caught():
    built = chunked_blob(every_kind())
    at = built.footer.toc_offset + 10
    tampered = bytearray(built.data)
    tampered[at] ^= 0xFF
    blob = BytesBlob(bytes(tampered))
    with pytest.raises(DigestMismatch):
        trio.run(lambda: read_zstd_chunked(blob, annotations=built.annotations, layer="t"))


def test_estargz_toc_digest_checked_against_the_uncompressed_toc():
    built = chunked_blob(every_kind(), dialect="legacy")
    toc_json = json.dumps(built.toc).encode()
    ann = dict(built.annotations)
    ann["containerd.io/snapshot/stargz/toc.digest"] = sha(toc_json)
    read(built, annotations=ann)
    ann["containerd.io/snapshot/stargz/toc.digest"] = sha(toc_json + b" ")
    with pytest.raises(DigestMismatch, match=r"toc\.digest"):
        read(built, annotations=ann)


def test_tar_split_digest_in_the_toc_must_match():
    built = chunked_blob(every_kind(), toc_extra={"tarSplitDigest": sha(b"other")})
    with pytest.raises(DigestMismatch, match="tarSplitDigest"):
        read(built)


def test_tar_split_checksum_annotation_must_match():
    built = chunked_blob(every_kind())
    ann = dict(built.annotations)
    ann[CUR + "tarsplit-checksum"] = sha(b"other")
    with pytest.raises(DigestMismatch, match="tar-split"):
        read(built, annotations=ann)


def test_read_tar_split():
    built = chunked_blob(every_kind())
    blob = BytesBlob(built.data)
    digest = built.toc["tarSplitDigest"]
    got = trio.run(lambda: read_tar_split(blob, built.footer, expected=digest))
    assert got == TAR_SPLIT
    with pytest.raises(DigestMismatch):
        trio.run(lambda: read_tar_split(blob, built.footer, expected=sha(b"x")))
    legacy = chunked_blob(every_kind(), dialect="legacy")
    with pytest.raises(LayerIndexError, match="no tar-split"):
        trio.run(lambda: read_tar_split(BytesBlob(legacy.data), legacy.footer))


def test_toc_frame_header_must_match_the_position():
    built = chunked_blob(every_kind(), dialect="legacy")
    off, length, raw = (
        built.footer.toc_offset,
        built.footer.toc_length,
        built.footer.toc_uncompressed,
    )
    ann = dict(built.annotations)
    ann[OLD + "manifest-position"] = f"{off - 1}:{length}:{raw}:1"
    with pytest.raises(LayerIndexError, match="TOC is not in a zstd skippable frame"):
        read(built, annotations=ann)


def test_toc_that_is_not_zstd():
    built = chunked_blob(every_kind(), compressed_toc=b"definitely not zstd")
    with pytest.raises(LayerIndexError, match="TOC is not valid zstd"):
        read(built)


@pytest.mark.parametrize(
    ("toc_json", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"version":1}', "no list of entries"),
        (b"[1, 2]", "no list of entries"),
        (b'{"entries":[{"name":"../x","type":"reg"}]}', "'..' component"),
    ],
)
def test_bad_toc_contents(toc_json, message):
    built = chunked_blob(every_kind(), dialect="legacy", compressed_toc=_Z.compress(toc_json))
    off, length = built.footer.toc_offset, built.footer.toc_length
    ann = dict(built.annotations)
    ann[OLD + "manifest-position"] = f"{off}:{length}:{len(toc_json)}:1"
    with pytest.raises(LayerIndexError, match=message):
        read(built, annotations=ann)


def test_toc_shorter_than_declared():
    built = chunked_blob(every_kind(), compressed_toc=_Z.compress(b'{"entries":[]}'))
    with pytest.raises(LayerIndexError, match="decompresses to only 14 bytes"):
        read(built)


def test_a_frame_after_a_toc_of_the_declared_size_is_refused():
    """The first frame alone matches the declared size; what follows it still counts."""
    toc_json = json.dumps({"version": 1, "entries": []}).encode()
    two = _Z.compress(toc_json) + _Z.compress(b" more")
    built = chunked_blob(every_kind(), dialect="legacy", compressed_toc=two)
    off, length = built.footer.toc_offset, built.footer.toc_length
    ann = dict(built.annotations)
    ann[OLD + "manifest-position"] = f"{off}:{length}:{len(toc_json)}:1"
    with pytest.raises(LayerIndexError, match="decompresses to more bytes"):
        read(built, annotations=ann)


def test_toc_decompression_bomb_is_refused_without_inflating_it():
    bomb = zstandard.ZstdCompressor(level=1).compress(b" " * (64 << 20))
    built = chunked_blob(every_kind(), dialect="legacy", compressed_toc=bomb)
    tracemalloc.start()
    try:
        with pytest.raises(LayerIndexError, match="decompresses to more bytes"):
            read(built)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_toc_declared_above_the_limit_is_refused_before_decompressing():
    built = chunked_blob(every_kind(), dialect="legacy")
    off, length = built.footer.toc_offset, built.footer.toc_length
    ann = dict(built.annotations)
    ann[OLD + "manifest-position"] = f"{off}:{length}:{MAX_TOC_SIZE + 1}:1"
    with pytest.raises(LayerIndexError, match=f"more than the {MAX_TOC_SIZE} accepted"):
        read(built, annotations=ann)
