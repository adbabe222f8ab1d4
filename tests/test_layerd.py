"""``lazyfs layerd`` for real: layers served over FUSE as overlayfs lower dirs, used by overlayfs.

One daemon (started through :class:`~lazyfs.snapshotter.layers.LayerServer`, as the
snapshotter does) serves the module's tests: the rich test image (every whiteout case),
converted to zstd:chunked, in a real CNCF registry. Real overlay mounts are made over its
layer directories and compared with ``lazyfs mount`` of the same image. Nothing may stay
mounted or running after the module, passing or failing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.control import is_mountpoint
from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.errors import LazyfsError
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from lazyfs.snapshotter.layers import LayerServer, NotLazy
from tests.harness.images import BuiltImage, Entry, build_image, push_image
from tests.harness.rich import CHUNK, rich_layers
from tests.harness.trees import assert_same_tree, snapshot_tree

if not os.path.exists("/dev/fuse"):
    pytest.fail("/dev/fuse is missing: these tests need FUSE", pytrace=False)
if os.geteuid() != 0:
    pytest.fail("the layerd tests mount overlayfs: they must run as root", pytrace=False)

OPAQUE = "trusted.overlay.opaque"


def _run(coro_fn) -> None:
    trio.run(coro_fn)


def _push(ref: Reference, image: BuiltImage) -> None:
    async def main():
        async with RegistryClient() as client:
            await push_image(client, ref, image)

    _run(main)


def _convert(src: Reference, dst: Reference) -> None:
    async def main():
        async with RegistryClient() as client:
            await convert_image(
                open_store(str(src), client),
                open_store(str(dst), client),
                ConvertOptions(chunk_size=CHUNK),
                NullProgress(),
            )

    _run(main)


def _layers_of(ref: Reference) -> list[tuple[str, int]]:
    """(digest, size) of each layer of ``ref``, bottom first."""
    out: list[tuple[str, int]] = []

    async def main():
        async with RegistryClient() as client:
            image = await client.resolve(ref)
            out.extend((str(d.digest), d.size) for d in image.manifest.layers)

    _run(main)
    return out


def _ref(registry, name: str) -> Reference:
    return Reference.parse(f"{registry.host}/layerd/{name}-{uuid.uuid4().hex[:8]}:v1")


def _lazyfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True, timeout=timeout
    )


def _detach(path: Path) -> None:
    if is_mountpoint(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def overlay(target: Path, lowers: list[Path]) -> Iterator[Path]:
    """A read-only overlay of ``lowers`` (top first) at ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    option = "lowerdir=" + ":".join(str(p) for p in lowers)
    result = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", option, str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    try:
        yield target
    finally:
        _detach(target)
        assert not is_mountpoint(target)


