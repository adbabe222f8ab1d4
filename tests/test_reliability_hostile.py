"""Hostile images through a real registry and a real ``lazyfs mount``.

Each image is built from raw tar entries that a careless extractor would follow out of its
root: ``..`` and absolute names, a symlink to ``/etc`` with an entry beneath it, hardlinks
to missing or outside targets, duplicate names, whiteouts of the root, names that are not
UTF-8, 10,000 nested directories, a header declaring more data than the layer holds. Each
must either be refused by ``lazyfs mount`` with one line naming the layer and the entry, or
mount with the safe interpretation documented in README.md ("Reliability and security"). The
mount never touches the host's files (``/etc/passwd`` is hashed before and after), nothing
is created outside the cache and the mount point, and nothing stays mounted.

Below that, a chunk that decompresses to far more than it declares (a decompression bomb)
is cut at the declared size and refused, without inflating it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import zstandard

from lazyfs.control import is_mountpoint
from lazyfs.errors import ChunkError
from lazyfs.formats.chunks import decode_chunk
from lazyfs.formats.model import CODEC_ZSTD, Chunk
from lazyfs.oci.digest import Digest
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from tests.harness.images import build_image, push_image

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.fail("these tests need /dev/fuse and fusermount3; run scripts/test", pytrace=False)


def _lazyfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True, timeout=120
    )


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], *, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, errors="surrogateescape") as tar:
        for info, data in members:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


def _node(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755
    return info, b""


def _push(registry, layers: list[bytes]) -> str:
    ref = Reference.parse(f"{registry.host}/hostile/{uuid.uuid4().hex[:10]}:v1")

    async def main() -> None:
        async with RegistryClient() as client:
            await push_image(client, ref, build_image(layers))

    trio.run(main)
    return str(ref)


@contextlib.contextmanager
def _attempt(registry, layers: list[bytes], tmp_path: Path) -> Iterator[tuple[Path | None, str]]:
    """Mount an image of ``layers``: yield the mount point (None if refused) and stderr."""
    ref = _push(registry, layers)
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    result = _lazyfs("mount", "--daemon", "--no-prefetch", "--cache-dir", str(cache), ref, str(mnt))
    try:
        yield (mnt if result.returncode == 0 else None), result.stderr
    finally:
        if is_mountpoint(mnt):
            done = _lazyfs("umount", str(mnt))
            if is_mountpoint(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            assert done.returncode == 0, done.stderr
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == passwd
    # Nothing but the mount point and the cache (chunks, layer copies, logs) was created.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mnt"]
    assert {p.name for p in cache.iterdir()} <= {"chunks", "layers", "logs"}, list(cache.iterdir())
    assert list(mnt.iterdir()) == []


def _refused(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazyfs: error: layer #"), stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


@pytest.mark.parametrize(
    ("members", "needles"),
    [
        ([_file("../escape")], ["'..'", "escape"]),
        ([_file("a/../../escape")], ["'..'"]),
        ([_file("f"), _node("h", tarfile.LNKTYPE, "missing")], ["entry 'h'", "missing"]),
        ([_file("f"), _node("h", tarfile.LNKTYPE, "../../etc/passwd")], ["'..'"]),
        ([_node("h", tarfile.LNKTYPE, "/")], ["root"]),
        ([_node("h", tarfile.LNKTYPE, "/etc/passwd")], ["entry 'h'", "etc/passwd"]),
    ],
    ids=[
        "dotdot",
        "dotdot-inside",
        "hardlink-missing",
        "hardlink-outside",
        "hardlink-root",
        "hardlink-absolute",
    ],
)
def test_escaping_names_are_refused_naming_layer_and_entry(registry, tmp_path, members, needles):
    with _attempt(registry, [_tar(members)], tmp_path) as (mnt, stderr):
        assert mnt is None, "mounted an image that escapes its root"
        _refused(stderr, *needles)


def test_a_header_declaring_more_than_the_layer_holds_is_refused(registry, tmp_path):
    tar = bytearray(_tar([_file("big", b"y" * 1024)]))
    header = tar.index(b"big\0") // 512 * 512  # the file's own header (after any PAX one)
    tar[header + 124 : header + 136] = b"%011o\0" % ((1 << 33) - 1)  # 8 GiB declared
    checksum = sum(tar[header : header + 148]) + 8 * 32 + sum(tar[header + 156 : header + 512])
    tar[header + 148 : header + 156] = b"%06o\0 " % checksum
    with _attempt(registry, [bytes(tar[: header + 512 + 1024])], tmp_path) as (mnt, stderr):
        assert mnt is None
        _refused(stderr, "not a valid tar")


def test_absolute_names_stay_inside_the_mount(registry, tmp_path):
    name = f"/tmp/lazyfs-hostile-{uuid.uuid4().hex}"
    with _attempt(registry, [_tar([_file(name, b"inside")])], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        assert (mnt / name.lstrip("/")).read_bytes() == b"inside"
        assert not os.path.lexists(name)


def test_an_entry_under_a_symlink_to_etc_is_never_followed(registry, tmp_path):
    members = [_node("a", tarfile.SYMTYPE, "/etc"), _file("a/passwd", b"image passwd\n")]
    lower = _tar([_node("b", tarfile.SYMTYPE, "/etc")])
    upper = _tar([_file("b/passwd", b"upper passwd\n")])
    with _attempt(registry, [_tar(members), lower, upper], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        # The directory the entry needs replaces the symlink in the way (as tar and umoci
        # extract it); host's /etc is never looked at.
        for d, text in (("a", b"image passwd\n"), ("b", b"upper passwd\n")):
            assert (mnt / d).is_dir() and not (mnt / d).is_symlink()
            assert (mnt / d / "passwd").read_bytes() == text
            assert os.listdir(mnt / d) == ["passwd"]


def test_duplicate_names_keep_the_last(registry, tmp_path):
    members = [_file("dup", b"first"), _file("dup", b"second"), _node("d", tarfile.DIRTYPE)]
    members += [_file("d", b"file over dir")]
    with _attempt(registry, [_tar(members)], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        assert sorted(os.listdir(mnt)) == ["d", "dup"]
        assert (mnt / "dup").read_bytes() == b"second"
        assert (mnt / "d").read_bytes() == b"file over dir"


def test_an_opaque_root_hides_the_lower_layers_and_keeps_the_root(registry, tmp_path):
    lower = _tar([_file("keep", b"lower"), _file("dir/f", b"f")])
    upper = _tar([_file(".wh..wh..opq", b""), _file("new", b"upper")])
    with _attempt(registry, [lower, upper], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        assert sorted(os.listdir(mnt)) == ["new"]  # OCI's rule for an opaque directory
        assert (mnt / "new").read_bytes() == b"upper"


@pytest.mark.parametrize("name", [".wh..", "./.wh..", "dir/.wh.."])
def test_a_whiteout_of_dot_is_refused(registry, tmp_path, name):
    lower = _tar([_file("keep", b"lower"), _file("dir/f", b"f")])
    with _attempt(registry, [lower, _tar([_file(name, b"")])], tmp_path) as (mnt, stderr):
        assert mnt is None, "a whiteout of '.' was accepted"
        _refused(stderr, "layer #1", "entry '", "whiteout of '.'")


def test_names_that_are_not_utf8_are_served_as_bytes(registry, tmp_path):
    members = [_file("bad\udcff\udcfe", b"raw name"), _file("ok", b"ok")]
    with _attempt(registry, [_tar(members, fmt=tarfile.GNU_FORMAT)], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        assert sorted(os.listdir(os.fsencode(mnt))) == [b"bad\xff\xfe", b"ok"]
        assert (mnt / "bad\udcff\udcfe").read_bytes() == b"raw name"


def test_ten_thousand_nested_directories(registry, tmp_path):
    depth = 10_000
    name = "/".join(["d"] * depth) + "/leaf"
    with _attempt(registry, [_tar([_file(name, b"deep")])], tmp_path) as (mnt, stderr):
        assert mnt is not None, stderr
        started = time.monotonic()
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for _ in range(depth):
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nxt
            leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
            try:
                assert os.read(leaf, 100) == b"deep"
            finally:
                os.close(leaf)
        finally:
            os.close(fd)
        assert time.monotonic() - started < 60


def test_a_decompression_bomb_stops_at_the_declared_size():
    declared = b"A" * 4096
    bomb = zstandard.ZstdCompressor(level=19).compress(b"A" * (512 << 20))  # 512 MiB
    assert len(bomb) < 64 * 1024
    chunk = Chunk(0, len(declared), 0, len(bomb), 0, CODEC_ZSTD, Digest.of(declared))
    tracemalloc.start()
    started = time.monotonic()
    try:
        # The first 4 KiB are what was declared: they verify; nothing more is inflated.
        assert decode_chunk(chunk, bomb, what="bomb") == declared
        lying = Chunk(0, 4096, 0, len(bomb), 0, CODEC_ZSTD, Digest.of(b"B" * 4096))
        with pytest.raises(ChunkError, match="does not match its digest"):
            decode_chunk(lying, bomb, what="bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert time.monotonic() - started < 2
