"""The merged tree: layers applied as the OCI image specification says, frozen compact.

Unit tests build layers as real tars (:func:`tests.harness.images.tar_layer`) indexed by
:func:`lazyfs.formats.plain.index_tar_file`, one case each. Two tests compare whole trees
with independent implementations: umoci's unpack of the same layers (the real oracle), and,
on random layer stacks from hypothesis, a small path -> node dict applied step by step.
A last one builds a million entries (the timed version is ``bench/tree_memory.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazyfs.errors import LayerIndexError
from lazyfs.formats.model import CODEC_NONE, CODEC_ZEROS, Chunk, EntryType, LayerIndex
from lazyfs.formats.model import Entry as ModelEntry
from lazyfs.formats.plain import index_tar_file
from lazyfs.fs.tree import ROOT_INODE, Attr, MergedTree
from lazyfs.oci.digest import Digest
from tests.harness.images import Entry, build_image, tar_layer
from tests.harness.rich import T0, rich_layers
from tests.harness.trees import NodeInfo, Tree, compare_trees, snapshot_tree

# ---------------------------------------------------------------- helpers


@dataclass
class Built:
    """A tree and the layer tars it was built from (to read file contents back)."""

    tree: MergedTree
    tars: list[bytes]

    def ino(self, path: str) -> int:
        """The inode at ``path``; fails the test when there is none."""
        ino = ROOT_INODE
        for part in filter(None, path.split("/")):
            found = self.tree.lookup(ino, part.encode())
            assert found is not None, f"{path!r}: no {part!r}"
            ino = found
        return ino

    def attr(self, path: str) -> Attr:
        return self.tree.attr(self.ino(path))

    def data(self, path: str) -> bytes:
        """A regular file's content, read through its chunks from the layer tar."""
        ino = self.ino(path)
        return read_content(self.tree, self.tars, ino)

    def paths(self) -> dict[str, int]:
        return walk(self.tree)


def read_content(tree: MergedTree, tars: list[bytes], ino: int) -> bytes:
    content = tree.content(ino)
    if content is None:
        return bytes(tree.attr(ino).size)
    layer, first, count = content
    out = bytearray()
    for i in range(first, first + count):
        chunk = tree.tables[layer].chunk(i)
        assert chunk.file_offset == len(out)
        if chunk.codec == CODEC_ZEROS:
            out += bytes(chunk.size)
        else:
            assert chunk.codec == CODEC_NONE
            out += tars[layer][chunk.blob_offset : chunk.blob_offset + chunk.blob_length]
    return bytes(out)


def walk(tree: MergedTree) -> dict[str, int]:
    """Every path of the tree (the root as ``""``) -> inode, checking readdir on the way."""
    out = {"": ROOT_INODE}
    stack = [("", ROOT_INODE)]
    while stack:
        path, ino = stack.pop()
        children = list(tree.children(ino))
        names = [name for name, _ in children]
        assert names == sorted(names), path
        assert len(set(names)) == len(names), path
        for name, child in children:
            assert tree.lookup(ino, name) == child
            sub = f"{path}/{name.decode('utf-8', 'surrogateescape')}".lstrip("/")
            out[sub] = child
            if stat.S_ISDIR(tree.attr(child).mode):
                assert tree.lookup(child, b"..") == ino
                stack.append((sub, child))
    return out


@pytest.fixture
def make(tmp_path):
    """``make(layer, layer, ..., overlay_whiteouts=False) -> Built`` from harness entries."""
    counter = iter(range(1_000_000))

    def make_tree(*layers: list[Entry], **options) -> Built:
        tars = [tar_layer(layer) for layer in layers]
        return Built(MergedTree.build(indexes(tmp_path, tars, counter), **options), tars)

    return make_tree


def indexes(directory: Path, tars: list[bytes], counter=None) -> list[LayerIndex]:
    out = []
    for n, tar in enumerate(tars):
        path = directory / f"layer-{next(counter) if counter else n}.tar"
        path.write_bytes(tar)
        digest = Digest.of(tar)
        out.append(index_tar_file(path, layer=f"#{n}", blob_digest=digest, blob_size=len(tar)))
    return out


def kind(attr: Attr) -> str:
    return {
        stat.S_IFREG: "file",
        stat.S_IFDIR: "dir",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "char",
        stat.S_IFBLK: "block",
        stat.S_IFIFO: "fifo",
    }[stat.S_IFMT(attr.mode)]


S = 1_000_000_000  # ns a second

# ---------------------------------------------------------------- one layer


