"""Round trips of ``lazyfs convert`` through a real registry, skopeo and umoci.

An image with every tar entry type and every whiteout case is pushed (gzip, zstd,
uncompressed, Docker schema 2; a multi-platform index; an OCI layout), converted to
zstd:chunked by lazyfs, and both the original and the converted image are pulled by skopeo
and unpacked by umoci. The two root file systems must be the same, node for node: type,
mode, owner, mtime, size, content, symlink target, device numbers, xattrs, hardlink groups.

umoci 0.4.7 cannot unpack zstd layers, so skopeo recompresses those to gzip on the way
(``--dest-compress-format gzip``); it changes only the compression, and umoci checks every
layer against the config's diff IDs, so a successful unpack also means the converted
config's diff IDs are right.

The sparse files come from GNU tar itself (``--format=gnu`` writes old GNU sparse members,
type ``S`` with extension blocks; ``--format=posix`` writes PAX 1.0 sparse members, see
:func:`test_what_gnu_tar_wrote`), inserted into the image as raw layer tars. umoci 0.4.7
refuses type ``S`` ("unknown typeflag"), so the GNU layer is unpacked by GNU tar instead.

Two tests pin down bugs found here and since fixed: ``--prioritize`` moving a file ahead of
what its path needs, and names that are not UTF-8 (refused with a clear error).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import zstandard

from lazyfs.convert import ConvertOptions, ConvertReport, convert_image
from lazyfs.formats.annotations import (
    ZSTD_CHUNKED_MANIFEST_CHECKSUM,
    ZSTD_CHUNKED_MANIFEST_POSITION,
    ZSTD_CHUNKED_TARSPLIT_POSITION,
)
from lazyfs.oci import mediatypes
from lazyfs.oci.digest import Digest
from lazyfs.oci.platform import Platform
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.images import BuiltImage, Entry, build_image, push_image, push_index
from tests.harness.rich import CHUNK, DEEP_NAME, LONG_NAME, T0, MiB, noise, rich_layers
from tests.harness.trees import Tree, assert_same_tree, compare_trees, snapshot_tree

for _tool in ("skopeo", "umoci", "tar"):  # scripts/test installs them: missing is a broken set-up
    if shutil.which(_tool) is None:
        pytest.fail(f"{_tool} is missing; run scripts/test", pytrace=False)

GNU_LONG_NAME = "sparse-gnu/" + "g" * 130  # GNU tar writes a ././@LongLink record


def _sparse_file(path: Path, size: int, pieces: list[tuple[int, bytes]], mtime_ns: int) -> None:
    """A sparse file: truncated to ``size``, with ``pieces`` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


@dataclass
class Source:
    layers: list[list[Entry] | bytes]
    sparse: dict[str, bytes]  # path in the image -> content of the sparse files
    gnu_tar: bytes
    posix_tar: bytes


def gnu_tar_layers(work: Path) -> tuple[bytes, bytes, dict[str, bytes]]:
    """Two layer tars written by GNU tar: ``--format=gnu`` and ``--format=posix``, with -S."""
    contents = {}
    gnu = work / "sparse-gnu"
    gnu.mkdir()
    # Seven data runs (more than the 4 of the header: an extension block), one of them
    # several chunks long, and a hole at the end.
    pieces = [(0, b"head")] + [(k * 400_000, noise(5000, k)) for k in range(1, 6)]
    pieces.append((2_500_000, noise(300_000, 9)))
    _sparse_file(gnu / "holes.img", 4 * MiB, pieces, 1_650_000_000_000_000_000)
    (gnu / "dense.txt").write_bytes(b"not sparse\n")
    os.link(gnu / "holes.img", gnu / "holes.link")
    (work / GNU_LONG_NAME).write_bytes(b"long name\n")
    os.symlink("../" + GNU_LONG_NAME, gnu / "long-target")
    # The PAX layer is made from inside its root: "./", "./sparse-posix/..." as
    # `tar -C DIR .` writes them.
    posix = work / "posix-root" / "sparse-posix"
    posix.mkdir(parents=True)
    # A hole first, data at the very end.
    pieces = [(1 * MiB, noise(200_000, 11)), (5 * MiB - 7, b"the end")]
    _sparse_file(posix / "holes.img", 5 * MiB, pieces, 1_650_000_000_123_456_789)
    os.setxattr(posix / "holes.img", "user.sparse", b"\x00yes\xff")
    for path, real in (
        ("sparse-gnu/holes.img", gnu / "holes.img"),
        ("sparse-posix/holes.img", posix / "holes.img"),
    ):
        contents[path] = real.read_bytes()
        assert real.stat().st_blocks * 512 < len(contents[path]) // 2, "not sparse"
    tar = ["tar", "-S", "--sort=name", "--numeric-owner", "--owner=0", "--group=0"]
    gnu_tar = _run([*tar, "--format=gnu", "-C", str(work), "-cf", "-", "sparse-gnu"]).stdout
    posix_options = ["--format=posix", "--xattrs", "--xattrs-include=user.*"]
    posix_tar = _run([*tar, *posix_options, "-C", str(posix.parent), "-cf", "-", "."]).stdout
    return gnu_tar, posix_tar, contents


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    work = tmp_path_factory.mktemp("gnu-tar")
    gnu_tar, posix_tar, sparse = gnu_tar_layers(work)
    # umoci 0.4.7 refuses GNU sparse members (typeflag 'S'): the GNU layer has a test of
    # its own, unpacked by GNU tar; the PAX one (typeflag '0') is part of the rich image.
    # An empty layer (no member, only the end-of-archive blocks) comes before the PAX one.
    return Source([*rich_layers(), [], posix_tar], sparse, gnu_tar, posix_tar)


