"""containerd with lazyfs as its snapshotter, for end-to-end tests.

* :class:`SnapshotterProcess` runs ``lazyfs snapshotter`` (as
  ``python -m lazyfs.snapshotter.cli snapshotter``) with its own root and socket; it is
  ready when its gRPC socket answers. The layer server it starts runs detached, in a
  session of its own, so :meth:`SnapshotterProcess.kill` (SIGKILL to the snapshotter
  alone) is a crash the layer server and the containers' mounts survive.
* :func:`lazyfs_containerd` makes a :class:`~tests.harness.containerd.ContainerdServer`
  with the proxy plugin ``lazyfs`` and the CRI plugin on, CRI set to
  ``snapshotter = "lazyfs"``, ``disable_snapshot_annotations = false`` and a hosts
  directory (``config_path``) for plain-HTTP test registries (:func:`write_hosts_toml`).
* :func:`cri_pull` pulls an image through CRI's ``runtime.v1.ImageService/PullImage`` on
  containerd's socket, with the hand-written stubs in ``tests/harness/proto``.
* :func:`unmount_all_under` lazily detaches every mount below a directory (containers'
  rootfs overlays left by a failed test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from tests.harness.containerd import DEFAULT_DISABLED_PLUGINS, ContainerdServer
from tests.harness.process import ManagedProcess
from tests.harness.proto import cri_pb2, cri_pb2_grpc

__all__ = [
    "SnapshotterProcess",
    "SnapshotterStartError",
    "cri_pull",
    "lazyfs_containerd",
    "mounts_under",
    "unmount_all_under",
    "write_hosts_toml",
]


class SnapshotterStartError(RuntimeError):
    """``lazyfs snapshotter`` exited, or its socket did not answer in time."""


class SnapshotterProcess(ManagedProcess):
    """``lazyfs snapshotter --address SOCK --root ROOT [ARGS...]`` as a subprocess.

    Attributes: ``root``, ``address`` (the socket path), ``log_path``.
    """

    name = "lazyfs snapshotter"
    start_error = SnapshotterStartError
    stop_timeout = 15.0

    def __init__(
        self,
        root: Path,
        address: Path,
        *,
        log_path: Path,
        args: tuple[str, ...] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(binary=sys.executable, log_path=log_path, startup_timeout=startup_timeout)
        self.root = Path(root)
        self.address = Path(address)
        self.args = tuple(args)

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "lazyfs.snapshotter.cli",
            "snapshotter",
            "--address",
            str(self.address),
            "--root",
            str(self.root),
            *self.args,
        ]

    def _not_ready(self) -> str | None:
        if not self.address.exists():
            return f"no socket at {self.address}"
        with grpc.insecure_channel(f"unix:{self.address}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
            except grpc.FutureTimeoutError:
                return f"{self.address} does not answer"
        return None

    def kill(self) -> None:
        """SIGKILL the snapshotter process alone (a crash) and reap it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()


def write_hosts_toml(hosts_dir: Path, host: str, url: str) -> None:
    """``hosts_dir/<host>/hosts.toml`` making ``url`` (e.g. ``http://...``) the host's server."""
    directory = hosts_dir / host
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(
        f'server = "{url}"\n\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
    )


def lazyfs_containerd(
    workdir: Path, snapshotter_address: Path, hosts_dir: Path, **kwargs
) -> ContainerdServer:
    """A containerd (not started) using the lazyfs proxy snapshotter, also for CRI."""
    cni = workdir / "cni"
    cri = {
        "sandbox_image": "lazyfs.invalid/pause:never-pulled",
        "stream_server_address": "127.0.0.1",
        "stream_server_port": "0",
        "enable_selinux": False,
        "containerd": {"snapshotter": "lazyfs", "disable_snapshot_annotations": False},
        "registry": {"config_path": str(hosts_dir)},
        "cni": {"bin_dir": str(cni / "bin"), "conf_dir": str(cni / "conf")},
    }
    return ContainerdServer(
        workdir,
        disabled_plugins=[p for p in DEFAULT_DISABLED_PLUGINS if p != "io.containerd.grpc.v1.cri"],
        plugin_config={"io.containerd.grpc.v1.cri": cri},
        proxy_plugins={"lazyfs": {"type": "snapshot", "address": str(snapshotter_address)}},
        startup_timeout=kwargs.pop("startup_timeout", 60.0),
        **kwargs,
    )


def cri_pull(address: str, image: str, *, timeout: float = 120.0) -> str:
    """Pull ``image`` through CRI on containerd's socket ``address``; the image's reference."""
    with grpc.insecure_channel(f"unix:{address}") as channel:
        stub = cri_pb2_grpc.ImageServiceStub(channel)
        request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=image))
        return stub.PullImage(request, timeout=timeout).image_ref


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    prefix = str(path)
    found = [line.split()[4] for line in lines]
    found = [m for m in found if m == prefix or m.startswith(prefix + "/")]
    return sorted(set(found), key=len, reverse=True)


def unmount_all_under(path: Path) -> None:
    """Lazily detach every mount at or below ``path``."""
    for mountpoint in mounts_under(path):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)