def test_every_entry_type_and_its_attributes(make):
    b = make(
        [
            Entry("bin", "dir", mode=0o751, uid=1, gid=2, mtime=T0 + 1),
            Entry("bin/sh", data=b"#!shell\n", mode=0o4755, uid=3, gid=4, mtime=T0 + 2),
            Entry("bin/big", data=bytes(range(256)) * 5, mode=0o2711),
            Entry("bin/empty", mode=0o600),
            Entry("bin/link", "symlink", linkname="sh", mode=0o755, uid=5),
            Entry("tmp", "dir", mode=0o1777),
            Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
            Entry("dev/nvme", "block", devmajor=259, devminor=70_000, mode=0o660, gid=6),
            Entry("dev/fifo", "fifo", mode=0o620),
            Entry("x", data=b"x", xattrs={"user.a": b"\x00\xff", "user.b": b""}),
            Entry("old", data=b"o", mtime=-631_152_000),
            Entry("frac", data=b"f", mtime=1_600_000_000.5),  # type: ignore[arg-type]
        ]
    )
    sh = b.attr("bin/sh")
    assert sh == Attr(sh.ino, stat.S_IFREG | 0o4755, 1, 3, 4, 8, (T0 + 2) * S, 0, 1)
    assert b.data("bin/sh") == b"#!shell\n"
    assert b.attr("bin").mode == stat.S_IFDIR | 0o751
    assert (b.attr("bin").uid, b.attr("bin").gid, b.attr("bin").mtime_ns) == (1, 2, (T0 + 1) * S)
    assert b.attr("bin").blocks == 0
    big = b.attr("bin/big")
    assert (big.mode, big.size, big.blocks) == (stat.S_IFREG | 0o2711, 1280, 3)
    assert b.data("bin/big") == bytes(range(256)) * 5
    empty = b.ino("bin/empty")
    assert b.tree.content(empty) is None
    assert (b.tree.attr(empty).size, b.tree.attr(empty).blocks) == (0, 0)
    link = b.attr("bin/link")
    assert link.mode == stat.S_IFLNK | 0o777  # as Linux shows every symlink
    assert (link.size, link.uid, link.blocks) == (2, 5, 0)
    assert b.tree.readlink(link.ino) == b"sh"
    assert b.tree.content(link.ino) is None
    assert b.attr("tmp").mode == stat.S_IFDIR | 0o1777
    null = b.attr("dev/null")
    assert (null.mode, null.rdev, null.size) == (stat.S_IFCHR | 0o666, os.makedev(1, 3), 0)
    nvme = b.attr("dev/nvme")
    assert (nvme.mode, nvme.rdev, nvme.gid) == (stat.S_IFBLK | 0o660, os.makedev(259, 70_000), 6)
    fifo = b.attr("dev/fifo")
    assert (fifo.mode, fifo.rdev) == (stat.S_IFIFO | 0o620, 0)
    assert dict(b.tree.xattrs(b.ino("x"))) == {b"user.a": b"\x00\xff", b"user.b": b""}
    assert dict(b.tree.xattrs(b.ino("bin"))) == {}
    assert b.attr("old").mtime_ns == -631_152_000 * S
    assert b.attr("frac").mtime_ns == 1_600_000_000_500_000_000
    root = b.tree.attr(ROOT_INODE)
    assert root == Attr(ROOT_INODE, stat.S_IFDIR | 0o755, 5, 0, 0, 0, 0, 0, 0)
    # dev/ is made up: its parents are implicit.
    assert (b.attr("dev").mode, b.attr("dev").mtime_ns) == (stat.S_IFDIR | 0o755, 0)
    assert b.tree.path(b.ino("dev/null")) == "dev/null"
    assert b.tree.path(ROOT_INODE) == ""
    assert len(b.tree) == b.tree.inode_count == len(b.paths()) == 14


def test_lookup_readdir_and_bad_inodes(make):
    names = ["b", "B", "a", "ab", "a-b", "\u00e9t\u00e9", "zz", "_", "10", "9"]
    b = make([Entry("d", "dir"), *[Entry(f"d/{n}") for n in names], Entry("f")])
    d = b.ino("d")
    children = b.tree.children(d)
    expected = sorted(n.encode() for n in names)
    assert [name for name, _ in children] == expected
    assert len(children) == len(names)
    assert children[1:3] == list(children)[1:3]
    assert children[-1] == (b"\xc3\xa9t\xc3\xa9", b.ino("d/\u00e9t\u00e9"))
    for name, ino in children:
        assert b.tree.lookup(d, name) == ino
        assert b.tree.path(ino) == "d/" + name.decode()
    for missing in (b"", b"c", b"a-", b"zzz", b"\xff", b"0", b"d"):
        assert b.tree.lookup(d, missing) is None
    assert b.tree.lookup(d, b".") == d
    assert b.tree.lookup(d, b"..") == ROOT_INODE
    assert b.tree.lookup(ROOT_INODE, b"..") == ROOT_INODE
    f = b.ino("f")
    assert b.tree.lookup(f, b"x") is None
    assert list(b.tree.children(f)) == []
    with pytest.raises(ValueError):
        b.tree.readlink(f)
    for bad in (0, -1, len(b.tree) + 1):
        with pytest.raises(KeyError):
            b.tree.attr(bad)
        with pytest.raises(KeyError):
            b.tree.lookup(bad, b"a")
    assert b.tree.total_file_bytes() == 0
    assert b.tree.memory_bytes() > 0


def test_inode_numbers_are_stable_and_breadth_first(make):
    layers = [
        [Entry("z/y/x"), Entry("a"), Entry("m", "dir"), Entry("m/n", "symlink", linkname="a")],
        [Entry("c", data=b"c"), Entry(".wh.a"), Entry("z/h", "hardlink", linkname="c")],
    ]
    first, second = make(*layers), make(*layers)
    assert first.paths() == second.paths()
    # Breadth first, each directory's names in order; a hardlink has its target's number.
    expected = {"": 1, "c": 2, "m": 3, "z": 4, "m/n": 5, "z/h": 2, "z/y": 6, "z/y/x": 7}
    assert first.paths() == expected


# ---------------------------------------------------------------- whiteouts


def test_whiteout_removes_a_lower_file_and_a_whole_subtree(make):
    b = make(
        [
            Entry("f", data=b"f"),
            Entry("d", "dir"),
            Entry("d/sub/deep/file"),
            Entry("d/sub/link", "symlink", linkname="../x"),
            Entry("keep", "dir", mtime=T0 + 9),
            Entry("keep/me"),
        ],
        [Entry(".wh.f"), Entry(".wh.d"), Entry("keep/.wh.nothing"), Entry("no/such/.wh.x")],
    )
    assert sorted(b.paths()) == ["", "keep", "keep/me"]
    assert b.attr("keep").mtime_ns == (T0 + 9) * S  # untouched by a whiteout in it
    assert b.attr("").nlink == 3