# ---------------------------------------------------------------- tools


def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else ""
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}:\n{err}", pytrace=False)
    return result


def skopeo_copy(src: str, dst: str, *, gzip_layers: bool = False, arch: str | None = None):
    """``skopeo copy`` from/to the plain-HTTP registry; ``gzip_layers`` recompresses."""
    cmd = ["skopeo", "--insecure-policy"]
    if arch:
        cmd += ["--override-os", "linux", "--override-arch", arch]
    cmd += ["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"]
    if gzip_layers:
        cmd += ["--dest-compress-format", "gzip", "--dest-compress"]
    _run([*cmd, src, dst])


def unpack(source: str, work: Path, *, gzip_layers: bool, arch: str | None = None) -> Path:
    """Pull ``source`` (``docker://...`` or ``oci:...``) into a layout, unpack it with umoci.

    Returns the rootfs. ``gzip_layers`` has skopeo recompress the layers (umoci 0.4.7
    cannot read zstd).
    """
    work.mkdir(parents=True)
    skopeo_copy(source, f"oci:{work}/layout:t", gzip_layers=gzip_layers, arch=arch)
    _run(["umoci", "unpack", "--image", f"{work}/layout:t", str(work / "bundle")])
    return work / "bundle" / "rootfs"


def convert(src: str, dst: str, **options) -> ConvertReport:
    async def main() -> ConvertReport:
        async with RegistryClient() as client:
            return await convert_image(
                open_store(src, client),
                open_store(dst, client, create=True),
                ConvertOptions(chunk_size=CHUNK, **options),
                NullProgress(),
            )

    return trio.run(main)


def push(ref: Reference, image: BuiltImage) -> None:
    async def main() -> None:
        async with RegistryClient() as client:
            await push_image(client, ref, image)

    trio.run(main)


@dataclass
class Pulled:
    """An image as stored: its manifest (parsed), config (bytes) and layer blobs."""

    media_type: str
    manifest: dict
    config: bytes
    layers: list[bytes]


def fetch(ref: Reference) -> Pulled:
    async def main() -> Pulled:
        async with RegistryClient() as client:
            top = await client.get_manifest(ref)
            manifest = json.loads(top.data)
            config = await client.get_blob(ref, Digest(manifest["config"]["digest"]))
            layers = [await client.get_blob(ref, Digest(d["digest"])) for d in manifest["layers"]]
            return Pulled(top.media_type, manifest, config, layers)

    return trio.run(main)


def unzstd(blob: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True) as r:
        return r.read()


def lazyfs_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    """``python -m lazyfs ARGS`` with its own (empty) HOME and docker config."""
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home)},
    )


def new_ref(registry, name: str, tag: str = "v1") -> Reference:
    return Reference.parse(f"{registry.host}/roundtrip/{name}-{uuid.uuid4().hex[:8]}:{tag}")


# ---------------------------------------------------------------- checks


