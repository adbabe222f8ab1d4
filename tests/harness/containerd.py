"""Run a private, real ``containerd`` for tests, and its CLIs against it.

:class:`ContainerdServer` writes a ``config.toml`` (version 2) into a work directory, starts
``containerd --config <it>`` with root, state, gRPC and ttrpc sockets and the ``opt`` plugin's
directory all inside that work directory, and waits (bounded) until ``ctr version`` answers
on its socket. Nothing is shared with a system containerd.

Plugins that cannot work on a test machine, or that would slow the start down, are disabled
(:data:`DEFAULT_DISABLED_PLUGINS`: CRI, and the aufs, btrfs, devmapper and zfs snapshotters).
Later users can add plugin sections (``plugin_config``) and proxy plugins
(``proxy_plugins``, e.g. a remote snapshotter) without touching the rest.

:meth:`ContainerdServer.ctr` and :meth:`ContainerdServer.ctr_remote` run ``ctr`` and
``ctr-remote`` (stargz-snapshotter's superset of ``ctr``) with ``--address`` and a namespace,
with a timeout, and raise :class:`CtrError` carrying stderr when a command fails. The daemon's
output goes to ``containerd.log`` in the work directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.process import ManagedProcess

__all__ = [
    "DEFAULT_BINARY",
    "DEFAULT_DISABLED_PLUGINS",
    "ContainerdServer",
    "ContainerdStartError",
    "CtrError",
]

#: Where Debian's ``containerd`` package installs the daemon.
DEFAULT_BINARY = "/usr/bin/containerd"

#: Plugins disabled by default: CRI (needs CNI, a sandbox image, and is slow to start) and
#: the snapshotters that need kernel modules or filesystems a test machine lacks.
DEFAULT_DISABLED_PLUGINS: tuple[str, ...] = (
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
)

#: Longest path a unix socket address may have on Linux (``sun_path`` minus the NUL).
_MAX_SOCKET_PATH = 107


class ContainerdStartError(RuntimeError):
    """The containerd binary is missing, or it exited or did not answer on its socket in time."""


class CtrError(RuntimeError):
    """A ``ctr`` / ``ctr-remote`` command failed or timed out.

    ``argv``, ``returncode`` (None on a timeout), ``stdout`` and ``stderr`` describe it; the
    message ends with the last lines of stderr (where ctr puts the error).
    """

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        what = "timed out" if returncode is None else f"exited with status {returncode}"
        detail = "\n".join((stderr.strip() or stdout.strip()).splitlines()[-15:])
        super().__init__(f"{' '.join(argv)} {what}:\n{detail}")
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def _toml_value(value: Any) -> str:
    """A TOML rendering of a str, bool, int, float or list of them.

    JSON string escapes are valid in TOML basic strings, so strings are JSON-encoded.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _toml_table(name: str, body: Mapping[str, Any]) -> list[str]:
    """``[name]`` with its scalar keys, then its sub-tables as ``[name.key]``."""
    lines = [f"[{name}]"]
    subtables = []
    for key, value in body.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"  {json.dumps(key)} = {_toml_value(value)}")
    for key, value in subtables:
        lines += _toml_table(f"{name}.{json.dumps(key)}", value)
    return lines