def test_whiteouts_never_hit_the_same_layer(make):
    lower = [Entry("f", data=b"lower"), Entry("d", "dir"), Entry("d/lower")]
    before = [Entry(".wh.f"), Entry("f", data=b"upper"), Entry(".wh.d"), Entry("d", "dir")]
    after = [Entry("f", data=b"upper"), Entry(".wh.f"), Entry("d", "dir"), Entry(".wh.d")]
    for upper in (before, after):
        b = make(lower, [*upper, Entry("d/upper")])
        assert b.data("f") == b"upper"
        assert sorted(b.paths()) == ["", "d", "d/upper", "f"]
    # A whiteout in a directory the same layer re-creates: the directory is made up.
    b = make(lower, [Entry("d/new"), Entry(".wh.d", mtime=1)])
    assert sorted(b.paths()) == ["", "d", "d/new", "f"]
    assert b.attr("d").mtime_ns == 0


def test_whiteouts_do_not_follow_symlinks_nor_create_parents(make):
    b = make(
        [Entry("real", "dir"), Entry("real/x"), Entry("s", "symlink", linkname="real")],
        [Entry("s/.wh.x"), Entry("s/.wh..wh..opq"), Entry("new/.wh.x"), Entry("new/.wh..wh..opq")],
    )
    assert sorted(b.paths()) == ["", "real", "real/x", "s"]


def test_opaque_directory_hides_only_lower_entries(make):
    lower = [
        Entry("o", "dir", mode=0o700, mtime=T0, xattrs={"user.o": b"1"}),
        Entry("o/old"),
        Entry("o/same", data=b"lower"),
        Entry("o/sub", "dir"),
        Entry("o/sub/deep"),
        Entry("other/kept"),
    ]
    upper = [
        Entry("o/before", data=b"b"),
        Entry("o/same", data=b"upper"),
        Entry("o/.wh..wh..opq"),
        Entry("o/after/child", data=b"a"),
    ]
    b = make(lower, upper)
    assert sorted(b.paths()) == [
        "",
        "o",
        "o/after",
        "o/after/child",
        "o/before",
        "o/same",
        "other",
        "other/kept",
    ]
    assert b.data("o/same") == b"upper"
    o = b.attr("o")  # no entry for o in the upper layer: the lower one's metadata stays
    assert (o.mode, o.mtime_ns, o.nlink) == (stat.S_IFDIR | 0o700, T0 * S, 3)
    assert dict(b.tree.xattrs(o.ino)) == {b"user.o": b"1"}
    # The opaque marker at the root.
    b = make(lower, [Entry("new"), Entry(".wh..wh..opq")])
    assert sorted(b.paths()) == ["", "new"]


def test_aufs_metadata_is_skipped(make):
    b = make(
        [Entry("f"), Entry(".wh.f2")],
        [Entry(".wh..wh.plnk", "dir"), Entry(".wh..wh.plnk/123.456"), Entry("g.wh.x")],
    )
    assert sorted(b.paths()) == ["", "f", "g.wh.x"]


# ---------------------------------------------------------------- replacement


def test_file_and_directory_replace_each_other(make):
    b = make(
        [
            Entry("d2f", "dir"),
            Entry("d2f/sub/file"),
            Entry("f2d", data=b"was a file"),
            Entry("s2d", "symlink", linkname="d2f"),
        ],
        [
            Entry("d2f", data=b"now a file", mode=0o600),
            Entry("f2d", "dir", mode=0o711),
            Entry("f2d/child", data=b"c"),
            Entry("s2d", "dir", mode=0o700),
        ],
    )
    assert sorted(b.paths()) == ["", "d2f", "f2d", "f2d/child", "s2d"]
    assert (b.attr("d2f").mode, b.data("d2f")) == (stat.S_IFREG | 0o600, b"now a file")
    assert b.attr("f2d").mode == stat.S_IFDIR | 0o711
    assert b.attr("s2d").mode == stat.S_IFDIR | 0o700
    assert b.attr("").nlink == 4


def test_directory_over_directory_merges(make):
    b = make(
        [
            Entry("d", "dir", mode=0o755, uid=1, mtime=T0, xattrs={"user.a": b"1", "user.b": b"2"}),
            Entry("d/lower"),
            Entry("e", "dir", xattrs={"user.gone": b"x"}),
        ],
        [
            Entry("d", "dir", mode=0o750, uid=2, gid=3, mtime=T0 + 5, xattrs={"user.a": b"new"}),
            Entry("d/upper"),
            Entry("e", "dir"),
        ],
    )
    d = b.attr("d")
    assert (d.mode, d.uid, d.gid, d.mtime_ns) == (stat.S_IFDIR | 0o750, 2, 3, (T0 + 5) * S)
    assert dict(b.tree.xattrs(d.ino)) == {b"user.a": b"new"}
    assert dict(b.tree.xattrs(b.ino("e"))) == {}
    assert sorted(b.paths()) == ["", "d", "d/lower", "d/upper", "e"]


def test_implicit_parents_are_made_up_unless_there(make):
    b = make(
        [Entry("kept", "dir", mode=0o700, uid=9, mtime=T0)],
        [Entry("kept/a/b/file"), Entry("new/x/y", "fifo")],
    )
    kept = b.attr("kept")
    assert (kept.mode, kept.uid, kept.mtime_ns, kept.nlink) == (stat.S_IFDIR | 0o700, 9, T0 * S, 3)
    for path in ("kept/a", "kept/a/b", "new", "new/x"):
        a = b.attr(path)
        assert (a.mode, a.uid, a.gid, a.mtime_ns) == (stat.S_IFDIR | 0o755, 0, 0, 0), path
    # An entry for a made-up directory later in the same layer gives it its metadata.
    b = make([Entry("p/q/file"), Entry("p", "dir", mode=0o700, mtime=T0)])
    assert (b.attr("p").mode, b.attr("p").mtime_ns) == (stat.S_IFDIR | 0o700, T0 * S)
    assert sorted(b.paths()) == ["", "p", "p/q", "p/q/file"]