def check_converted(original: Pulled, converted: Pulled, *, same_tars: bool = True) -> None:
    """The converted image is an OCI image of zstd:chunked layers with a faithful config."""
    assert converted.media_type == mediatypes.OCI_MANIFEST
    assert converted.manifest["mediaType"] == mediatypes.OCI_MANIFEST
    assert converted.manifest["config"]["mediaType"] == mediatypes.OCI_CONFIG
    assert len(converted.layers) == len(original.layers)
    diff_ids = []
    for desc, blob in zip(converted.manifest["layers"], converted.layers, strict=True):
        assert desc["mediaType"] == mediatypes.OCI_LAYER_ZSTD
        notes = desc["annotations"]
        for key in (
            ZSTD_CHUNKED_MANIFEST_CHECKSUM,
            ZSTD_CHUNKED_MANIFEST_POSITION,
            ZSTD_CHUNKED_TARSPLIT_POSITION,
        ):
            assert key in notes, (key, notes)
        offset, length, plain_length, kind = map(
            int, notes[ZSTD_CHUNKED_MANIFEST_POSITION].split(":")
        )
        toc = blob[offset : offset + length]
        assert kind == 1
        assert str(Digest.of(toc)) == notes[ZSTD_CHUNKED_MANIFEST_CHECKSUM]
        assert len(unzstd(toc)) == plain_length
        offset, length, plain_length = map(int, notes[ZSTD_CHUNKED_TARSPLIT_POSITION].split(":"))
        assert len(unzstd(blob[offset : offset + length])) == plain_length
        tar = unzstd(blob)
        diff_ids.append(str(Digest.of(tar)))
        check_toc_files(json.loads(unzstd(toc)), tar)
    old, new = json.loads(original.config), json.loads(converted.config)
    assert new["rootfs"]["diff_ids"] == diff_ids
    if same_tars:
        # Without --prioritize the layer tars are the originals, byte for byte.
        assert diff_ids == old["rootfs"]["diff_ids"]
    for key in ("history", "config"):  # Env, Cmd, Labels... live in "config"
        assert new[key] == old[key], key
    assert {k: v for k, v in new.items() if k != "rootfs"} == {
        k: v for k, v in old.items() if k != "rootfs"
    }


