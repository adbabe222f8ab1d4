"""The zstd:chunked writer: what it writes decompresses to the original tar, reads back
through its own index byte for byte, and carries a tar-split that rebuilds the tar."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import struct
import subprocess
import tarfile

import fastcrc
import orjson
import pytest
import trio
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.errors import LayerIndexError
from lazyfs.formats.detect import find_layer_index
from lazyfs.formats.model import CODEC_ZEROS
from lazyfs.formats.zstd_chunked import read_zstd_chunked_index
from lazyfs.formats.zstd_chunked_writer import PREFETCH_ANNOTATION, write_zstd_chunked
from lazyfs.oci import mediatypes
from lazyfs.oci.blobs import BytesBlob
from tests.harness.images import Entry, tar_layer
from tests.harness.indexcheck import assert_index_matches_tar, tar_members


def convert(tmp_path, tar: bytes, **kw):
    src = tmp_path / "in.tar"
    src.write_bytes(tar)
    result = write_zstd_chunked(src, tmp_path / "out.zst", **kw)
    return result, (tmp_path / "out.zst").read_bytes()


def index_of(blob: bytes, annotations=None):
    return trio.run(
        lambda: read_zstd_chunked_index(
            BytesBlob(blob), annotations=annotations or {}, layer="test"
        )
    )


def every_kind() -> list[Entry]:
    return [
        Entry("dir", "dir", mode=0o1777, uid=5, gid=6, uname="u", gname="g"),
        Entry("dir/empty"),
        Entry("dir/small", data=b"small\n", mode=0o4755),
        Entry("dir/big", data=bytes(range(256)) * 1200),  # 300 KiB: several chunks
        Entry("dir/hard", "hardlink", linkname="dir/big"),
        Entry("dir/sym", "symlink", linkname="../elsewhere"),
        Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        Entry("dev/sda", "block", devmajor=8, devminor=0),
        Entry("fifo", "fifo"),
        Entry("x" * 120 + "/" + "y" * 150, data=b"long name"),
        Entry("ünïcødé", data=b"utf-8 name"),
        Entry("attrs", data=b"x", xattrs={"user.bin": b"\x00\xff\x10", "user.text": b"hello"}),
        Entry(".wh.gone"),
        Entry("opq/.wh..wh..opq"),
    ]


def test_round_trip_every_kind(tmp_path):
    tar = tar_layer(every_kind())
    result, blob = convert(tmp_path, tar, chunk_size=64 * 1024)
    assert (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
        == tar
    )
    assert result.diff_id.hex == hashlib.sha256(tar).hexdigest()
    assert result.digest.hex == hashlib.sha256(blob).hexdigest()
    # Found both from the annotations and from the footer alone.
    for given_annotations in (result.annotations, {}):
        index = index_of(blob, given_annotations)
        assert index.format == "zstd:chunked"
        assert trio.run(assert_index_matches_tar, BytesBlob(blob), index, tar) == 8
    big = next(e for e in index.entries if e.path == "dir/big")
    assert len(big.chunks) == 5 and all(c.blob_length > 0 for c in big.chunks)


def test_tar_split_rebuilds_the_tar(tmp_path):
    tar = tar_layer(every_kind())
    result, blob = convert(tmp_path, tar, chunk_size=64 * 1024)
    offset, length, size = (
        int(x)
        for x in result.annotations["io.github.containers.zstd-chunked.tarsplit-position"].split(
            ":"
        )
    )
    raw = zstandard.ZstdDecompressor().decompress(
        blob[offset : offset + length], max_output_size=size
    )
    contents = {info.name: data for info, data in tar_members(tar).values()}
    rebuilt = bytearray()
    for position, line in enumerate(raw.splitlines()):
        record = orjson.loads(line)
        assert record["position"] == position
        if record["type"] == 2:
            rebuilt += base64.b64decode(record["payload"])
        else:
            assert record["type"] == 1
            data = contents[record["name"]] if record.get("size") else b""
            if data:
                crc = struct.unpack(">Q", base64.b64decode(record["payload"]))[0]
                assert crc == fastcrc.crc64.go_iso(data)
            rebuilt += data
    assert bytes(rebuilt) == tar


def test_prioritized_files_come_first_and_the_boundary_is_recorded(tmp_path):
    entries = [Entry(f"f{i}", data=bytes([i]) * 5000) for i in range(10)]
    entries.append(Entry("link9", "hardlink", linkname="f9"))
    tar = tar_layer(entries)
    result, blob = convert(tmp_path, tar, prioritize=["f7", "/f3", "link9", "missing"])
    assert result.annotations[PREFETCH_ANNOTATION] == str(result.prefetch_offset)
    out_tar = (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    )
    with tarfile.open(fileobj=io.BytesIO(out_tar)) as tf:
        names = tf.getnames()
    assert names[:4] == ["f7", "f3", "f9", "link9"]
    assert sorted(names) == sorted(e.name for e in entries)
    assert result.diff_id.hex == hashlib.sha256(out_tar).hexdigest()
    index = index_of(blob)  # from the footer: the boundary is found in the TOC
    assert index.prefetch_offset == result.prefetch_offset
    for e in index.entries:
        if e.chunks:
            first = e.chunks[0].blob_offset < index.prefetch_offset
            assert first == (e.path in ("f7", "f3", "f9")), e.path


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_sparse_files(tmp_path, fmt):
    if shutil.which("tar") is None:
        pytest.fail("GNU tar is needed")
    work = tmp_path / "tree"
    work.mkdir()
    sparse = work / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(3 * 1024 * 1024)
        f.seek(100_000)
        f.write(b"A" * 70_000)
        f.seek(2 * 1024 * 1024)
        f.write(b"B" * 10)
    (work / "plain").write_bytes(b"plain")
    archive = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", f"--format={fmt}", "-S", "-cf", str(archive), "-C", str(work), "sparse", "plain"],
        check=True,
    )
    tar = archive.read_bytes()
    _, blob = convert(tmp_path, tar, chunk_size=16 * 1024)
    assert (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
        == tar
    )
    index = index_of(blob)
    entry = next(e for e in index.entries if e.path == "sparse")
    assert entry.size == 3 * 1024 * 1024
    assert any(c.codec == CODEC_ZEROS for c in entry.chunks)
    from tests.harness.indexcheck import read_entry

    assert trio.run(read_entry, BytesBlob(blob), entry) == sparse.read_bytes()
    # The stored bytes are far fewer than the file's size.
    assert sum(c.blob_length for c in entry.chunks) < 100_000


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/abs/../../etc/passwd"])
def test_hostile_names_are_refused(tmp_path, name):
    info = tarfile.TarInfo(name)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(LayerIndexError, match="layer"):
        convert(tmp_path, buf.getvalue())


def test_not_a_tar(tmp_path):
    with pytest.raises(LayerIndexError):
        convert(tmp_path, b"this is not a tar archive" * 100)


# A random tree: names from a small alphabet, nested, files of random sizes, links.
_names = st.text(alphabet="abcxyz_-.0", min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)


@st.composite
def trees(draw):
    entries: list[Entry] = []
    files: list[str] = []
    dirs = [""]
    for _ in range(draw(st.integers(1, 25))):
        parent = draw(st.sampled_from(dirs))
        path = f"{parent}/{draw(_names)}".lstrip("/")
        if any(e.name == path for e in entries) or any(path.startswith(f"{f}/") for f in files):
            continue
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink", "hardlink"]))
        if kind == "hardlink" and not files:
            kind = "file"
        if kind == "file":
            size = draw(st.sampled_from([0, 1, 511, 512, 4096, 70_000, 200_000]))
            seed = draw(st.integers(0, 255))
            data = bytes((seed + i * 31) % 256 for i in range(size))
            entries.append(
                Entry(path, data=data, mode=draw(st.sampled_from([0o644, 0o755, 0o600])))
            )
            files.append(path)
        elif kind == "dir":
            entries.append(Entry(path, "dir"))
            dirs.append(path)
        elif kind == "symlink":
            entries.append(Entry(path, "symlink", linkname=draw(_names)))
        else:
            entries.append(Entry(path, "hardlink", linkname=draw(st.sampled_from(files))))
    return entries


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=trees(), chunk_size=st.sampled_from([4096, 16384, 65536]))
def test_property_random_trees_read_back(tmp_path, tree, chunk_size):
    tar = tar_layer(tree)
    result, blob = convert(tmp_path, tar, chunk_size=chunk_size)
    assert result.entries == len(tree)

    async def check():
        found = await find_layer_index(
            BytesBlob(blob), media_type=mediatypes.OCI_LAYER_ZSTD, annotations={}
        )
        assert found is not None
        await assert_index_matches_tar(BytesBlob(blob), found, tar)

    trio.run(check)


def test_reading_the_index_fetches_the_toc_but_not_the_tar_split(tmp_path):
    result, blob = convert(tmp_path, tar_layer(every_kind()), chunk_size=64 * 1024)
    reader = BytesBlob(blob)
    index = trio.run(
        lambda: read_zstd_chunked_index(reader, annotations=result.annotations, layer="t")
    )
    assert index.entries
    _, toc_length, _, _ = result.annotations[
        "io.github.containers.zstd-chunked.manifest-position"
    ].split(":")
    assert reader.bytes_read == int(toc_length) + 8  # the TOC's skippable frame, no more