def test_a_non_directory_in_the_way_is_replaced_never_followed(make):
    b = make(
        [
            Entry("target", "dir"),
            Entry("target/inside", data=b"i"),
            Entry("sym", "symlink", linkname="target"),
            Entry("abs", "symlink", linkname="/target"),
            Entry("file", data=b"f"),
            Entry("hl", "hardlink", linkname="file"),
        ],
        [Entry("sym/new"), Entry("abs/deep/new"), Entry("file/child"), Entry("target/x")],
    )
    assert sorted(b.paths()) == [
        "",
        "abs",
        "abs/deep",
        "abs/deep/new",
        "file",
        "file/child",
        "hl",
        "sym",
        "sym/new",
        "target",
        "target/inside",
        "target/x",
    ]
    for path in ("sym", "abs", "file"):
        a = b.attr(path)
        assert (a.mode, a.mtime_ns) == (stat.S_IFDIR | 0o755, 0), path
    assert b.attr("hl").nlink == 1  # "file" was one of its names
    assert b.data("hl") == b"f"


# ---------------------------------------------------------------- hardlinks


def test_hardlinks_within_a_layer_and_to_a_lower_one(make):
    b = make(
        [
            Entry("a", data=b"shared", mode=0o640, uid=7),
            Entry("b", "hardlink", linkname="a", mode=0o777, uid=99),  # its metadata is ignored
            Entry("dir/c", "hardlink", linkname="b"),
            Entry("s", "symlink", linkname="a"),
            Entry("s2", "hardlink", linkname="s"),
            Entry("self", data=b"self"),
            Entry("self", "hardlink", linkname="self"),
        ],
        [Entry("up/d", "hardlink", linkname="dir/c"), Entry("up/e", "hardlink", linkname="s")],
    )
    ino = b.ino("a")
    for path in ("a", "b", "dir/c", "up/d"):
        a = b.attr(path)
        assert (a.ino, a.nlink, a.mode, a.uid) == (ino, 4, stat.S_IFREG | 0o640, 7), path
        assert b.data(path) == b"shared"
    s = b.attr("s")
    assert (s.ino, s.nlink) == (b.ino("s2"), 3) == (b.ino("up/e"), 3)
    assert b.attr("self").nlink == 1
    assert b.data("self") == b"self"
    assert b.tree.path(ino) == "a"
    assert len(b.tree) == len(set(b.paths().values()))


def test_hardlink_groups_broken_by_replacement_and_whiteout(make):
    b = make(
        [
            Entry("a", data=b"old"),
            Entry("b", "hardlink", linkname="a"),
            Entry("c", "hardlink", linkname="a"),
            Entry("d", "hardlink", linkname="a"),
            Entry("x", data=b"x"),
            Entry("y", "hardlink", linkname="x"),
        ],
        [Entry("a", data=b"new"), Entry(".wh.c"), Entry(".wh.x")],
    )
    assert sorted(b.paths()) == ["", "a", "b", "d", "y"]
    assert (b.attr("a").nlink, b.data("a")) == (1, b"new")
    assert b.attr("b").ino == b.attr("d").ino != b.attr("a").ino
    assert (b.attr("b").nlink, b.data("d")) == (2, b"old")
    assert (b.attr("y").nlink, b.data("y")) == (1, b"x")
    # Replaced in the same layer after the link was made: the link keeps the first content.
    b = make([Entry("a", data=b"1"), Entry("h", "hardlink", linkname="a"), Entry("a", data=b"2")])
    assert (b.data("h"), b.attr("h").nlink, b.data("a"), b.attr("a").nlink) == (b"1", 1, b"2", 1)
    # A directory replaced by a hardlink to a file inside it.
    b = make([Entry("d/f", data=b"in"), Entry("d", "hardlink", linkname="d/f")])
    assert sorted(b.paths()) == ["", "d"]
    assert (b.data("d"), b.attr("d").nlink) == (b"in", 1)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([[Entry("h", "hardlink", linkname="missing")]], "'missing', which is not in the tree"),
        ([[Entry("d", "dir"), Entry("h", "hardlink", linkname="d")]], "which is a directory"),
        ([[Entry("h", "hardlink", linkname=".")]], "hardlink to the root"),
        (
            [[Entry("a"), Entry(".wh.a")], [Entry(".wh.a"), Entry("h", "hardlink", linkname="a")]],
            "not in the tree",
        ),
        (
            [
                [Entry("d/f"), Entry("s", "symlink", linkname="d")],
                [Entry("h", "hardlink", linkname="s/f")],
            ],
            "'s/f', which is not in the tree",
        ),
        ([[Entry("h", "hardlink", linkname="h2"), Entry("h2")]], "not in the tree at that point"),
    ],
)
def test_bad_hardlinks_are_errors_naming_layer_and_entry(make, layers, message):
    with pytest.raises(LayerIndexError, match="layer #") as info:
        make(*layers)
    assert message in str(info.value)
    assert "entry 'h'" in str(info.value)


# ---------------------------------------------------------------- overlay whiteouts