def check_toc_files(toc: dict, tar: bytes) -> None:
    """One TOC entry per member; a regular file's has its size and digest, and its chunks
    (data, at most CHUNK bytes, or the holes of sparse files) tile the file."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
    assert [e["name"] for e in toc["entries"] if e["type"] != "chunk"] == names
    entries = {}
    chunks: dict[str, list[dict]] = {}
    for entry in toc["entries"]:
        if entry["type"] == "reg":
            entries[entry["name"]] = entry
            chunks[entry["name"]] = [entry]
        elif entry["type"] == "chunk":
            chunks[entry["name"]].append(entry)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for info in tf:
            if not info.isreg():
                continue
            entry = entries.pop(info.name)
            data = tf.extractfile(info).read()
            assert entry.get("size", 0) == len(data), info.name
            if not data:
                continue
            assert entry["digest"] == str(Digest.of(data)), info.name
            position = holes = 0
            for chunk in chunks[info.name]:
                assert chunk.get("chunkOffset", 0) == position, info.name
                size = chunk.get("chunkSize", len(data))
                position += size
                if chunk.get("chunkType") == "zeros":
                    assert data[position - size : position] == bytes(size)
                    holes += 1
                else:
                    assert size <= CHUNK, info.name
                    piece = data[position - size : position]
                    assert chunk.get("chunkDigest", entry["digest"]) == str(Digest.of(piece))
            assert position == len(data), info.name
            assert (holes > 0) == bool(info.sparse), info.name
    assert not entries


def check_rich_tree(tree: Tree, source: Source) -> None:
    """umoci applied the layers as intended (so equal trees are not equally wrong)."""
    for gone in ("gone_file", "gone_dir", "opaque/old", "opaque/oldsub", "hl/c", "implicit/a/d"):
        assert gone not in tree, gone
    assert tree["opaque/new"].kind == "file"
    assert tree["dir2file"].kind == "file"
    assert tree["file2dir"].kind == "dir"
    assert tree["file2dir"].mode == 0o711
    assert tree["file2dir/child"].kind == "file"
    assert tree["wh_then_dir/inner"].kind == "file"
    assert tree["hl/a"].hardlinks == {"hl/a", "hl/b"}
    assert tree["implicit/a/b/c.txt"].hardlinks == {"implicit/a/b/c.txt", "implicit/a/b/c.hl"}
    assert tree["data/small.txt"].hardlinks is None
    assert tree["data/small.hl"].hardlinks is None
    assert tree["dev/null"].kind == "char" and tree["dev/null"].rdev == (1, 3)
    assert tree["dev/sda"].kind == "block" and tree["dev/sda"].rdev == (8, 0)
    assert tree["dev/nvme"].rdev == (259, 70_000)
    assert tree["dev/fifo"].kind == "fifo"
    assert tree["modes/all-special"].mode == 0o7777
    assert tree["modes/sticky"].mode == 0o1777
    assert (tree["meta"].mode, tree["meta"].uid, tree["meta"].gid) == (0o750, 1000, 1001)
    assert tree["meta"].mtime == T0 + 1000
    assert tree["meta"].xattrs == {"user.v": b"2", "user.w": b"new"}
    assert tree["xattr/file"].xattrs["user.bin"] == bytes([0, 1, 2, 255, 254, 128, 0])
    assert tree["ids/big"].uid == 3_000_000
    assert tree["times/1950"].mtime == -631_152_000
    assert tree["times/2242"].mtime == 2**33 + 1
    assert tree["times/fraction"].mtime_ns == 1_600_000_000_250_000_000
    assert tree[LONG_NAME].size == 5
    assert tree[DEEP_NAME].size == 5
    assert tree["links/long"].target == "../" + LONG_NAME
    assert tree["sparse-posix/holes.img"].xattrs == {"user.sparse": b"\x00yes\xff"}
    for path, data in source.sparse.items():
        if path.startswith("sparse-gnu/"):
            continue  # not in the image umoci unpacks
        assert tree[path].size == len(data)
        assert tree[path].sha256 == hashlib.sha256(data).hexdigest(), path


#: What two umoci unpacks of equivalent images may differ in:
IGNORE = dict(
    # umoci makes the rootfs directory itself (mode, mtime of the unpack).
    ignore_root=True,
    # Directories no tar entry describes (the implicit parents of layer 1) get the time of
    # the unpack as mtime.
    ignore=[(p, "mtime") for p in ("implicit", "implicit/a", "implicit/a/b")],
    names=("original", "converted"),
)


# ---------------------------------------------------------------- tests


def _make_tree(root: Path, *, changed: bool) -> None:
    """A small tree; ``changed`` alters one thing per node."""
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"content" + (b"!" if changed else b""))
    os.link(root / "d" / "f", root / "d" / "f.hl")
    (root / "g").write_bytes(b"g")
    if not changed:
        os.link(root / "g", root / "g.hl")
    else:
        (root / "g.hl").write_bytes(b"g")
    os.symlink("/" if changed else "..", root / "up")  # never followed
    os.mkfifo(root / "fifo", 0o600 if changed else 0o644)
    os.mknod(root / "null", 0o666 | (0o60000 if changed else 0o20000), os.makedev(1, 3))
    os.setxattr(root / "g", "user.x", b"\x00" + (b"2" if changed else b"1"))
    os.setxattr(root / "g", "security.selinux", b"host label")  # ignored by default
    (root / ("new" if changed else "old")).write_bytes(b"")
    os.chmod(root, 0o700 if changed else 0o755)
    for path in [*root.rglob("*"), root]:
        os.utime(path, ns=(0, 2_000_000_000), follow_symlinks=False)
    os.utime(root / "d", ns=(0, 1_000_000_000 + (5 if changed else 0)))


def test_trees_helper(tmp_path):
    """snapshot_tree records what it should; compare_trees tells each difference."""
    a, b = tmp_path / "a", tmp_path / "b"
    _make_tree(a, changed=False)
    _make_tree(b, changed=True)
    ta, tb = snapshot_tree(a), snapshot_tree(b)
    assert sorted(ta) == [".", "d", "d/f", "d/f.hl", "fifo", "g", "g.hl", "null", "old", "up"]
    assert ta["up"].kind == "symlink" and ta["up"].target == ".."
    assert ta["d/f"].hardlinks == {"d/f", "d/f.hl"} and ta["g"].hardlinks == {"g", "g.hl"}
    assert ta["d/f"].sha256 == hashlib.sha256(b"content").hexdigest()
    assert ta["null"].kind == "char" and ta["null"].rdev == (1, 3)
    assert ta["g"].xattrs == {"user.x": b"\x001"}
    assert ta["d"].mtime == 1 and ta["d"].mtime_ns == 1_000_000_000
    assert snapshot_tree(a, ignore_xattrs=())["g"].xattrs["security.selinux"] == b"host label"

    assert compare_trees(ta, snapshot_tree(a)) == []
    diffs = compare_trees(ta, tb, exact_mtime=True)
    text = "\n".join(diffs)
    for expected in (
        "'.': mode 0755 in a, 0700 in b",
        "'d': mtime 1000000000ns in a, 1000000005ns in b",
        "'d/f': content differs",
        "'d/f': size 7 in a, 8 in b",
        "'fifo': mode 0644 in a, 0600 in b",
        "'g': xattrs {'user.x': b'\\x001'} in a, {'user.x': b'\\x002'} in b",
        "'g': hardlinks ['g', 'g.hl'] in a, none in b",
        "'null': char in a, block in b",
        "'old': only in a",
        "'new': only in b",
        "'up': target '..' in a, '/' in b",
    ):
        assert expected in text, (expected, diffs)
    assert len(diffs) == 15, diffs  # and d/f.hl: size, content; g.hl: xattrs, hardlinks
    # Seconds only by default; the root, fields, kinds and paths can be left out.
    assert not any(d.startswith("'d': mtime") for d in compare_trees(ta, tb))
    quiet = compare_trees(
        ta,
        tb,
        ignore_root=True,
        ignore=["sha256", "size", "xattrs", "fifo:mode", ("g*", "hardlinks")],
        ignore_paths=["null", "old", "new", "up"],
    )
    assert quiet == []
    with pytest.raises(AssertionError, match=r"15 difference\(s\) between x and y:") as info:
        assert_same_tree(a, b, exact_mtime=True, limit=3, names=("x", "y"))
    assert str(info.value).endswith("... and 12 more")
    with pytest.raises(ValueError, match="unknown field"):
        compare_trees(ta, tb, ignore=["colour"])


def test_what_gnu_tar_wrote(source: Source) -> None:
    """Pin down the sparse members GNU tar writes (the converter must carry them unchanged)."""
    raw = source.gnu_tar
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        members = {m.name: m for m in tf}
    holes = members["sparse-gnu/holes.img"]
    assert holes.type == tarfile.GNUTYPE_SPARSE
    header = raw[holes.offset : holes.offset + 512]
    assert header[257:265] == b"ustar  \x00"  # old GNU magic
    assert header[482] == 1  # "isextended": the map goes on in an extension block
    assert len(holes.sparse) > 4
    assert members["sparse-gnu/holes.link"].type == tarfile.LNKTYPE
    assert b"././@LongLink" in raw  # GNU long name / long link records
    assert members["sparse-gnu/long-target"].linkname == "../" + GNU_LONG_NAME

    raw = source.posix_tar
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getnames()[:2] == [".", "./sparse-posix"]
        holes = tf.getmember("./sparse-posix/holes.img")
    # PAX format 1.0: version records, the real name and size in the PAX header, a made-up
    # name in the ustar header, and the map in decimal at the start of the data.
    assert holes.pax_headers["GNU.sparse.major"] == "1"
    assert holes.pax_headers["GNU.sparse.minor"] == "0"
    assert holes.pax_headers["GNU.sparse.realsize"] == str(5 * MiB)
    assert b"/GNUSparseFile." in raw
    assert (
        holes.pax_headers["SCHILY.xattr.user.sparse"].encode("utf-8", "surrogateescape")
        == b"\x00yes\xff"
    )
    assert holes.sparse[0][0] == MiB


@pytest.fixture(scope="module")
def gzip_original(registry, source, tmp_path_factory):
    """The gzip image in the registry, pulled to an OCI layout and unpacked by umoci."""
    work = tmp_path_factory.mktemp("gzip-original")
    image = build_image(source.layers, compression="gzip", labels={"lazyfs.test": "rich"})
    ref = new_ref(registry, "gzip")
    push(ref, image)
    rootfs = unpack(f"docker://{ref}", work / "unpacked", gzip_layers=False)
    tree = snapshot_tree(rootfs)
    check_rich_tree(tree, source)
    return ref, work / "unpacked" / "layout", tree


@pytest.mark.parametrize("variant", ["gzip", "zstd", "none", "docker"])
def test_roundtrip(variant, registry, source, gzip_original, tmp_path):
    if variant == "gzip":
        ref, _, original_tree = gzip_original
    else:
        image = build_image(
            source.layers,
            compression="gzip" if variant == "docker" else variant,
            docker=variant == "docker",
            env=["A=1", "PATH=/bin"],
            labels={"variant": variant},
        )
        ref = new_ref(registry, variant)
        push(ref, image)
        # umoci 0.4.7 reads only gzip layers: skopeo recompresses the zstd and plain ones.
        rootfs = unpack(f"docker://{ref}", tmp_path / "original", gzip_layers=variant != "docker")
        original_tree = snapshot_tree(rootfs)
        check_rich_tree(original_tree, source)
    dst = new_ref(registry, f"{variant}-converted")
    report = convert(str(ref), str(dst))
    assert [layer.result for layer in report.layers] == ["converted"] * len(source.layers)

    check_converted(fetch(ref), fetch(dst))
    rootfs = unpack(f"docker://{dst}", tmp_path / "converted", gzip_layers=True)
    assert_same_tree(original_tree, snapshot_tree(rootfs), exact_mtime=True, **IGNORE)

    # Converting the converted image keeps every layer and gives the same manifest.
    again = convert(str(dst), str(new_ref(registry, f"{variant}-again")))
    assert [layer.result for layer in again.layers] == ["kept"] * len(source.layers)
    assert again.digest == report.digest


def test_gnu_sparse_layer(registry, source, tmp_path):
    """The old GNU format layer, unpacked by GNU tar (umoci 0.4.7 refuses typeflag 'S')."""
    image = build_image([source.gnu_tar], compression="gzip")
    ref = new_ref(registry, "gnu-sparse")
    push(ref, image)
    dst = new_ref(registry, "gnu-sparse-converted")
    convert(str(ref), str(dst))
    original, converted = fetch(ref), fetch(dst)
    check_converted(original, converted)
    trees = []
    for name, tar in (
        ("original", gzip.decompress(original.layers[0])),
        ("converted", unzstd(converted.layers[0])),
    ):
        root = tmp_path / name
        root.mkdir()
        _run(["tar", "-x", "--numeric-owner", "-C", str(root), "-f", "-"], input=tar)
        trees.append(snapshot_tree(root))
    assert_same_tree(*trees, exact_mtime=True, ignore_root=True, names=("original", "converted"))
    holes = trees[1]["sparse-gnu/holes.img"]
    data = source.sparse["sparse-gnu/holes.img"]
    assert (holes.size, holes.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert holes.hardlinks == {"sparse-gnu/holes.img", "sparse-gnu/holes.link"}
    assert trees[1]["sparse-gnu/long-target"].target == "../" + GNU_LONG_NAME


def test_multi_platform_index(registry, tmp_path):
    platforms = [Platform("linux", "amd64"), Platform("linux", "arm64")]
    images = []
    for n, plat in enumerate(platforms):
        layers = rich_layers()
        layers[0].append(Entry("arch", "dir"))
        layers[0].append(Entry(f"arch/{plat.architecture}", data=noise(200_000 + n, 40 + n)))
        images.append((build_image(layers, platform=plat), plat))
    src = new_ref(registry, "multi")

    async def main() -> None:
        async with RegistryClient() as client:
            await push_index(client, src, images)

    trio.run(main)
    dst = new_ref(registry, "multi-converted")
    report = convert(str(src), str(dst))
    assert report.media_type == mediatypes.OCI_INDEX

    index = fetch_index(dst)
    assert index["mediaType"] == mediatypes.OCI_INDEX
    listed = [(d["platform"]["os"], d["platform"]["architecture"]) for d in index["manifests"]]
    assert listed == [("linux", "amd64"), ("linux", "arm64")]
    for (image, plat), desc in zip(images, index["manifests"], strict=True):
        assert desc["mediaType"] == mediatypes.OCI_MANIFEST
        assert desc["digest"] != str(image.digest)
        original = fetch(Reference.parse(f"{src.registry}/{src.repository}@{image.digest}"))
        converted = fetch(Reference.parse(f"{dst.registry}/{dst.repository}@{desc['digest']}"))
        check_converted(original, converted)
        arch = plat.architecture
        a = unpack(f"docker://{src}", tmp_path / f"{arch}-original", gzip_layers=False, arch=arch)
        b = unpack(f"docker://{dst}", tmp_path / f"{arch}-converted", gzip_layers=True, arch=arch)
        ta, tb = snapshot_tree(a), snapshot_tree(b)
        assert f"arch/{arch}" in ta
        assert_same_tree(ta, tb, exact_mtime=True, **IGNORE)


def fetch_index(ref: Reference) -> dict:
    async def main() -> dict:
        async with RegistryClient() as client:
            return json.loads((await client.get_manifest(ref)).data)

    return trio.run(main)


def test_oci_layout_source_and_destination(gzip_original, tmp_path):
    _, layout, original_tree = gzip_original
    report = convert(f"oci:{layout}:t", f"oci:{tmp_path}/converted:t")
    assert report.media_type == mediatypes.OCI_MANIFEST
    index = json.loads((tmp_path / "converted" / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["digest"] == str(report.digest)
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "t"
    blob_dir = tmp_path / "converted" / "blobs" / "sha256"
    manifest = json.loads((blob_dir / report.digest.hex).read_bytes())
    assert {d["mediaType"] for d in manifest["layers"]} == {mediatypes.OCI_LAYER_ZSTD}
    rootfs = unpack(f"oci:{tmp_path}/converted:t", tmp_path / "unpacked", gzip_layers=True)
    assert_same_tree(original_tree, snapshot_tree(rootfs), exact_mtime=True, **IGNORE)


#: Files to put first; by layer: 0: big.bin, hl/c (its target hl/a comes first), the long
#: name; 1: a file under an opaque directory (moved before the opaque marker: umoci, like
#: containerd, spares what the same layer unpacked), a hardlink under implicit parents, a
#: file replaced in that layer; 4: the PAX sparse file. Paths in any spelling; unknown ones
#: are left out. (Files under directories that replace a lower non-directory are in
#: test_prioritize_keeps_what_a_moved_file_needs.)
PRIORITIZE = [
    "data/big.bin",
    "/hl/c",
    LONG_NAME,
    "opaque/new",
    "./implicit/a/b/c.hl",
    "data/small.txt",
    "sparse-posix/holes.img",
    "no/such/file",
]
#: The members each layer must start with, in order.
EXPECTED_FIRST = {
    0: ["data/big.bin", "hl/a", "hl/c", LONG_NAME, "data/small.txt"],
    1: ["opaque/new", "implicit/a/b/c.txt", "implicit/a/b/c.hl", "data/small.txt"],
    2: [],
    3: [],
    4: ["./sparse-posix/holes.img"],
}


def test_cli_convert_with_prioritize(gzip_original, source, registry, tmp_path):
    src, _, original_tree = gzip_original
    dst = new_ref(registry, "cli")
    listing = tmp_path / "prioritize.txt"
    listing.write_text("# hot files\n" + "\n".join(PRIORITIZE) + "\n\n")
    result = lazyfs_cli(
        *("convert", str(src), str(dst), "--json"),
        *("--chunk-size", "64K", "--prioritize", str(listing)),
        home=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    converted = fetch(dst)
    assert report["digest"] == str(Digest.of(fetch_raw_manifest(dst)))
    assert report["media_type"] == mediatypes.OCI_MANIFEST
    assert [layer["result"] for layer in report["layers"]] == ["converted"] * len(source.layers)
    assert [layer["digest"] for layer in report["layers"]] == [
        d["digest"] for d in converted.manifest["layers"]
    ]
    for layer, blob in zip(report["layers"], converted.layers, strict=True):
        assert layer["blob_bytes"] == len(blob)
        assert layer["tar_bytes"] == len(unzstd(blob))
    original = fetch(src)
    check_converted(original, converted, same_tars=False)

    for n, blob in enumerate(converted.layers):
        with tarfile.open(fileobj=io.BytesIO(unzstd(blob))) as tf:
            names = tf.getnames()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(original.layers[n]))) as tf:
            original_names = tf.getnames()
        first = EXPECTED_FIRST[n]
        moved = names[: names.index(first[-1]) + 1] if first else []
        assert [name for name in moved if name in first] == first, n
        for name in moved:  # anything else moved along is something a moved file needs
            if name not in first:
                clean = name.strip("./").rstrip("/")
                base = clean.rsplit("/", 1)[-1]
                needed = clean.replace(".wh.", "") if base.startswith(".wh.") else clean
                assert any(f.strip("./").startswith(f"{needed}") for f in first), (n, name)
        assert sorted(names) == sorted(original_names), n  # moved, nothing lost
        annotations = converted.manifest["layers"][n]["annotations"]
        assert ("io.lazyfs.prefetch-offset" in annotations) == bool(first), n

    rootfs = unpack(f"docker://{dst}", tmp_path / "unpacked", gzip_layers=True)
    assert_same_tree(original_tree, snapshot_tree(rootfs), exact_mtime=True, **IGNORE)


def fetch_raw_manifest(ref: Reference) -> bytes:
    async def main() -> bytes:
        async with RegistryClient() as client:
            return (await client.get_manifest(ref)).data

    return trio.run(main)


def test_prioritize_keeps_what_a_moved_file_needs(registry, tmp_path):
    """A moved file must still land where the original layer puts it.

    Layer 1 turns a file, a whited-out file and a symlink of layer 0 into directories
    and puts a file in each; prioritizing those files must not unpack them before (or,
    through the symlink, outside) their directories.
    """
    layers = [
        [
            Entry("file2dir", data=b"a file"),
            Entry("wh_then_dir", data=b"a file"),
            Entry("target", "dir"),
            Entry("link2dir", "symlink", linkname="target"),
        ],
        [
            Entry("file2dir", "dir"),
            Entry("file2dir/child", data=b"1"),
            Entry(".wh.wh_then_dir"),
            Entry("wh_then_dir", "dir"),
            Entry("wh_then_dir/inner", data=b"2"),
            Entry("link2dir", "dir"),
            Entry("link2dir/f", data=b"3"),
        ],
    ]
    src = new_ref(registry, "prio-parents")
    push(src, build_image(layers))
    original = snapshot_tree(unpack(f"docker://{src}", tmp_path / "original", gzip_layers=False))
    assert {"file2dir/child", "wh_then_dir/inner", "link2dir/f"} <= original.keys()
    problems = []
    for path in ("link2dir/f", "file2dir/child", "wh_then_dir/inner"):
        dst = new_ref(registry, "prio-parents-converted")
        convert(str(src), str(dst), prioritize=[path])
        try:
            rootfs = unpack(f"docker://{dst}", tmp_path / path.replace("/", "-"), gzip_layers=True)
        except pytest.fail.Exception as exc:
            problems.append(f"{path}: {str(exc).strip().splitlines()[-1]}")
            continue
        diffs = compare_trees(original, snapshot_tree(rootfs), **IGNORE)
        problems += [f"{path}: {d}" for d in diffs]
    assert not problems, "\n".join(problems)


NON_UTF8 = b"latin1-\xe9.txt"


def test_name_not_utf8(registry, tmp_path):
    """A file name that is not UTF-8 (legal in tar and Linux; GNU tar writes it as it is).

    Either the conversion round-trips, or it is refused with lazyfs's one-line error.
    """
    root = tmp_path / "root"
    root.mkdir()
    (root / "dir").mkdir()
    with open(os.path.join(os.fsencode(root / "dir"), NON_UTF8), "wb") as f:
        f.write(b"bytes name\n")
    tar = _run(["tar", "--format=posix", "-C", str(root), "-cf", "-", "dir"]).stdout
    src = new_ref(registry, "latin1")
    push(src, build_image([tar]))
    dst = new_ref(registry, "latin1-converted")
    result = lazyfs_cli("convert", str(src), str(dst), home=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode != 0:
        assert result.returncode == 1
        assert result.stderr.startswith("lazyfs: error: ")
        assert len(result.stderr.strip().splitlines()) == 1
        return
    original = unpack(f"docker://{src}", tmp_path / "original", gzip_layers=False)
    assert os.path.exists(os.path.join(os.fsencode(original / "dir"), NON_UTF8))
    converted = unpack(f"docker://{dst}", tmp_path / "converted", gzip_layers=True)
    assert_same_tree(original, converted, exact_mtime=True, **IGNORE)
