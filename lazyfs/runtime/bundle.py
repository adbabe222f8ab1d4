"""``lazyfs bundle IMAGE DIR``: an OCI runtime bundle whose root filesystem is lazy.

``DIR/config.json`` is converted from the image config (and the same options ``lazyfs
run`` takes), ``DIR/rootfs`` is the image's lazy mount with a writable overlayfs on top,
so ``runc run``, ``crun run`` or ``runsc run`` can start it. The image itself is mounted
at ``DIR/.lazyfs/lower`` and the overlay's upper and work directories are
``DIR/.lazyfs/upper`` and ``DIR/.lazyfs/work``.

This module is the daemon that serves the mount: it stays up until ``lazyfs umount
DIR/rootfs`` asks it to stop (its control socket is keyed by ``DIR/rootfs``) or it gets
SIGTERM/SIGINT; then it unmounts the overlay, then the image, and removes
``DIR/.lazyfs`` (the container's writes with it). ``config.json`` is left in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import trio

from ..control import is_mountpoint, serve_control
from ..errors import LazyfsError, unwrap_task_errors
from ..fs.image import LazyImage, MountOptions, open_image
from ..fuse import mount_image
from ..oci.store import ImageStore
from .config import RunOptions, apply_user_env, process_spec, resolve_user, runtime_spec
from .container import detach_mount, mount_overlay
from .syscalls import MNT_DETACH, umount2

__all__ = ["BundlePaths", "serve_bundle", "unmount_bundle"]

log = logging.getLogger("lazyfs.bundle")


class BundlePaths:
    """Where a bundle's parts live under its directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = directory / "config.json"
        self.rootfs = directory / "rootfs"
        self.state = directory / ".lazyfs"
        self.lower = self.state / "lower"
        self.upper = self.state / "upper"
        self.work = self.state / "work"

    @classmethod
    def from_rootfs(cls, rootfs: Path) -> BundlePaths:
        return cls(rootfs.parent)


def _prepare(paths: BundlePaths, image: LazyImage, options: RunOptions, hostname: str) -> None:
    """(From a worker thread: the image is served by this process.) Overlay and config."""
    for d in (paths.upper, paths.work, paths.rootfs):
        d.mkdir(parents=True, exist_ok=True)
    mount_overlay(paths.lower, paths.upper, paths.work, paths.rootfs)
    process = process_spec(image.image.config, options, hostname=hostname)
    user = resolve_user(process.user, paths.rootfs)
    process.env = apply_user_env(process.env, user)
    spec = runtime_spec(process, user, options, hostname=hostname)
    tmp = paths.config.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2) + "\n")
    os.replace(tmp, paths.config)


def unmount_bundle(paths: BundlePaths) -> None:
    """Detach the overlay, then the image mount (for a bundle whose daemon is gone)."""
    if is_mountpoint(paths.rootfs):
        umount2(str(paths.rootfs), MNT_DETACH)
    if is_mountpoint(paths.lower):
        umount2(str(paths.lower), MNT_DETACH)


async def serve_bundle(
    store: ImageStore,
    mount_options: MountOptions,
    options: RunOptions,
    directory: Path,
    *,
    hostname: str = "lazyfs",
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Make the bundle in ``directory`` and serve its mounts until told to stop."""
    paths = BundlePaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if is_mountpoint(paths.rootfs) or is_mountpoint(paths.lower):
        raise LazyfsError(f"{directory} already holds a mounted bundle")
    if paths.state.exists():
        shutil.rmtree(paths.state)  # left by a daemon that was killed; nothing is mounted
    paths.lower.mkdir(parents=True)
    image = await open_image(store, mount_options)
    try:
        stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        with unwrap_task_errors(), trio.open_signal_receiver(*stop_signals) as signals:
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(lambda: mount_image(image, paths.lower, ready=ready))
                await ready.wait()
                try:
                    await trio.to_thread.run_sync(_prepare, paths, image, options, hostname)

                    stopping = trio.Event()

                    def stop() -> dict:
                        stopping.set()
                        return {"unmounting": True}

                    async def on_signal() -> None:
                        async for _ in signals:
                            stopping.set()

                    handlers = {"stats": image.stats, "unmount": stop}
                    await nursery.start(serve_control, paths.rootfs, handlers)
                    nursery.start_soon(on_signal)
                    if on_ready is not None:
                        on_ready()
                    # The overlay goes first (below), while the image is still served.
                    await stopping.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(detach_mount, paths.rootfs)
                    nursery.cancel_scope.cancel()
    finally:
        image.close()
        if not is_mountpoint(paths.lower) and not is_mountpoint(paths.rootfs):
            shutil.rmtree(paths.state, ignore_errors=True)