def test_overlay_whiteouts_are_shown_not_applied(make):
    b = make(
        [
            Entry(".wh.gone", uid=5, gid=6, mtime=T0),
            Entry("d/.wh..wh..opq"),
            Entry("d", "dir", mode=0o700, xattrs={"user.x": b"1"}),
            Entry("d/kept"),
            Entry("e/.wh.sub", "dir"),
            Entry(".wh..wh.plnk", "dir"),
        ],
        overlay_whiteouts=True,
    )
    assert sorted(b.paths()) == ["", "d", "d/kept", "e", "e/sub", "gone"]
    gone = b.attr("gone")
    assert (gone.mode, gone.rdev, gone.uid, gone.gid, gone.mtime_ns) == (
        stat.S_IFCHR,
        0,
        5,
        6,
        T0 * S,
    )
    assert b.attr("e/sub").mode == stat.S_IFCHR
    assert dict(b.tree.xattrs(b.ino("d"))) == {
        b"user.x": b"1",
        b"trusted.overlay.opaque": b"y",
    }
    assert b.attr("d").mode == stat.S_IFDIR | 0o700
    assert dict(b.tree.xattrs(b.ino("e"))) == {}


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_overlay_form_of_a_name_whited_out_and_made_a_directory(make, whiteout_first):
    # The layer deletes what lower layers had at x, then makes x a new directory: as an
    # overlayfs lower dir that is an opaque directory (no whiteout can sit next to it).
    entries = [Entry(".wh.x"), Entry("x", "dir"), Entry("x/new")]
    b = make(entries if whiteout_first else entries[1:] + entries[:1], overlay_whiteouts=True)
    assert sorted(b.paths()) == ["", "x", "x/new"]
    assert stat.S_ISDIR(b.attr("x").mode)
    assert dict(b.tree.xattrs(b.ino("x"))) == {b"trusted.overlay.opaque": b"y"}
    # A whiteout of a name that stays a whiteout is not made opaque anything.
    plain = make([Entry(".wh.y"), Entry("z", "dir")], overlay_whiteouts=True)
    assert dict(plain.tree.xattrs(plain.ino("z"))) == {}


# ---------------------------------------------------------------- chunks and errors


def test_chunks_go_to_their_layer_table(make):
    b = make(
        [Entry("a", data=b"A" * 10), Entry("b", data=b"B" * 20)],
        [Entry("c", data=b"C" * 30), Entry("b", data=b"b" * 5)],
    )
    assert [len(t) for t in b.tree.tables] == [2, 2]
    assert b.tree.content(b.ino("a")) == (0, 0, 1)
    assert b.tree.content(b.ino("b")) == (1, 1, 1)
    assert b.tree.content(b.ino("c")) == (1, 0, 1)
    assert (b.data("a"), b.data("b"), b.data("c")) == (b"A" * 10, b"b" * 5, b"C" * 30)
    assert b.tree.total_file_bytes() == 45


def model_layer(*entries: ModelEntry) -> LayerIndex:
    return LayerIndex("tar", Digest.of(b"layer"), 0, list(entries))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ModelEntry("", EntryType.REG), "is the root, which must be a directory"),
        (ModelEntry(".wh.x/y", EntryType.REG), "is under the whiteout '.wh.x'"),
        (ModelEntry("a/.wh.", EntryType.REG), "whiteout of ''"),
        (ModelEntry("f", EntryType.REG, mode=0o100644), "not permission bits"),
        (ModelEntry("f", EntryType.REG, uid=-1), "invalid"),
        (ModelEntry("f", EntryType.REG, gid=1 << 32), "invalid"),
        (ModelEntry("f", EntryType.REG, mtime_ns=1 << 64), "invalid"),
        (ModelEntry("c", EntryType.CHAR, dev_major=-1), "invalid device numbers"),
        (ModelEntry("s", EntryType.SYMLINK, link=""), "cannot be a target"),
        (ModelEntry("f\ud800", EntryType.REG), "not valid as a name"),
        (ModelEntry("f", EntryType.REG, xattrs={"user.x": "text"}), "invalid xattr"),
        (ModelEntry("a//b", EntryType.REG), "invalid path component"),
        (ModelEntry("f", 42), "unknown type 42"),  # type: ignore[arg-type]
        (ModelEntry("f", EntryType.REG, size=1, chunks=[Chunk(0, 1, 0, 1, 0, "lz4")]), "invalid"),
    ],
)
def test_invalid_entries_are_layer_index_errors(entry, message):
    layers = [model_layer(ModelEntry("ok", EntryType.DIR)), model_layer(entry)]
    with pytest.raises(LayerIndexError, match=r"^layer #1 sha256:") as info:
        MergedTree.build(layers)
    assert f"entry {entry.path!r}" in str(info.value)
    assert message in str(info.value)


def test_the_tree_keeps_no_reference_to_the_layer_indexes():
    entry = ModelEntry("f", EntryType.REG, size=1, chunks=[Chunk(0, 1, 0, 1, 0, CODEC_NONE)])
    layer = model_layer(ModelEntry("d", EntryType.DIR), entry)
    objects = (layer, layer.entries, entry, entry.chunks, entry.chunks[0])
    before = [sys.getrefcount(o) for o in objects]
    tree = MergedTree.build([layer])
    assert [sys.getrefcount(o) for o in objects] == before
    assert tree.content(tree.lookup(ROOT_INODE, b"f")) == (0, 0, 1)


@pytest.mark.parametrize(
    ("name", "executing", "chunks", "mapped"),
    [
        ("python3", True, 2, True),  # opened by execve
        ("tool", True, 3, True),
        ("python3", False, 2, False),  # an executable only read (cp, file, a scanner)
        ("libc.so.6", False, 2, True),  # a shared library, opened by the loader
        ("libx.so", False, 2, True),
        ("libz.so.1.2.13", False, 5, True),
        ("python3", True, 1, False),  # one chunk: its first read fetches it all
        ("data.bin", False, 4, False),
        ("x.socket", False, 2, False),  # ".so" not followed by a dot or the end
        ("notes.sonnet", False, 2, False),
        ("a.so.txt.so", False, 2, True),
    ],
)
def test_mapped_content_is_what_is_executed_and_libraries_of_several_chunks(
    name: str, executing: bool, chunks: int, mapped: bool
) -> None:
    pieces = [Chunk(i * 10, 10, i * 10, 10, 0, CODEC_NONE) for i in range(chunks)]
    entry = ModelEntry(f"d/{name}", EntryType.REG, mode=0o755, size=10 * chunks, chunks=pieces)
    tree = MergedTree.build([model_layer(ModelEntry("d", EntryType.DIR), entry)])
    d = tree.lookup(ROOT_INODE, b"d")
    ino = tree.lookup(d, name.encode())
    assert tree.mapped_content(ino, executing=executing) == ((0, 0, chunks) if mapped else None)
    assert tree.mapped_content(d, executing=True) is None  # a directory