class ContainerdServer(ManagedProcess):
    """One ``containerd`` process with its own configuration, storage and sockets.

    The process lifecycle (:attr:`running`, :meth:`log_tail`, use as a context manager)
    comes from :class:`~tests.harness.process.ManagedProcess`.

    Args:
        workdir: Directory for config, root, state and log (created if needed).
        namespace: Namespace the CLI helpers use unless told otherwise.
        disabled_plugins: Plugin IDs not loaded.
        plugin_config: Extra ``[plugins."ID"]`` sections, ID -> keys (nested mappings
            become sub-tables).
        proxy_plugins: ``[proxy_plugins.NAME]`` sections, NAME -> keys
            (e.g. ``{"type": "snapshot", "address": "/path/to.sock"}``).
        log_level: containerd's log level.
        binary, ctr_binary, ctr_remote_binary: The executables.
        startup_timeout: Seconds :meth:`start` waits for the socket to answer.
        command_timeout: Default timeout of one CLI command.

    Attributes (after :meth:`start`):
        address: The gRPC socket path.
        root, state: containerd's directories.
        config_path, log_path: The generated config and the daemon's log.
        process: The running :class:`subprocess.Popen`, or ``None``.
    """

    name = "containerd"
    start_error = ContainerdStartError
    stop_timeout = 10.0

    def __init__(
        self,
        workdir: Path,
        *,
        namespace: str = "lazyfs-test",
        disabled_plugins: Sequence[str] = DEFAULT_DISABLED_PLUGINS,
        plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
        proxy_plugins: Mapping[str, Mapping[str, Any]] | None = None,
        log_level: str = "info",
        binary: str = DEFAULT_BINARY,
        ctr_binary: str = "ctr",
        ctr_remote_binary: str = "ctr-remote",
        startup_timeout: float = 15.0,
        command_timeout: float = 120.0,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.disabled_plugins = list(disabled_plugins)
        self.plugin_config = {k: dict(v) for k, v in (plugin_config or {}).items()}
        self.proxy_plugins = {k: dict(v) for k, v in (proxy_plugins or {}).items()}
        self.log_level = log_level
        super().__init__(
            binary=binary,
            log_path=self.workdir / "containerd.log",
            startup_timeout=startup_timeout,
        )
        self.ctr_binary = ctr_binary
        self.ctr_remote_binary = ctr_remote_binary
        self.command_timeout = command_timeout
        self.root = self.workdir / "root"
        self.state = self.workdir / "state"
        self.config_path = self.workdir / "config.toml"
        self._socket_dir: Path | None = None
        self.address = ""

    # ------------------------------------------------------------------ configuration

    def _choose_socket_dir(self) -> Path:
        """The work directory, or a short private one when its path is too long for sockets."""
        if len(str(self.workdir / "containerd.sock.ttrpc")) <= _MAX_SOCKET_PATH:
            return self.workdir
        self._socket_dir = Path(tempfile.mkdtemp(prefix="ctrd-"))
        return self._socket_dir

    def config_text(self) -> str:
        """The ``config.toml`` this server runs with."""
        top = {
            "version": 2,
            "root": str(self.root),
            "state": str(self.state),
            "disabled_plugins": self.disabled_plugins,
        }
        lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
        lines += _toml_table("grpc", {"address": self.address})
        lines += _toml_table("ttrpc", {"address": self.address + ".ttrpc"})
        lines += _toml_table("debug", {"level": self.log_level})
        plugins = {"io.containerd.internal.v1.opt": {"path": str(self.workdir / "opt")}}
        plugins.update(self.plugin_config)
        for plugin_id, body in plugins.items():
            lines += _toml_table(f"plugins.{json.dumps(plugin_id)}", body)
        for name, body in self.proxy_plugins.items():
            lines += _toml_table(f"proxy_plugins.{json.dumps(name)}", body)
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ lifecycle

    def _prepare(self) -> None:
        self.address = str(self._choose_socket_dir() / "containerd.sock")
        self.config_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def _not_ready(self) -> str | None:
        if os.path.exists(self.address):
            with contextlib.suppress(subprocess.TimeoutExpired):
                version = [self.ctr_binary, "--address", self.address, "version"]
                if subprocess.run(version, capture_output=True, timeout=5).returncode == 0:
                    return None
        return f"ctr version does not answer on {self.address}"

    def stop(self) -> None:
        """Terminate containerd (SIGTERM, SIGKILL after 10 s) and wait for it. Idempotent.

        Also removes the short private socket directory, if one was made.
        """
        super().stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    # ------------------------------------------------------------------ CLIs

    def run_cli(
        self,
        binary: str,
        *args: str,
        namespace: str | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``binary --address SOCK --namespace NS args...`` and return its result.

        Raises :class:`CtrError` on a timeout, and on a non-zero exit when ``check``.
        """
        if not self.running:
            raise RuntimeError("containerd is not running")
        argv = [
            binary,
            "--address",
            self.address,
            "--namespace",
            namespace or self.namespace,
            *args,
        ]
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout or self.command_timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise CtrError(argv, None, _text(exc.stdout), _text(exc.stderr)) from None
        if check and result.returncode != 0:
            raise CtrError(argv, result.returncode, result.stdout, result.stderr)
        return result

    def ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this containerd (see :meth:`run_cli`)."""
        return self.run_cli(self.ctr_binary, *args, **kw)

    def ctr_remote(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run ``ctr-remote`` against this containerd (see :meth:`run_cli`)."""
        return self.run_cli(self.ctr_remote_binary, *args, **kw)

    def __repr__(self) -> str:
        where = self.address if self.running else "not running"
        return f"<ContainerdServer {where} workdir={self.workdir}>"


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
