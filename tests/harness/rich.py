"""A rich test image: every entry type and every whiteout case, in three layers.

Shared by the tests that need an image exercising everything an unpacker or a merged tree
must get right (the converter's round trip, the mount's oracle comparison with umoci).
"""

from __future__ import annotations

import random

from tests.harness.images import Entry

MiB = 1 << 20
#: The chunk size tests convert this image with; some files are sized around it.
CHUNK = 64 * 1024
T0 = 1_700_000_000
LONG_NAME = "long/" + "d" * 90 + "/" + "f" * 150  # a 246-byte path: PAX path record
DEEP_NAME = "deep/" + "/".join(c * 60 for c in "wxyz") + "/leaf-" + "q" * 40  # 294 bytes


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------- the source image


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def rich_layers() -> list[list[Entry]]:
    """Three layers: every entry type in the first, whiteouts and replacements above it."""
    base = [
        Entry("etc", "dir"),
        Entry("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
        Entry("empty"),
        Entry("data", "dir"),
        Entry(
            "data/small.txt",
            data=b"small\n",
            mode=0o640,
            uid=1000,
            gid=1000,
            uname="alice",
            gname="staff",
        ),
        # Incompressible, 3 MiB + a bit: 49 chunks of 64 KiB, the last one short.
        Entry("data/big.bin", data=noise(3 * MiB + 12_345, 1)),
        Entry("data/zeros.bin", data=bytes(MiB)),
        Entry("data/one-chunk.bin", data=noise(CHUNK, 2)),
        Entry("data/two-chunks.bin", data=noise(2 * CHUNK, 3)),
        Entry("data/small.hl", "hardlink", linkname="data/small.txt"),
        Entry("modes", "dir"),
        Entry("modes/setuid", data=b"su", mode=0o4755),
        Entry("modes/setgid", data=b"sg", mode=0o2711),
        Entry("modes/all-special", data=b"x", mode=0o7777),
        Entry("modes/none", data=b"n", mode=0o000),
        Entry("modes/odd", data=b"o", mode=0o407),
        Entry("modes/sticky", "dir", mode=0o1777),
        Entry("modes/private", "dir", mode=0o700, uid=2000, gid=3000),
        Entry("links", "dir"),
        Entry("links/rel", "symlink", linkname="../data/small.txt"),
        Entry("links/abs", "symlink", linkname="/etc/passwd"),
        Entry("links/dangling", "symlink", linkname="no/such/target"),
        Entry("links/dir", "symlink", linkname="../data"),
        Entry("links/long", "symlink", linkname="../" + LONG_NAME),  # PAX linkpath
        Entry("hl", "dir"),
        Entry("hl/a", data=b"three names\n", mode=0o600, uid=7, gid=8),
        Entry("hl/b", "hardlink", linkname="hl/a"),
        Entry("hl/c", "hardlink", linkname="hl/a"),
        Entry("dev", "dir"),
        Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
        Entry("dev/sda", "block", devmajor=8, devminor=0, mode=0o660, gid=6),
        Entry("dev/nvme", "block", devmajor=259, devminor=70_000, mode=0o600),
        Entry("dev/fifo", "fifo", mode=0o620),
        Entry("xattr", "dir", xattrs={"user.dir": b"on a dir"}),
        Entry(
            "xattr/file",
            data=b"x",
            xattrs={"user.bin": bytes([0, 1, 2, 255, 254, 128, 0]), "user.text": b"hello"},
        ),
        Entry("ids", "dir"),
        Entry("ids/big", data=b"u", uid=3_000_000, gid=4_000_000, uname="far", gname="away"),
        Entry("ids/nobody", data=b"n", uid=65534, gid=65534, uname="nobody", gname="nogroup"),
        Entry("times", "dir"),
        Entry("times/fraction", data=b"f", mtime=1_600_000_000.25),  # type: ignore[arg-type]
        Entry("times/epoch", data=b"e", mtime=0),
        Entry("times/1950", data=b"o", mtime=-631_152_000),
        Entry("times/2242", data=b"u", mtime=2**33 + 1),  # past the 11 octal digits of ustar
        *[Entry(d, "dir") for d in _parents(LONG_NAME)],
        Entry(LONG_NAME, data=b"long\n"),
        *[Entry(d, "dir", mode=0o751) for d in _parents(DEEP_NAME)],
        Entry(DEEP_NAME, data=b"deep\n"),
        Entry("unicode", "dir"),
        Entry("unicode/h\u00e9llo w\u00f6rld.txt", data="\u00e9\n".encode()),
        Entry("unicode/\u65e5\u672c\u8a9e", "dir"),
        Entry("unicode/\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb", data=b"jp\n"),
        Entry("unicode/emoji-\U0001f389", "symlink", linkname="h\u00e9llo w\u00f6rld.txt"),
        # What layer 1 removes or replaces.
        Entry("gone_file", data=b"whited out\n"),
        Entry("gone_dir", "dir"),
        Entry("gone_dir/a", data=b"a"),
        Entry("gone_dir/sub", "dir"),
        Entry("gone_dir/sub/b", data=b"b"),
        Entry("opaque", "dir"),
        Entry("opaque/old", data=b"old"),
        Entry("opaque/oldsub/x", data=b"x"),
        Entry("dir2file", "dir"),
        Entry("dir2file/child", data=b"c"),
        Entry("file2dir", data=b"was a file"),
        Entry("wh_then_dir", data=b"was a file too"),
        Entry("meta", "dir", mtime=T0, xattrs={"user.v": b"1"}),
        Entry("meta/keep", data=b"k"),
    ]
    upper = [
        Entry(".wh.gone_file"),
        Entry(".wh.gone_dir"),
        Entry("opaque", "dir", mtime=T0 + 5),
        Entry("opaque/.wh..wh..opq"),
        Entry("opaque/new", data=b"new"),
        Entry("dir2file", data=b"now a file\n"),  # a file over a directory, no whiteout
        Entry("file2dir", "dir", mode=0o711),  # a directory over a file, no whiteout
        Entry("file2dir/child", data=b"now a dir\n"),
        Entry(".wh.wh_then_dir"),  # whiteout, then a directory in its place
        Entry("wh_then_dir", "dir"),
        Entry("wh_then_dir/inner", data=b"i"),
        Entry(
            "meta",
            "dir",
            mode=0o750,
            uid=1000,
            gid=1001,
            mtime=T0 + 1000,
            xattrs={"user.v": b"2", "user.w": b"new"},
        ),
        Entry("meta/added", data=b"added"),
        # No entries for implicit/, implicit/a/, implicit/a/b/.
        Entry("implicit/a/b/c.txt", data=b"no parents in the tar\n"),
        Entry("implicit/a/b/c.hl", "hardlink", linkname="implicit/a/b/c.txt"),
        Entry("implicit/a/d", "symlink", linkname="b/c.txt"),
        # Replaces one name of layer 0's hardlink pair: the pair is broken.
        Entry("data/small.txt", data=b"replaced\n", mode=0o644),
    ]
    top = [
        Entry("hl/.wh.c"),  # one name of the group of three goes
        Entry("implicit/a/.wh.d"),  # a whiteout of the layer just below
        Entry("etc/passwd", data=b"changed in layer 2\n", mode=0o600),
    ]
    return [base, upper, top]