# ---------------------------------------------------------------- the umoci oracle


def extra_layers() -> list[list[Entry]]:
    """Cases rich_layers() lacks, all of which umoci agrees with (no symlink in the way)."""
    return [
        [
            Entry("hl/a", data=b"a"),
            Entry("hl/b", "hardlink", linkname="hl/a"),
            Entry("hl/x", data=b"x"),
            Entry("hl/y", "hardlink", linkname="hl/x"),
            Entry("tree", "dir", mode=0o750),
            Entry("tree/sub/deeper/file", data=b"deep"),
            Entry("tree/sub/link", "symlink", linkname="deeper"),
            Entry("op", "dir", mtime=T0, xattrs={"user.keep": b"lower"}),
            Entry("op/old", data=b"old"),
            Entry("op/same", data=b"lower"),
            Entry("md", "dir", xattrs={"user.lower": b"only"}),
            Entry("sticky", "dir", mode=0o1777),
            Entry("dev/zero", "char", devmajor=1, devminor=5, mode=0o666),
        ],
        [
            Entry("hl/c", "hardlink", linkname="hl/b"),  # to a lower layer's inode
            Entry(".wh.tree"),
            Entry("op/before", data=b"before the marker"),
            Entry("op/same", data=b"upper"),
            Entry("op/.wh..wh..opq"),
            Entry("op/after", data=b"after"),
            Entry("md", "dir", mode=0o700, xattrs={"user.upper": b"1"}),
            Entry("hl/.wh.y"),
        ],
        [
            Entry("hl/a", data=b"replaced"),  # b and c keep the old content, nlink 2
            Entry("tree", data=b"a file where a directory was"),
            Entry("dev/zero", "fifo", mode=0o600),
            Entry("sticky/setuid", data=b"s", mode=0o4711, uid=1000, gid=100),
        ],
    ]


def umoci_unpack(tars: list[bytes], work: Path) -> Path:
    """An OCI layout of the layer tars, unpacked by umoci; returns the rootfs."""
    image = build_image(tars, compression="gzip")
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (*image.layers, image.config, image.manifest):
        (blobs / blob.digest.hex).write_bytes(blob.data)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    descriptor = image.manifest.descriptor({"org.opencontainers.image.ref.name": "t"})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:t", str(work / "bundle")],
        check=True,
        capture_output=True,
    )
    return work / "bundle" / "rootfs"


def parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def tree_snapshot(tree: MergedTree, tars: list[bytes]) -> Tree:
    """The merged tree as :func:`tests.harness.trees.snapshot_tree` records a directory."""
    paths = walk(tree)
    names: dict[int, list[str]] = {}
    out: Tree = {}
    for path, ino in paths.items():
        a = tree.attr(ino)
        rel = path or "."
        info: dict = dict(
            path=rel,
            kind=kind(a),
            mode=stat.S_IMODE(a.mode),
            uid=a.uid,
            gid=a.gid,
            mtime=a.mtime_ns // S,
            mtime_ns=a.mtime_ns,
            xattrs={k.decode(): v for k, v in tree.xattrs(ino).items()},
        )
        if info["kind"] == "file":
            data = read_content(tree, tars, ino)
            assert len(data) == a.size, path
            info.update(size=a.size, sha256=hashlib.sha256(data).hexdigest())
        elif info["kind"] == "symlink":
            info["target"] = tree.readlink(ino).decode("utf-8", "surrogateescape")
        elif info["kind"] in ("char", "block"):
            info["rdev"] = (os.major(a.rdev), os.minor(a.rdev))
        if info["kind"] != "dir":
            names.setdefault(ino, []).append(rel)
        out[rel] = NodeInfo(**info)
    for group in names.values():
        if len(group) > 1:
            for p in group:
                out[p] = dataclasses.replace(out[p], hardlinks=frozenset(group))
    return out


@pytest.mark.parametrize("image", ["rich", "extra"])
def test_same_tree_as_umoci_unpack(tmp_path, image):
    # scripts/test installs umoci and CI runs as root: anything else is a broken set-up.
    if not shutil.which("umoci") or os.geteuid() != 0:
        pytest.fail("the umoci oracle needs umoci and root; run scripts/test", pytrace=False)
    layers = rich_layers() if image == "rich" else extra_layers()
    tars = [tar_layer(layer) for layer in layers]
    rootfs = umoci_unpack(tars, tmp_path / "umoci")
    tree = MergedTree.build(indexes(tmp_path, tars))
    expected = snapshot_tree(rootfs)
    actual = tree_snapshot(tree, tars)
    named = {e.name.rstrip("/") for layer in layers for e in layer}
    implicit = {p for name in named for p in parents(name)} - named
    diffs = compare_trees(
        expected,
        actual,
        ignore_root=True,
        ignore=["mtime"],  # compared below
        names=("umoci", "lazyfs"),
    )
    assert not diffs, "\n".join(diffs[:30])
    # Times to the nanosecond, but for what lazyfs.formats.plain loses turning PAX times
    # into float seconds (512 ns at 2**33 s: even the second can be off by one; the tree
    # copies the index's integers). umoci gives directories no entry describes the time of
    # the unpack; the tree, 0.
    for path, node in actual.items():
        if path not in implicit and path != ".":
            assert abs(node.mtime_ns - expected[path].mtime_ns) < 1000, path
    for path in implicit:
        if path in actual:
            assert actual[path].mtime_ns == 0
    # nlink, which the snapshots leave out (ext4 and tmpfs count directories like Linux).
    for path, ino in walk(tree).items():
        assert tree.attr(ino).nlink == os.lstat(rootfs / path).st_nlink, path


