"""``lazyfs bundle``: OCI runtime bundles on a lazy rootfs, run by runc, crun and runsc.

The bundle's ``config.json`` comes from the image config and ``lazyfs run``'s options; its
``rootfs`` is the image's lazy mount with a writable overlay, served by a daemon until
``lazyfs umount DIR/rootfs``. Each test checks that nothing stays mounted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.control import is_mountpoint
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from tests.harness.images import Entry, build_image, push_image
from tests.harness.rootfs import busybox_entries
from tests.harness.runtimes import RUNTIMES

for _tool in ("runc", "crun", "runsc"):
    if shutil.which(_tool) is None:
        pytest.fail(f"{_tool} is missing; run scripts/test", pytrace=False)


def lazyfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def image(registry) -> str:
    built = build_image(
        [
            busybox_entries(),
            [Entry("srv", kind="dir"), Entry("srv/motd", data=b"from the image\n")],
        ],
        env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello"],
        cmd=["/bin/sh", "-c", "echo default"],
        working_dir="/srv",
        user="app",
    )
    ref = Reference.parse(f"{registry.host}/bundle/busybox-{uuid.uuid4().hex[:8]}:v1")

    async def main():
        async with RegistryClient() as client:
            await push_image(client, ref, built)

    trio.run(main)
    return str(ref)


@contextlib.contextmanager
def bundle(image: str, directory: Path, cache: Path, *args: str) -> Iterator[Path]:
    result = lazyfs("bundle", "--cache-dir", str(cache), image, str(directory), *args)
    assert result.returncode == 0, result.stderr
    rootfs = directory / "rootfs"
    try:
        assert is_mountpoint(rootfs)
        yield directory
    finally:
        done = lazyfs("umount", str(rootfs))
        assert done.returncode == 0, done.stderr
        assert not is_mountpoint(rootfs)
        assert not is_mountpoint(directory / ".lazyfs" / "lower")
        assert not (directory / ".lazyfs").exists()


SCRIPT = (
    'echo "$GREETING from $(id -un) in $(pwd)"; cat motd; echo change > /home/app/written; exit 3'
)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_bundle_runs_under(runtime, image, tmp_path):
    directory = tmp_path / "bundle"
    prefix, run, delete = RUNTIMES[runtime]
    with bundle(image, directory, tmp_path / "cache", "sh", "-c", SCRIPT):
        config = json.loads((directory / "config.json").read_text())
        assert config["process"]["args"] == ["sh", "-c", SCRIPT]
        assert config["process"]["user"]["uid"] == 1000
        name = f"lazyfs-test-{uuid.uuid4().hex[:8]}"
        try:
            result = subprocess.run(
                [*prefix, runtime, *run, "--bundle", str(directory), name],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        finally:
            subprocess.run([*prefix, runtime, *delete, name], capture_output=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert result.stdout.splitlines() == ["hello from app in /srv", "from the image"]
        # The container's write went to the bundle's overlay, not to the image.
        assert (directory / "rootfs" / "home" / "app" / "written").read_text() == "change\n"
        assert (directory / ".lazyfs" / "upper" / "home" / "app" / "written").exists()
        assert not (directory / ".lazyfs" / "lower" / "home" / "app" / "written").exists()


def test_bundle_umount_without_daemon(image, tmp_path):
    # The daemon dies (kill -9): lazyfs umount still takes the overlay and the image down.
    directory = tmp_path / "bundle"
    result = lazyfs("bundle", "--cache-dir", str(tmp_path / "cache"), image, str(directory))
    assert result.returncode == 0, result.stderr
    try:
        pid = int(result.stdout.split("daemon pid ")[1].split(",")[0])
        os.kill(pid, 9)
    finally:
        done = lazyfs("umount", str(directory / "rootfs"))
        assert done.returncode == 0, done.stderr
    assert not is_mountpoint(directory / "rootfs")
    assert not is_mountpoint(directory / ".lazyfs" / "lower")
