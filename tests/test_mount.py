"""``lazyfs mount`` for real: a FUSE mount of images in a real registry, compared with umoci.

Each test mounts with the ``lazyfs`` command (``--daemon``), looks at the mount the way
a program would (lstat, read, getxattr), and unmounts with ``lazyfs umount``. Nothing may
stay mounted after a test, passing or failing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.control import is_mountpoint
from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.images import Entry, build_image, push_image
from tests.harness.rich import CHUNK, T0, noise, rich_layers
from tests.harness.trees import assert_same_tree, snapshot_tree

if not os.path.exists("/dev/fuse"):
    pytest.fail("/dev/fuse is missing: these tests need FUSE", pytrace=False)
for _tool in ("skopeo", "umoci", "fusermount3"):
    if shutil.which(_tool) is None:
        pytest.fail(f"{_tool} is missing; run scripts/test", pytrace=False)


def lazyfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def mounted(ref: str, mountpoint: Path, cache_dir: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = lazyfs(
        "mount", "--daemon", "--cache-dir", str(cache_dir), *options, ref, str(mountpoint)
    )
    assert result.returncode == 0, result.stderr
    assert is_mountpoint(mountpoint)
    try:
        yield mountpoint
    finally:
        done = lazyfs("umount", str(mountpoint))
        assert done.returncode == 0, done.stderr
        assert not is_mountpoint(mountpoint), "still mounted after lazyfs umount"


def stats(mountpoint: Path) -> dict:
    result = lazyfs("stats", "--json", str(mountpoint))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def new_ref(registry, name: str) -> Reference:
    return Reference.parse(f"{registry.host}/mount/{name}-{uuid.uuid4().hex[:8]}:v1")


def push(ref: Reference, image) -> None:
    async def main():
        async with RegistryClient() as client:
            await push_image(client, ref, image)

    trio.run(main)


def convert(src: Reference, dst: Reference, **options) -> None:
    async def main():
        async with RegistryClient() as client:
            await convert_image(
                open_store(str(src), client),
                open_store(str(dst), client),
                ConvertOptions(chunk_size=CHUNK, **options),
                NullProgress(),
            )

    trio.run(main)


def umoci_unpack(ref: Reference, work: Path) -> Path:
    layout = work / "layout"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:t",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:t", str(work / "bundle")],
        check=True,
        capture_output=True,
    )
    return work / "bundle" / "rootfs"


#: Where a lazyfs mount and umoci's unpack may differ: umoci makes the root directory itself
#: and gives directories no tar entry describes (implicit parents) the time of the unpack;
#: lazyfs gives those mtime 0.
IGNORE = dict(
    ignore_root=True,
    ignore=[(p, "mtime") for p in ("implicit", "implicit/a", "implicit/a/b")],
    names=("umoci", "lazyfs"),
)


@pytest.fixture(scope="module")
def rich(registry, tmp_path_factory):
    """The rich image as plain gzip, plain zstd and converted zstd:chunked; umoci's unpack."""
    layers = rich_layers()
    refs = {
        "gzip": new_ref(registry, "rich-gzip"),
        "zstd": new_ref(registry, "rich-zstd"),
        "zstd:chunked": new_ref(registry, "rich-chunked"),
    }
    push(refs["gzip"], build_image(layers, compression="gzip"))
    push(refs["zstd"], build_image(layers, compression="zstd"))
    convert(refs["gzip"], refs["zstd:chunked"])
    oracle = snapshot_tree(umoci_unpack(refs["gzip"], tmp_path_factory.mktemp("umoci")))
    return refs, oracle