def test_umoci_oracle_images_hold_what_they_should(tmp_path):
    """The extra image exercises what it claims to (so agreeing with umoci means something)."""
    tars = [tar_layer(layer) for layer in extra_layers()]
    b = Built(MergedTree.build(indexes(tmp_path, tars)), tars)
    paths = b.paths()
    assert sorted(p for p in paths if p.startswith("op/")) == ["op/after", "op/before", "op/same"]
    assert b.attr("hl/b").nlink == 2 and b.attr("hl/b").ino == b.attr("hl/c").ino
    assert b.data("hl/c") == b"a"
    assert "hl/y" not in paths and b.attr("hl/x").nlink == 1
    assert stat.S_ISREG(b.attr("tree").mode)
    assert dict(b.tree.xattrs(b.ino("md"))) == {b"user.upper": b"1"}
    assert b.attr("sticky/setuid").mode == stat.S_IFREG | 0o4711


# ---------------------------------------------------------------- random layer stacks

NAMES = ("a", "b", "c")
KINDS = ("file", "file", "dir", "dir", "symlink", "hardlink", "hardlink", "fifo", "char")
KINDS += ("whiteout", "opaque")


class RefError(Exception):
    """The reference merge says the layers are invalid."""


@dataclass(eq=False)
class RefNode:
    """One node of the reference merge (hardlinked names share the object)."""

    kind: str
    mode: int = 0o755
    uid: int = 0
    mtime_ns: int = 0
    tag: int = 0  # the entry that made it (a file's chunk blob_offset)
    size: int = 0
    target: str = ""
    rdev: int = 0
    xattrs: dict = field(default_factory=dict)


def ref_remove(ref: dict[str, RefNode], path: str, *, keep_self: bool = False) -> None:
    prefix = path + "/" if path else ""
    for p in [p for p in ref if p.startswith(prefix) and p]:
        del ref[p]
    if not keep_self:
        ref.pop(path, None)


def ref_apply(ref: dict[str, RefNode], entries: list[ModelEntry]) -> None:
    """Apply one layer the plain way: whiteouts against the lower layers, then the rest."""
    for e in entries:
        parent, _, name = e.path.rpartition("/")
        if name == ".wh..wh..opq":
            if parent in ref and ref[parent].kind == "dir":
                ref_remove(ref, parent, keep_self=True)
        elif name.startswith(".wh."):
            target = f"{parent}/{name[4:]}".lstrip("/")
            if target in ref:
                ref_remove(ref, target)
    for e in entries:
        if e.path.rpartition("/")[2].startswith(".wh."):
            continue
        if e.path == "":
            root = ref[""]
            root.mode, root.uid, root.mtime_ns, root.xattrs = e.mode, e.uid, e.mtime_ns, e.xattrs
            continue
        parts = e.path.split("/")
        for k in range(1, len(parts)):
            ancestor = "/".join(parts[:k])
            if ancestor not in ref or ref[ancestor].kind != "dir":
                ref_remove(ref, ancestor)
                ref[ancestor] = RefNode("dir")
        old = ref.get(e.path)
        if e.type == EntryType.DIR:
            if old is not None and old.kind == "dir":
                old.mode, old.uid, old.mtime_ns, old.xattrs = e.mode, e.uid, e.mtime_ns, e.xattrs
                continue
            new = RefNode("dir", e.mode, e.uid, e.mtime_ns, xattrs=e.xattrs)
        elif e.type == EntryType.HARDLINK:
            new = ref.get(e.link)
            if new is None or new.kind == "dir":
                raise RefError(e.path)
            if new is old:
                continue
        elif e.type == EntryType.SYMLINK:
            new = RefNode("symlink", 0o777, e.uid, e.mtime_ns, target=e.link, size=len(e.link))
        elif e.type == EntryType.REG:
            tag = e.chunks[0].blob_offset if e.chunks else 0
            new = RefNode("file", e.mode, e.uid, e.mtime_ns, tag, e.size, xattrs=e.xattrs)
        elif e.type == EntryType.CHAR:
            new = RefNode("char", e.mode, e.uid, e.mtime_ns, rdev=os.makedev(1, e.dev_minor))
        else:
            new = RefNode("fifo", e.mode, e.uid, e.mtime_ns)
        ref_remove(ref, e.path)
        ref[e.path] = new


_IFMT = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}
_IFMT |= {"char": stat.S_IFCHR, "fifo": stat.S_IFIFO}


def check_against_reference(tree: MergedTree, ref: dict[str, RefNode]) -> None:
    paths = walk(tree)
    assert sorted(paths) == sorted(ref)
    inos = {}
    for path, node in ref.items():
        ino = paths[path]
        assert inos.setdefault(id(node), ino) == ino, f"{path}: not the same inode as its links"
        a = tree.attr(ino)
        assert a.mode == _IFMT[node.kind] | node.mode, path
        assert (a.uid, a.mtime_ns, a.rdev) == (node.uid, node.mtime_ns, node.rdev), path
        assert {k.decode(): v for k, v in tree.xattrs(ino).items()} == node.xattrs, path
        if node.kind == "dir":
            subdirs = [
                p for p, n in ref.items() if n.kind == "dir" and p and p.rpartition("/")[0] == path
            ]
            assert a.nlink == 2 + len(subdirs), path
        else:
            assert a.nlink == sum(n is node for n in ref.values()), path
        if node.kind == "file":
            assert a.size == node.size, path
            content = tree.content(ino)
            if node.size:
                layer, first, count = content
                assert count == 1
                assert tree.tables[layer].chunk(first).blob_offset == node.tag, path
            else:
                assert content is None
        if node.kind == "symlink":
            assert tree.readlink(ino) == node.target.encode(), path
    assert len(tree) == len(inos)


