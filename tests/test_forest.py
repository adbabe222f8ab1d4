"""The layer forest: many single-layer trees under one root, as ``lazyfs layerd`` serves them.

No kernel: layers are real tars indexed by :func:`lazyfs.formats.plain.index_tar_file`,
built with ``overlay_whiteouts=True`` and read through real
:class:`~lazyfs.fs.fetcher.ChunkFetcher` s over the tar files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from lazyfs.formats.plain import index_tar_file
from lazyfs.fs.cache import ChunkCache
from lazyfs.fs.fetcher import ChunkFetcher, LayerSource
from lazyfs.fs.forest import LayerForest
from lazyfs.fs.tree import OVERLAY_OPAQUE_XATTR, ROOT_INODE, MergedTree
from lazyfs.oci.digest import Digest
from tests.harness.images import Entry, tar_layer

LOWER = [
    Entry("etc", "dir", mode=0o750),
    Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
    Entry("etc/gone", data=b"removed above\n"),
    Entry("opt", "dir"),
    Entry("opt/old.txt", data=b"old\n"),
    Entry("bin", "dir"),
    Entry("bin/sh", data=b"#!shell\n" * 1000, mode=0o755),
    Entry("bin/ash", "hardlink", linkname="bin/sh"),
    Entry("lib", "symlink", linkname="usr/lib"),
]
UPPER = [
    Entry("etc/.wh.gone", uid=7, gid=8, mtime=1_600_000_000),
    Entry("opt", "dir", mode=0o700),
    Entry("opt/.wh..wh..opq"),
    Entry("opt/new.txt", data=b"new\n"),
    Entry("etc/motd", data=b"hello\n"),
]


def _layer(tmp_path: Path, name: str, entries: list[Entry]) -> tuple[MergedTree, ChunkFetcher]:
    tar = tar_layer(entries)
    path = tmp_path / f"{name}.tar"
    path.write_bytes(tar)
    index = index_tar_file(path, layer=name, blob_digest=Digest.of(tar), blob_size=len(tar))
    tree = MergedTree.build([index], overlay_whiteouts=True)
    source = LayerSource(name=name, table=tree.tables[0], local_path=index.local_path)
    fetcher = ChunkFetcher([source], ChunkCache(1 << 20, None, 0), read_timeout=10)
    return tree, fetcher


def _walk(forest: LayerForest, ino: int) -> dict[str, int]:
    """Every path under directory ``ino`` -> inode, checking lookup against children."""
    out: dict[str, int] = {}
    stack = [("", ino)]
    while stack:
        path, d = stack.pop()
        for name, child in forest.children(d):
            assert forest.lookup(d, name) == child
            sub = f"{path}/{name.decode()}".lstrip("/")
            out[sub] = child
            if stat.S_ISDIR(forest.attr(child).mode):
                assert forest.lookup(child, b"..") == d
                stack.append((sub, child))
    return out


def _resolve(forest: LayerForest, path: str) -> int:
    ino = ROOT_INODE
    for part in path.split("/"):
        found = forest.lookup(ino, part.encode())
        assert found is not None, f"{path}: no {part}"
        ino = found
    return ino


@pytest.fixture
def forest(tmp_path):
    released = []
    forest = LayerForest(on_release=released.append)
    forest.released = released  # type: ignore[attr-defined]
    lower, upper = _layer(tmp_path, "lower", LOWER), _layer(tmp_path, "upper", UPPER)
    forest.add("aaaa", *lower, info={"digest": "sha256:aaaa"})
    forest.add("bbbb", *upper)
    return forest


def test_each_layer_has_its_own_disjoint_inode_range(forest: LayerForest):
    a, b = forest.get("aaaa"), forest.get("bbbb")
    assert a is not None and b is not None
    assert a.root_inode == ROOT_INODE + 1
    assert b.base == a.last_inode and b.root_inode == a.last_inode + 1
    assert len(forest) == 1 + len(a.tree) + len(b.tree)
    assert forest.children(ROOT_INODE) == [(b"aaaa", a.root_inode), (b"bbbb", b.root_inode)]
    assert forest.lookup(ROOT_INODE, b"aaaa") == a.root_inode
    assert forest.lookup(ROOT_INODE, b"cccc") is None
    assert forest.lookup(a.root_inode, b"..") == ROOT_INODE
    assert forest.is_layer_root(b.root_inode) and not forest.is_layer_root(b.root_inode + 1)
    paths_a, paths_b = _walk(forest, a.root_inode), _walk(forest, b.root_inode)
    assert set(paths_a.values()).isdisjoint(paths_b.values())
    for paths, layer in ((paths_a, a), (paths_b, b)):
        for path, ino in paths.items():
            assert forest.layer_of(ino) is layer
            # (a hardlinked inode's path is its first name)
            assert forest.path(ino) == f"{layer.name}/{layer.tree.path(ino - layer.base)}"
            assert path.startswith(forest.path(ino).split("/", 1)[1].rsplit("/", 1)[0])
            assert forest.attr(ino).ino == ino
            # The same attributes as the layer's own tree, but for the number.
            own = layer.tree.attr(ino - layer.base)
            got = forest.attr(ino)
            assert (got.mode, got.size, got.nlink, got.uid, got.mtime_ns) == (
                own.mode,
                own.size,
                own.nlink,
                own.uid,
                own.mtime_ns,
            )
    assert sorted(paths_a) == [
        "bin",
        "bin/ash",
        "bin/sh",
        "etc",
        "etc/gone",
        "etc/passwd",
        "lib",
        "opt",
        "opt/old.txt",
    ]
    with pytest.raises(KeyError):
        forest.attr(b.last_inode + 1)


def test_root_attributes_follow_the_layers(forest: LayerForest, tmp_path):
    root = forest.attr(ROOT_INODE)
    assert stat.S_ISDIR(root.mode) and stat.S_IMODE(root.mode) == 0o755
    assert root.nlink == 4 and (root.uid, root.gid) == (0, 0)
    assert forest.xattrs(ROOT_INODE) == {}
    forest.add("cccc", *_layer(tmp_path, "third", LOWER))
    assert forest.attr(ROOT_INODE).nlink == 5
    assert forest.attr(ROOT_INODE).mtime_ns >= root.mtime_ns
    assert forest.total_file_bytes() == sum(
        layer.tree.total_file_bytes() for layer in forest.layers()
    )
    with pytest.raises(ValueError):
        forest.add("cccc", *_layer(tmp_path, "again", LOWER))
    for bad in ("", ".", "..", "a/b", "x" * 256):
        with pytest.raises(ValueError):
            forest.add(bad, *_layer(tmp_path, "bad", LOWER))


def test_whiteouts_and_opaque_dirs_are_shown_as_overlayfs_stores_them(forest: LayerForest):
    gone = forest.attr(_resolve(forest, "bbbb/etc/gone"))
    assert stat.S_ISCHR(gone.mode) and stat.S_IMODE(gone.mode) == 0
    assert gone.rdev == os.makedev(0, 0) and (gone.uid, gone.gid) == (7, 8)
    assert gone.mtime_ns == 1_600_000_000 * 10**9
    opt = _resolve(forest, "bbbb/opt")
    assert forest.xattrs(opt) == {OVERLAY_OPAQUE_XATTR: b"y"}
    assert stat.S_IMODE(forest.attr(opt).mode) == 0o700
    assert [name for name, _ in forest.children(opt)] == [b"new.txt"]
    # Nothing of the markers themselves, and the lower layer keeps what was whited out.
    assert forest.lookup(_resolve(forest, "bbbb/etc"), b".wh.gone") is None
    assert forest.lookup(opt, b".wh..wh..opq") is None
    assert forest.attr(_resolve(forest, "aaaa/etc/gone")).size == len(b"removed above\n")
    assert forest.xattrs(_resolve(forest, "aaaa/opt")) == {}


def test_reads_go_to_the_right_layer(forest: LayerForest):
    async def main():
        sh = _resolve(forest, "aaaa/bin/sh")
        assert await forest.read(sh, 0, 1 << 20) == b"#!shell\n" * 1000
        assert await forest.read(sh, 7992, 100) == b"#!shell\n"
        assert await forest.read(sh, 8000, 10) == b""
        assert _resolve(forest, "aaaa/bin/ash") == sh
        assert forest.attr(sh).nlink == 2
        motd = _resolve(forest, "bbbb/etc/motd")
        assert await forest.read(motd, 0, 100, sequential=True) == b"hello\n"
        assert await forest.read(_resolve(forest, "bbbb/opt/new.txt"), 1, 2) == b"ew"
        assert forest.readlink(_resolve(forest, "aaaa/lib")) == b"usr/lib"
        assert forest.content(ROOT_INODE) is None
        with pytest.raises(ValueError):
            forest.readlink(ROOT_INODE)

    trio.run(main)


def test_removal_hides_the_name_and_releases_once_forgotten(forest: LayerForest, tmp_path):
    a = forest.get("aaaa")
    assert a is not None
    passwd = _resolve(forest, "aaaa/etc/passwd")
    # The kernel learnt the layer root and a file, twice for the file.
    forest.note_lookup(a.root_inode)
    forest.note_lookup(passwd, 2)
    assert forest.remove("aaaa") is a
    assert forest.remove("aaaa") is None
    assert forest.lookup(ROOT_INODE, b"aaaa") is None
    assert [name for name, _ in forest.children(ROOT_INODE)] == [b"bbbb"]
    assert forest.attr(ROOT_INODE).nlink == 3
    # Still held by the kernel: still served.
    assert a.removed and not a.released and forest.pending() == [a]
    assert forest.attr(passwd).size == len(b"root:x:0:0::/root:/bin/sh\n")
    forest.forget(passwd, 2)
    assert not a.released
    forest.forget(a.root_inode, 1)
    assert a.released and forest.released == [a]  # type: ignore[attr-defined]
    with pytest.raises(KeyError):
        forest.attr(passwd)
    with pytest.raises(KeyError):
        forest.layer_of(a.root_inode)
    forest.forget(passwd, 1)  # a late forget of a released inode is ignored
    # A layer added again under the same name gets new inode numbers.
    forest.add("aaaa", *_layer(tmp_path, "again", LOWER))
    again = forest.get("aaaa")
    assert again is not None and again.base > forest.get("bbbb").base  # type: ignore[union-attr]
    assert again.root_inode > a.last_inode
    # A layer the kernel does not hold is released at once.
    b = forest.get("bbbb")
    forest.remove("bbbb")
    assert b is not None and b.released and forest.released[-1] is b  # type: ignore[attr-defined]
    assert forest.layer_of(_resolve(forest, "aaaa/etc/passwd")) is again