@contextlib.contextmanager
def lazyfs_mount(ref: Reference, mountpoint: Path, cache: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = _lazyfs("mount", "--daemon", "--cache-dir", str(cache), str(ref), str(mountpoint))
    assert result.returncode == 0, result.stderr
    try:
        yield mountpoint
    finally:
        done = _lazyfs("umount", str(mountpoint))
        _detach(mountpoint)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def images(registry):
    """The rich image as gzip (not lazy) and converted to zstd:chunked, plus a small extra."""
    gzip_ref, chunked_ref = _ref(registry, "rich"), _ref(registry, "rich-chunked")
    _push(gzip_ref, build_image(rich_layers(), compression="gzip"))
    _convert(gzip_ref, chunked_ref)
    extra_src, extra_ref = _ref(registry, "extra"), _ref(registry, "extra-chunked")
    extra = [Entry("added", "dir"), Entry("added/late.txt", data=b"added while in use\n")]
    _push(extra_src, build_image([extra], compression="gzip"))
    _convert(extra_src, extra_ref)
    return {"gzip": gzip_ref, "chunked": chunked_ref, "extra": extra_ref}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[LayerServer]:
    root = tmp_path_factory.mktemp("layerd-root")
    layers = LayerServer(root, cache_dir=root / "chunk-cache")
    try:
        layers.ensure_running()
        yield layers
    finally:
        for path in root.glob("mnt-*"):
            _detach(path)
        layers.stop()
        assert not is_mountpoint(layers.mountpoint)
        assert layers.ping() is None


def _add_all(server: LayerServer, ref: Reference) -> list[Path]:
    """Add every layer of ``ref`` (by reference and digest only); their dirs, bottom first."""
    return [server.add_layer(str(ref), digest) for digest, _ in _layers_of(ref)]


def test_each_layer_is_a_lower_dir_with_overlay_whiteouts(server, images):
    started = time.monotonic()
    dirs = _add_all(server, images["chunked"])
    digests = [d for d, _ in _layers_of(images["chunked"])]
    assert dirs == [server.mountpoint / d.removeprefix("sha256:") for d in digests]
    assert all(server.has_layer(d) for d in digests)
    assert {p.name for p in dirs} <= set(os.listdir(server.mountpoint))
    # Adding again is a no-op that answers at once.
    again = time.monotonic()
    assert _add_all(server, images["chunked"]) == dirs
    assert time.monotonic() - again < max(1.0, (again - started) / 2)
    base, upper, top = dirs
    for path, name in ((upper, "gone_file"), (upper, "gone_dir"), (top, "hl/c")):
        st = os.lstat(path / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), name
    assert os.getxattr(upper / "opaque", OPAQUE) == b"y"
    assert sorted(os.listdir(upper / "opaque")) == ["new"]
    assert not os.path.lexists(upper / "opaque" / ".wh..wh..opq")
    with pytest.raises(OSError):
        os.getxattr(base / "opaque", OPAQUE)
    # Each directory is its layer alone: what upper layers remove is still in the base.
    assert (base / "gone_file").read_bytes() == b"whited out\n"
    assert (top / "etc" / "passwd").read_bytes() == b"changed in layer 2\n"
    assert not (top / "data").exists()
    assert {e["digest"] for e in server.list_layers()} >= set(digests)


def test_overlay_of_the_layers_equals_lazyfs_mount_of_the_image(server, images, tmp_path):
    dirs = _add_all(server, images["chunked"])
    with (
        overlay(server.root / "mnt-overlay", list(reversed(dirs))) as merged,
        lazyfs_mount(images["chunked"], tmp_path / "mnt", tmp_path / "cache") as mounted,
    ):
        assert_same_tree(
            snapshot_tree(mounted),
            snapshot_tree(merged),
            exact_mtime=True,
            ignore_root=True,
            # Upper layers write into these without a tar entry for the directory itself:
            # a layer served alone cannot know the lower directory's metadata and makes it up
            # (0755 0:0, mtime 0), and overlayfs shows the topmost directory's. (Docker and
            # BuildKit layers carry an entry for every parent of a changed path.)
            ignore=[(path, "mtime") for path in ("data", "etc", "hl")],
            names=("lazyfs mount", "overlay of layerd's layers"),
        )
    stats = server.stats()
    rows = {row["digest"]: row for row in stats["layers"]}
    assert all(
        rows[str_digest]["bytes_fetched"] > 0 for str_digest, _ in _layers_of(images["chunked"])[:1]
    )
    assert stats["total"]["fuse_errors"] == 0 and stats["total"]["errors"] == 0
    assert stats["total"]["bytes_fetched"] <= sum(s for _, s in _layers_of(images["chunked"]))
    assert stats["registry"]["bytes_received"] >= stats["total"]["bytes_fetched"]


def test_a_layer_added_while_an_overlay_is_in_use(server, images):
    dirs = _add_all(server, images["chunked"])
    with overlay(server.root / "mnt-busy", list(reversed(dirs))) as merged:
        with open(merged / "data" / "big.bin", "rb") as busy:
            head = busy.read(1000)
            (extra,) = _add_all(server, images["extra"])
            assert extra.name in os.listdir(server.mountpoint)
            assert (extra / "added" / "late.txt").read_bytes() == b"added while in use\n"
            assert busy.read(1000) != head and (merged / "opaque" / "new").read_bytes() == b"new"
        with overlay(server.root / "mnt-extra", [extra, *reversed(dirs)]) as second:
            assert (second / "added" / "late.txt").read_bytes() == b"added while in use\n"
            assert (second / "etc" / "passwd").read_bytes() == b"changed in layer 2\n"


def _held(server: LayerServer, digest: str) -> bool:
    """True while the daemon keeps a removed layer because the kernel holds its inodes."""
    return any(row["digest"] == digest for row in server.stats()["layers"])


def test_removed_layers_disappear_and_can_come_back(server, images):
    dirs = _add_all(server, images["chunked"])
    (extra,) = _add_all(server, images["extra"])
    digest = "sha256:" + extra.name
    with overlay(server.root / "mnt-removed", [extra, dirs[0]]) as merged:
        server.remove_layer(digest)
        server.remove_layer(digest)  # nothing to remove: no error
        assert not server.has_layer(digest)
        assert extra.name not in os.listdir(server.mountpoint)
        assert not extra.exists()
        # The overlay still holds the layer: it is still served, and still readable.
        assert _held(server, digest)
        assert (merged / "added" / "late.txt").read_bytes() == b"added while in use\n"
    # Once the kernel has forgotten its inodes, the layer is released (fetcher stopped).
    deadline = time.monotonic() + 10
    while _held(server, digest):
        assert time.monotonic() < deadline, "the removed layer was never released"
        time.sleep(0.05)
    assert server.add_layer(str(images["extra"]), digest) == extra
    assert (extra / "added" / "late.txt").read_bytes() == b"added while in use\n"


def test_layers_without_an_index_are_refused_as_not_lazy(server, images):
    digest = _layers_of(images["gzip"])[0][0]
    with pytest.raises(NotLazy, match="no eStargz or zstd:chunked index"):
        server.add_layer(str(images["gzip"]), digest)
    assert not server.has_layer(digest)
    missing = "sha256:" + "0" * 64
    with pytest.raises(Exception, match="is not in the image") as info:
        server.add_layer(str(images["chunked"]), missing)
    assert not isinstance(info.value, NotLazy)


def test_plain_layers_are_streamed_with_stream_plain(images, tmp_path):
    plain = LayerServer(tmp_path / "root", extra_args=["--stream-plain", "--no-prefetch"])
    try:
        plain.ensure_running()
        base, upper, _ = [
            plain.add_layer(str(images["gzip"]), digest) for digest, _ in _layers_of(images["gzip"])
        ]
        assert (base / "data" / "small.txt").read_bytes() == b"small\n"
        assert (upper / "data" / "small.txt").read_bytes() == b"replaced\n"
        st = os.lstat(upper / "gone_dir")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert os.getxattr(upper / "opaque", OPAQUE) == b"y"
        assert plain.stats()["total"]["local_chunks"] > 0
        assert (tmp_path / "root" / "cache").is_dir()  # the default cache: ROOT/cache
    finally:
        plain.stop()
    assert not is_mountpoint(plain.mountpoint)


def test_lazyfs_stats_reads_the_daemon(server, images):
    _add_all(server, images["chunked"])
    result = _lazyfs("stats", "--json", str(server.mountpoint))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["layer_count"] >= 3 and stats["fetch"]["total"]["fuse_errors"] == 0
    text = _lazyfs("stats", str(server.mountpoint))
    assert text.returncode == 0 and "total" in text.stdout, text.stderr


def test_a_killed_daemon_is_replaced_and_layers_are_added_again(server, images):
    dirs = _add_all(server, images["chunked"])
    old = server.ping()
    assert old is not None
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.ping() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ping() is None
    assert is_mountpoint(server.mountpoint)  # the dead daemon's mount is left behind
    server.ensure_running()
    new = server.ping()
    assert new is not None and new["pid"] != old["pid"]
    assert server.list_layers() == []
    assert _add_all(server, images["chunked"]) == dirs
    assert (dirs[2] / "etc" / "passwd").read_bytes() == b"changed in layer 2\n"
    assert (dirs[0] / "data" / "small.txt").read_bytes() == b"small\n"


def test_sigterm_unmounts_and_exits(server, images):
    (extra,) = _add_all(server, images["extra"])
    pid = server.ping()["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while (server.ping() is not None or is_mountpoint(server.mountpoint)) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not is_mountpoint(server.mountpoint), "still mounted after SIGTERM"
    assert server.ping() is None and not server.socket_path.exists()
    with pytest.raises(LazyfsError, match="not running"):
        server.has_layer("sha256:" + extra.name)