@st.composite
def layer_stacks(draw) -> list[list[ModelEntry]]:
    """1 to 4 layers of up to 8 entries over a few names, so that paths collide.

    Hardlink targets are mostly non-directories the layers below left or this layer made
    earlier, so that most stacks are valid (the others must fail the same way).
    """
    tags = iter(range(1, 1_000_000))
    paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
    dirs = st.lists(st.sampled_from(NAMES), max_size=2).map("/".join)
    layers: list[list[ModelEntry]] = []
    below = {"": RefNode("dir")}
    for _ in range(draw(st.integers(1, 4))):
        mentioned = [p for p, node in below.items() if node.kind != "dir"]
        entries = []
        for _ in range(draw(st.integers(0, 8))):
            kind = draw(st.sampled_from(KINDS))
            if kind == "hardlink" and not mentioned and draw(st.integers(0, 3)):
                kind = "file"
            meta = dict(
                mode=draw(st.sampled_from([0o755, 0o644, 0o4750, 0o1777])),
                uid=draw(st.sampled_from([0, 1, 1000])),
                mtime_ns=draw(st.sampled_from([0, 5, T0 * S])),
            )
            xattrs = draw(st.sampled_from([{}, {"user.x": b"1"}, {"user.y": b""}]))
            if kind == "whiteout":
                parent = draw(dirs)
                name = ".wh." + draw(st.sampled_from(NAMES))
                entries.append(ModelEntry(f"{parent}/{name}".lstrip("/"), EntryType.REG))
                continue
            if kind == "opaque":
                parent = draw(dirs)
                entries.append(ModelEntry(f"{parent}/.wh..wh..opq".lstrip("/"), EntryType.REG))
                continue
            path = draw(paths) if draw(st.integers(0, 20)) else ""
            if kind == "dir" or not path:
                entries.append(ModelEntry(path, EntryType.DIR, **meta, xattrs=xattrs))
            elif kind == "file":
                size = draw(st.integers(0, 3))
                chunks = [Chunk(0, size, next(tags), size, 0, CODEC_NONE)] if size else []
                entries.append(
                    ModelEntry(path, EntryType.REG, **meta, size=size, chunks=chunks, xattrs=xattrs)
                )
            elif kind == "symlink":
                target = draw(st.sampled_from(["a", "../b", "/c/a"]))
                entries.append(ModelEntry(path, EntryType.SYMLINK, **meta, link=target))
            elif kind == "hardlink":
                target = draw(st.sampled_from(mentioned) if mentioned else paths)
                entries.append(ModelEntry(path, EntryType.HARDLINK, link=target))
            elif kind == "char":
                minor = draw(st.integers(0, 3))
                entries.append(
                    ModelEntry(path, EntryType.CHAR, **meta, dev_major=1, dev_minor=minor)
                )
            else:
                entries.append(ModelEntry(path, EntryType.FIFO, **meta))
            if path and kind != "dir":
                mentioned.append(path)
        layers.append(entries)
        try:
            ref_apply(below, entries)
        except RefError:
            pass  # invalid already: the targets that follow matter less
    return layers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer_stacks())
def test_random_layer_stacks_match_a_reference_merge(layers):
    ref = {"": RefNode("dir")}
    try:
        for entries in layers:
            ref_apply(ref, entries)
    except RefError as exc:
        with pytest.raises(LayerIndexError, match="hardlink") as info:
            MergedTree.build([model_layer(*entries) for entries in layers])
        assert f"entry {str(exc)!r}" in str(info.value)
        return
    tree = MergedTree.build([model_layer(*entries) for entries in layers])
    check_against_reference(tree, ref)
    again = MergedTree.build([model_layer(*entries) for entries in layers])
    assert walk(again) == walk(tree)


# ---------------------------------------------------------------- a million entries


def synthetic_layer(dirs: int, files: int) -> LayerIndex:
    """``dirs`` directories of ``files`` one-chunk files each, built without a tar."""
    digest = Digest("sha256:" + "ab" * 32)
    entries = []
    offset = 0
    for d in range(dirs):
        directory = f"usr/share/dir-{d:05d}"
        entries.append(ModelEntry(directory, EntryType.DIR, mode=0o755, mtime_ns=T0 * S))
        for f in range(files):
            size = 1000 + (d * files + f) % 5000
            chunk = Chunk(0, size, offset, size, 0, CODEC_NONE, digest)
            entries.append(
                ModelEntry(
                    f"{directory}/file-{f:06d}.dat",
                    EntryType.REG,
                    size=size,
                    mtime_ns=T0 * S,
                    chunks=[chunk],
                )
            )
            offset += size
    return LayerIndex("tar", digest, offset, entries)


@pytest.mark.slow
def test_a_million_entries_build_and_answer():
    dirs, files = 1000, 1000
    tree = MergedTree.build([synthetic_layer(dirs, files)])
    assert len(tree) == dirs * files + dirs + 3  # + root, usr, usr/share
    assert len(tree.tables[0]) == dirs * files
    per_entry = tree.memory_bytes() / (dirs * files + dirs)
    print(f"\n{len(tree)} inodes, {per_entry:.0f} bytes per entry (memory_bytes)")
    assert per_entry < 300
    share = tree.lookup(tree.lookup(ROOT_INODE, b"usr"), b"share")
    listing = tree.children(share)
    assert len(listing) == dirs
    for d in (0, 1, 517, dirs - 1):
        name, ino = listing[d]
        assert name == f"dir-{d:05d}".encode()
        assert tree.lookup(share, name) == ino
        files_of = tree.children(ino)
        assert len(files_of) == files
        assert tree.attr(ino).nlink == 2
        for f in (0, 1, 499, files - 1):
            child = tree.lookup(ino, f"file-{f:06d}.dat".encode())
            assert files_of[f] == (f"file-{f:06d}.dat".encode(), child)
            size = 1000 + (d * files + f) % 5000
            assert tree.attr(child).size == size
            layer, first, count = tree.content(child)
            assert (layer, first, count) == (0, d * files + f, 1)
            assert tree.tables[0].chunk(first).size == size
            assert tree.path(child) == f"usr/share/dir-{d:05d}/file-{f:06d}.dat"
        assert tree.lookup(ino, b"file-1000000.dat") is None