@pytest.mark.parametrize("fmt", ["zstd:chunked", "gzip", "zstd"])
def test_mount_equals_umoci_unpack(rich, fmt, tmp_path):
    refs, oracle = rich
    with mounted(str(refs[fmt]), tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(oracle, snapshot_tree(mnt), exact_mtime=True, **IGNORE)


@pytest.fixture(scope="module")
def peer_converted(rich, containerd):
    """The rich image converted by stargz-snapshotter's ctr-remote: eStargz and its zstd form."""
    refs, _ = rich
    source = str(refs["gzip"])
    containerd.ctr_remote("image", "pull", "--plain-http", source)
    out = {}
    for fmt, option in (("estargz", "--estargz"), ("stargz-zstd", "--zstdchunked")):
        target = source.rsplit(":", 1)[0] + f":{fmt}"
        containerd.ctr_remote("image", "convert", "--oci", option, source, target)
        containerd.ctr_remote("image", "push", "--plain-http", target)
        out[fmt] = target
    return out


@pytest.mark.parametrize("fmt", ["estargz", "stargz-zstd"])
def test_mount_of_peer_formats_equals_umoci_unpack(rich, peer_converted, fmt, tmp_path):
    _, oracle = rich
    with mounted(peer_converted[fmt], tmp_path / "mnt", tmp_path / "cache") as mnt:
        # The eStargz TOC keeps modification times to the second (RFC 3339 without a fraction).
        assert_same_tree(oracle, snapshot_tree(mnt), exact_mtime=False, **IGNORE)
        assert not (mnt / ".no.prefetch.landmark").exists()
        assert not (mnt / "stargz.index.json").exists()


def test_mount_is_read_only_and_reports_statfs(rich, tmp_path):
    refs, _ = rich
    with mounted(str(refs["zstd:chunked"]), tmp_path / "mnt", tmp_path / "cache") as mnt:
        with pytest.raises(OSError) as info:
            (mnt / "new-file").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        with pytest.raises(OSError) as info:
            (mnt / "data" / "small.txt").write_bytes(b"x")
        assert info.value.errno in (errno.EROFS, errno.EACCES)
        with pytest.raises(OSError) as info:
            os.unlink(mnt / "data" / "small.txt")
        assert info.value.errno == errno.EROFS
        fs = os.statvfs(mnt)
        assert fs.f_files > 10 and fs.f_bsize == 4096


def _big_image() -> tuple[list[Entry], dict[str, bytes]]:
    files = {f"files/f{i:03d}": noise(random.Random(i).randrange(1, 400_000), i) for i in range(60)}
    files["big/one.bin"] = noise(8 * 1024 * 1024 + 17, 99)
    files["small/hello.txt"] = b"hello, lazy world\n"
    entries = [Entry(path, data=data, mtime=T0) for path, data in files.items()]
    return entries, files


def test_concurrent_readers_get_every_byte_right(registry, tmp_path):
    entries, files = _big_image()
    src, dst = new_ref(registry, "conc"), new_ref(registry, "conc-chunked")
    push(src, build_image([entries]))
    convert(src, dst)
    errors: list[str] = []
    with mounted(str(dst), tmp_path / "mnt", tmp_path / "cache", "--no-prefetch") as mnt:

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(40):
                path, data = rng.choice(list(files.items()))
                offset = rng.randrange(0, len(data))
                size = rng.choice([1, 4096, 65536, 300_000, len(data)])
                with open(mnt / path, "rb") as f:
                    f.seek(offset)
                    got = f.read(size)
                if got != data[offset : offset + size]:
                    errors.append(f"{path}@{offset}+{size}")

        threads = [threading.Thread(target=reader, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a reader hung"
    assert not errors, errors[:10]


def test_one_small_file_fetches_a_small_share_and_the_cache_serves_a_second_mount(
    registry, tmp_path
):
    entries, files = _big_image()
    src, dst = new_ref(registry, "share"), new_ref(registry, "share-chunked")
    push(src, build_image([entries]))
    convert(src, dst)
    image_bytes = sum(len(d) for d in files.values())
    cache = tmp_path / "cache"
    with mounted(str(dst), tmp_path / "mnt", cache, "--no-prefetch") as mnt:
        assert (mnt / "small/hello.txt").read_bytes() == files["small/hello.txt"]
        text = lazyfs("stats", str(mnt))
        assert text.returncode == 0, text.stderr
        assert "layer" in text.stdout and "total" in text.stdout and "fetched" in text.stdout
        fetched = stats(mnt)["fetch"]["total"]
        assert 0 < fetched["bytes_fetched"] < 0.02 * image_bytes, fetched
        # Read everything: it all goes through the disk cache.
        for path, data in files.items():
            assert (
                hashlib.sha256((mnt / path).read_bytes()).digest() == hashlib.sha256(data).digest()
            )
    with mounted(str(dst), tmp_path / "mnt2", cache, "--no-prefetch") as mnt:
        for path, data in files.items():
            assert (mnt / path).read_bytes() == data
        again = stats(mnt)["fetch"]["total"]
        assert again["requests"] == 0 and again["bytes_fetched"] == 0, again


def test_umount_of_a_dead_daemon(registry, tmp_path):
    entries, _ = _big_image()
    src, dst = new_ref(registry, "dead"), new_ref(registry, "dead-chunked")
    push(src, build_image([entries]))
    convert(src, dst)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = lazyfs("mount", "--daemon", "--cache-dir", str(tmp_path / "cache"), str(dst), str(mnt))
    assert result.returncode == 0, result.stderr
    try:
        pid = int(result.stdout.split("daemon pid ")[1].split(",")[0])
        os.kill(pid, 9)
        # The first access after the kill may see the kernel abort the connection; from
        # then on the mount answers "not connected".
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.ENOTCONN
    finally:
        done = lazyfs("umount", str(mnt))
    assert done.returncode == 0, done.stderr
    assert not is_mountpoint(mnt)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_mount_unmounts_cleanly_on_a_signal(rich, sig, tmp_path):
    refs, _ = rich
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["mount", "--cache-dir", str(tmp_path / "cache"), str(refs["zstd:chunked"]), str(mnt)]
    process = subprocess.Popen(
        [sys.executable, "-m", "lazyfs", *args], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not is_mountpoint(mnt):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.05)
        assert (mnt / "data/small.txt").read_bytes()
        process.send_signal(sig)
        assert process.wait(timeout=30) == 0, process.stderr.read()
        assert not is_mountpoint(mnt)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if is_mountpoint(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def test_mount_an_oci_layout(rich, tmp_path):
    refs, oracle = rich
    layout = tmp_path / "layout"

    async def to_layout():
        async with RegistryClient() as client:
            await convert_image(
                open_store(str(refs["gzip"]), client),
                open_store(f"oci:{layout}:v1", client, create=True),
                ConvertOptions(chunk_size=CHUNK),
                NullProgress(),
            )

    trio.run(to_layout)
    with mounted(f"oci:{layout}:v1", tmp_path / "mnt", tmp_path / "cache") as mnt:
        assert_same_tree(oracle, snapshot_tree(mnt), exact_mtime=True, **IGNORE)


def test_a_broken_layer_index_is_reported_in_one_line(registry, tmp_path):
    from lazyfs.formats.annotations import (
        ZSTD_CHUNKED_MANIFEST_CHECKSUM,
        ZSTD_CHUNKED_MANIFEST_POSITION,
    )
    from lazyfs.oci.digest import Digest

    broken = {
        ZSTD_CHUNKED_MANIFEST_CHECKSUM: str(Digest.of(b"toc")),
        ZSTD_CHUNKED_MANIFEST_POSITION: "10:20:30:1",
    }
    ref = new_ref(registry, "broken")
    push(
        ref, build_image([[Entry("a", data=b"a")]], compression="zstd", layer_annotations=[broken])
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = lazyfs("mount", "--daemon", "--cache-dir", str(tmp_path / "cache"), str(ref), str(mnt))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lazyfs: error: layer #0"), result.stderr
    assert not is_mountpoint(mnt)


def test_mount_point_with_a_space_and_non_ascii_and_1_mib_readahead(rich, tmp_path):
    from lazyfs.control import mount_device

    refs, _ = rich
    with mounted(str(refs["zstd:chunked"]), tmp_path / "a mount ü", tmp_path / "cache") as mnt:
        device = mount_device(mnt)
        assert device is not None
        assert Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"
        assert (mnt / "data/small.txt").read_bytes()


def test_a_sequential_reader_is_served_by_read_ahead_in_few_requests(registry, tmp_path):
    data = noise(24 * 1024 * 1024 + 5, 7)
    src, dst = new_ref(registry, "seq"), new_ref(registry, "seq-chunked")
    push(src, build_image([[Entry("big.bin", data=data, mtime=T0)]]))
    convert(src, dst)
    with mounted(str(dst), tmp_path / "mnt", tmp_path / "cache", "--no-prefetch") as mnt:
        digest = hashlib.sha256()
        with open(mnt / "big.bin", "rb", buffering=0) as f:
            while piece := f.read(128 * 1024):
                digest.update(piece)
        assert digest.digest() == hashlib.sha256(data).digest()
        total = stats(mnt)["fetch"]["total"]
    assert total["readahead_requests"] > 0 and total["errors"] == 0, total
    # Requests of 4 MiB and more (the first read, at offset 0, is not known to be
    # sequential and fetches its own chunks).
    assert total["requests"] <= -(-total["bytes_fetched"] // (4 * 1024 * 1024)) + 1, total


def _wait_for_fetches(mnt: Path) -> dict:
    """The mount's fetch totals once nothing is in flight any more."""
    deadline = time.monotonic() + 30
    while True:
        fetch = stats(mnt)["fetch"]
        if not fetch["in_flight"] or time.monotonic() > deadline:
            return fetch["total"]
        time.sleep(0.05)


@pytest.mark.parametrize("prefetch", [True, False])
def test_an_executed_program_or_opened_library_is_fetched_whole_at_once(
    registry, tmp_path, prefetch
):
    """What a program's start gets: its binary (opened by execve) and its libraries in one
    request each, as soon as they are opened, instead of a round trip per page fault. An
    executable that is only read, and other files, are fetched as they are read."""
    size = 2 * 1024 * 1024 + 5  # 33 chunks of 64 KiB
    files = {
        "bin/tool": (noise(size, 1), 0o755),  # executed (not a valid program: ENOEXEC)
        "bin/other": (noise(size, 4), 0o755),  # only read
        "lib/libthing.so.1": (noise(size, 2), 0o644),
        "data/blob.bin": (noise(size, 3), 0o644),
    }
    entries = [Entry(p, data=d, mode=m, mtime=T0) for p, (d, m) in files.items()]
    src = new_ref(registry, "open-prefetch")
    dst = new_ref(registry, "open-prefetch-chunked")
    push(src, build_image([entries]))
    convert(src, dst)
    options = () if prefetch else ("--no-prefetch",)
    with mounted(str(dst), tmp_path / "mnt", tmp_path / "cache", *options) as mnt:
        with pytest.raises(OSError) as exc:
            subprocess.run([str(mnt / "bin/tool")], timeout=30)
        assert exc.value.errno == errno.ENOEXEC
        total = _wait_for_fetches(mnt)
        assert total["file_prefetches"] == (1 if prefetch else 0)
        if prefetch:
            assert total["chunks_fetched"] == 33 and total["requests"] == 1, total
        for n, (path, (data, _)) in enumerate(files.items()):
            with open(mnt / path, "rb") as f:
                assert f.read(4096) == data[:4096]
                before = _wait_for_fetches(mnt)
                rng = random.Random(n)
                for _ in range(20):  # here and there, like page faults
                    offset = rng.randrange(size)
                    f.seek(offset)
                    assert f.read(4096) == data[offset : offset + 4096]
                after = _wait_for_fetches(mnt)
            whole = prefetch and path in ("bin/tool", "lib/libthing.so.1")
            if whole:
                assert after["requests"] == before["requests"], (path, before, after)
            else:
                assert after["requests"] > before["requests"], f"{path}: fetched on demand"
        total = _wait_for_fetches(mnt)
        assert total["file_prefetches"] == (2 if prefetch else 0)
        assert total["errors"] == 0
