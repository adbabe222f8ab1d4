"""``lazyfs run``: a command in an image, started before the image is pulled.

The steps, each timed (``--verbose`` prints them):

1. **resolve / index / merge**: :func:`lazyfs.fs.image.open_image`, as ``lazyfs mount``;
2. **mount**: the image's merged tree over FUSE at ``STATE/lower``, served by this very
   process, and a writable overlayfs at ``STATE/rootfs`` (``upperdir``/``workdir`` in the
   same temporary state directory). Everything the container writes lands in the upper
   directory; the image and the chunk cache never see it. Meanwhile the command's program,
   its ELF interpreter and its libraries start coming from the registry
   (:mod:`lazyfs.fs.programs`), while the container is still being set up;
3. **exec**: the init program (:mod:`lazyfs.runtime.init`, a separate small Python process)
   joins the cgroups, enters new namespaces, sets the root filesystem up, pivots into it,
   drops privileges and execs the command, which is PID 1 of its PID namespace;
4. **run**: stdio goes straight to the container (or through a pty with ``--tty``), stop
   signals are forwarded, and the command's exit status becomes lazyfs's;
5. **teardown**: the overlay and the FUSE mount are unmounted, the cgroup and (unless
   ``--keep``) the state directory removed, whatever happened before.

``lazyfs run`` calls :func:`lazyfs.runtime.syscalls.enter_private_mount_namespace` before
anything else, so both mounts live in a mount namespace of its own: the host never sees
them, and if lazyfs is killed they vanish with it.

Files of the mounted image are only touched from worker threads here: this process is the
FUSE server of that mount, so a lookup made from the trio thread would wait for itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import trio

import lazyfs

from ..control import is_mountpoint
from ..errors import LazyfsError
from ..fs.image import LazyImage, MountOptions, open_image
from ..fs.programs import prefetch_program
from ..fuse import mount_image
from ..oci.registry import RegistryClient
from ..oci.store import ImageStore
from . import terminal
from .cgroups import Cgroup
from .config import (
    DEFAULT_CAPABILITIES,
    ProcessSpec,
    ResolvedUser,
    RunOptions,
    Volume,
    apply_user_env,
    parse_volume,
    process_spec,
    resolve_user,
)
from .init import InitSpec, environment_path
from .syscalls import MNT_DETACH, mount, umount2
from .zygote import ForkedProcess, Zygote

__all__ = ["RunReport", "RunSettings", "detach_mount", "mount_overlay", "run_container"]

log = logging.getLogger("lazyfs.run")

#: Signals that ask the container to stop: forwarded, then SIGKILL after the stop timeout
#: (a PID 1 ignores signals it has no handler for, as docker's containers do).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Signals only passed on.
FORWARDED_SIGNALS = (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
HANDLED_SIGNALS = (*STOP_SIGNALS, *FORWARDED_SIGNALS, signal.SIGWINCH)
#: Exit status for a failure of lazyfs itself before the command ran (docker's).
SETUP_FAILED = 125


@dataclass
class RunSettings:
    """How lazyfs runs the container, beyond what :class:`RunOptions` says about it."""

    keep: bool = False
    stop_timeout: float = 10.0
    state_root: Path | None = None  # default: $TMPDIR
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: A pre-forked init (see :mod:`.zygote`); without one, the init is a new interpreter.
    zygote: Zygote | None = None


@dataclass
class RunReport:
    """What a run did: its exit status, phase durations and the bytes it fetched."""

    exit_code: int
    timings: dict[str, float]
    bytes_fetched: int
    image_bytes: int
    oom_killed: bool = False
    state_dir: Path | None = None

    def describe(self) -> list[str]:
        lines = [f"{name:<8} {seconds * 1000:8.1f} ms" for name, seconds in self.timings.items()]
        share = self.bytes_fetched / self.image_bytes if self.image_bytes else 0.0
        lines.append(
            f"fetched  {self.bytes_fetched / 1e6:8.2f} MB of {self.image_bytes / 1e6:.2f} MB "
            f"compressed image ({share:.1%})"
        )
        return lines


async def _exec_init(spec_fd: int, status_fd: int, stdio: tuple[int, int, int]) -> trio.Process:
    """The init as a new interpreter (``--init``, or without a zygote)."""
    package_root = str(Path(lazyfs.__file__).resolve().parent.parent)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "PYTHONPATH": package_root,
    }
    return await trio.lowlevel.open_process(
        [sys.executable, "-S", "-m", "lazyfs.runtime.init", str(spec_fd), str(status_fd)],
        stdin=stdio[0],
        stdout=stdio[1],
        stderr=stdio[2],
        pass_fds=(spec_fd, status_fd),
        start_new_session=True,
        env=env,
    )


def _etc_files(state: Path, hostname: str, network: str) -> dict[str, str]:
    """``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` for the container."""
    etc = state / "etc"
    etc.mkdir()
    (etc / "hostname").write_text(hostname + "\n")
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    resolv = ""
    if network == "host":
        try:
            resolv = Path("/etc/resolv.conf").read_text()
        except OSError:
            resolv = ""
    hosts += f"127.0.1.1\t{hostname}\n"
    (etc / "hosts").write_text(hosts)
    (etc / "resolv.conf").write_text(resolv)
    return {f"/etc/{name}": str(etc / name) for name in ("hostname", "hosts", "resolv.conf")}


def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """A writable overlayfs at ``target`` over the image mounted at ``lower``."""
    for path in (lower, upper, work):
        if any(c in str(path) for c in ",:\\"):
            raise LazyfsError(f"overlayfs cannot use a path with ',', ':' or '\\': {path}")
    mount("overlay", str(target), "overlay", 0, f"lowerdir={lower},upperdir={upper},workdir={work}")


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Container:
    """One run's moving parts, so the phases can be written as small methods."""

    def __init__(
        self, image: LazyImage, options: RunOptions, settings: RunSettings, state: Path
    ) -> None:
        self.image = image
        self.options = options
        self.settings = settings
        self.state = state
        self.lower = state / "lower"
        self.rootfs = state / "rootfs"
        self.pty: terminal.Pty | None = None
        self.process: trio.Process | ForkedProcess | None = None
        self.container_pid: int | None = None
        self.error: dict | None = None
        self.exec_done = trio.Event()
        self.exited = trio.Event()
        self.hostname = options.hostname or settings.run_id
        self.process_spec: ProcessSpec  # set once the image is mounted (run_container)

    # ------------------------------------------------------------------ set-up

    def prepare_rootfs(self) -> tuple[ResolvedUser, list[str]]:
        """(From a worker thread.) The overlay, and what must be read from the image."""
        upper, work = self.state / "upper", self.state / "work"
        for d in (upper, work, self.rootfs):
            d.mkdir()
        mount_overlay(self.lower, upper, work, self.rootfs)
        user = resolve_user(self.process_spec.user, self.rootfs)
        return user, apply_user_env(self.process_spec.env, user)

    async def prefetch_program(self) -> None:
        """Start fetching the command's program and the libraries it loads, while the
        container is set up (see :mod:`lazyfs.fs.programs`). Only a hint: never fails."""
        spec = self.process_spec
        search = environment_path(spec.env)
        image = self.image
        try:
            started = await prefetch_program(
                image.tree, image.read, image.prefetch_whole, spec.args[0], search, cwd=spec.cwd
            )
        except Exception as exc:  # a bug here must not cost the run
            log.warning("prefetching %s failed: %r", spec.args[0], exc)
            return
        log.debug("prefetched %s: %s", spec.args[0], ", ".join(image.tree.path(i) for i in started))

    def init_spec(
        self, user: ResolvedUser, env: list[str], volumes: list[Volume], cgroup: Cgroup | None
    ) -> InitSpec:
        hostname = self.hostname
        return InitSpec(
            rootfs=str(self.rootfs),
            args=self.process_spec.args,
            env=env,
            cwd=self.process_spec.cwd,
            uid=user.uid,
            gid=user.gid,
            additional_gids=list(user.additional_gids),
            hostname=hostname,
            network=self.options.network,
            read_only=self.options.read_only,
            volumes=[
                {"source": str(v.source), "destination": v.destination, "read_only": v.read_only}
                for v in volumes
            ],
            bind_files=_etc_files(self.state, hostname, self.options.network),
            tty=self.options.tty,
            console=self.pty.slave_path if self.pty else None,
            no_new_privileges=self.options.no_new_privileges,
            capabilities=list(DEFAULT_CAPABILITIES),
            cgroup_procs=list(cgroup.procs_files) if cgroup else [],
            init=self.options.init,
            rlimits={},
        )

    async def start(self, spec: InitSpec) -> None:
        """Start the init program with ``spec``; returns once it is running."""
        spec_r, spec_w = os.pipe()
        status_r, status_w = os.pipe()
        os.write(spec_w, spec.to_json().encode())  # small: fits the pipe's buffer
        os.close(spec_w)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if self.pty is not None:
            stdio = (self.pty.slave,) * 3
        else:
            stdio = (0 if self.options.interactive else null, 1, 2)
        zygote = self.settings.zygote
        try:
            if zygote is not None and not zygote.started:
                self.process = zygote.start(spec_r, status_w, stdio)
            else:
                self.process = await _exec_init(spec_r, status_w, stdio)
        finally:
            for fd in (null, spec_r, status_w):
                os.close(fd)
            if self.pty is not None:
                self.pty.close_slave()
        self.status_fd = status_r

    async def read_status(self) -> None:
        """The init program's reports: the container's pid, then EOF (exec) or an error."""
        stream = trio.lowlevel.FdStream(self.status_fd)
        buffer = b""
        async with stream:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    break
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    message = json.loads(line)
                    if "pid" in message:
                        self.container_pid = int(message["pid"])
                    elif "error" in message:
                        self.error = message
        self.exec_done.set()

    # ------------------------------------------------------------------ running

    async def forward_signals(self, received) -> None:
        """Pass the signals of ``received`` (a trio signal receiver) on to the container."""
        stopping = False
        async with trio.open_nursery() as nursery:
            async for signum in received:
                if signum == signal.SIGWINCH:
                    if self.pty is not None:
                        terminal.copy_window_size(0, self.pty.master)
                    continue
                self._signal_container(signum)
                if signum in STOP_SIGNALS:
                    if stopping:
                        self._kill()
                    else:
                        stopping = True
                        nursery.start_soon(self._kill_after_timeout)

    def _signal_container(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(signum)  # the init's shim passes it on
            except ProcessLookupError:
                pass

    def _kill(self) -> None:
        """SIGKILL the container's PID 1: the kernel then kills its whole PID namespace."""
        if self.container_pid is not None and not self.exited.is_set():
            try:
                os.kill(self.container_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _kill_after_timeout(self) -> None:
        await trio.sleep(self.settings.stop_timeout)
        log.info("the container did not stop within %ss; killing it", self.settings.stop_timeout)
        self._kill()

    async def wait(self) -> int:
        assert self.process is not None
        await self.process.wait()
        self.exited.set()
        return self.process.returncode


async def run_container(
    store: ImageStore,
    client: RegistryClient,
    mount_options: MountOptions,
    options: RunOptions,
    settings: RunSettings | None = None,
    *,
    started: float | None = None,
) -> RunReport:
    """Run ``options``' command in the image ``store`` names; the report says how it went.

    Must be called in a process that is in a private mount namespace (see the module's
    docstring) and is root. The command's exit status is ``report.exit_code``: its own, or
    128+N if a signal N killed it, or 125-127 if it could not be started (then the reason
    was printed on stderr).
    """
    settings = settings or RunSettings()
    started = time.monotonic() if started is None else started
    timings: dict[str, float] = {}
    # What can be checked before anything is fetched is checked now.
    volumes = [parse_volume(v) for v in options.volumes]
    if options.hostname is not None:
        _check_hostname(options.hostname)
    image = await open_image(store, mount_options)
    for phase in ("resolve", "index", "merge"):
        timings[phase] = image.timings.get(phase, 0.0)
    image_bytes = sum(layer.size for layer in image.image.manifest.layers)
    state = Path(tempfile.mkdtemp(prefix="lazyfs-run-", dir=settings.state_root))
    container = _Container(image, options, settings, state)
    cgroup: Cgroup | None = None
    exit_code = SETUP_FAILED
    oom = False
    try:
        container.lower.mkdir()
        with (
            terminal.raw_mode(0)
            if options.tty and options.interactive
            else contextlib.nullcontext()
        ):
            async with trio.open_nursery() as nursery:
                mark = time.monotonic()
                ready = trio.Event()
                nursery.start_soon(lambda: mount_image(image, container.lower, ready=ready))
                await ready.wait()
                try:
                    container.process_spec = process_spec(
                        image.image.config, options, hostname=container.hostname
                    )
                    if mount_options.prefetch:
                        nursery.start_soon(container.prefetch_program)
                    user, env = await trio.to_thread.run_sync(container.prepare_rootfs)
                    timings["mount"] = time.monotonic() - mark
                    if options.memory or options.cpus or options.pids_limit:
                        cgroup = Cgroup.create(
                            f"run-{settings.run_id}",
                            memory=options.memory,
                            cpus=options.cpus,
                            pids=options.pids_limit,
                        )
                    if options.tty:
                        container.pty = terminal.open_pty(0 if os.isatty(0) else None)
                    spec = container.init_spec(user, env, volumes, cgroup)
                    mark = time.monotonic()
                    # From the container's start on, stop signals are the container's.
                    with trio.open_signal_receiver(*HANDLED_SIGNALS) as received:
                        await container.start(spec)
                        exit_code = await _supervise(container, nursery, timings, mark, received)
                    if container.error is not None:
                        print(f"lazyfs: error: {container.error['error']}", file=sys.stderr)
                        exit_code = int(container.error.get("code", SETUP_FAILED))
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(detach_mount, container.rootfs)
                    nursery.cancel_scope.cancel()  # unmounts the FUSE mount
        if cgroup is not None:
            oom = cgroup.oom_killed()
            if oom:
                print(
                    "lazyfs: the container ran out of memory (--memory) and was killed",
                    file=sys.stderr,
                )
    finally:
        if container.pty is not None:
            container.pty.close()
        if cgroup is not None:
            cgroup.destroy()
        image.close()
        _remove_state(state, keep=settings.keep)
    timings["total"] = time.monotonic() - started
    return RunReport(
        exit_code=exit_code,
        timings=timings,
        bytes_fetched=client.stats.bytes_received,
        image_bytes=image_bytes,
        oom_killed=oom,
        state_dir=state if settings.keep else None,
    )


async def _supervise(
    container: _Container,
    nursery: trio.Nursery,
    timings: dict[str, float],
    mark: float,
    received,
) -> int:
    """Run until the container's init exits; relay the terminal and signals meanwhile."""
    async with trio.open_nursery() as inner:
        inner.start_soon(container.read_status)
        inner.start_soon(container.forward_signals, received)
        if container.pty is not None:
            if container.options.interactive:
                inner.start_soon(terminal.pump, 0, container.pty.master)
            output = trio.Event()

            async def pump_out() -> None:
                assert container.pty is not None
                await terminal.pump(container.pty.master, 1)
                output.set()

            nursery.start_soon(pump_out)
        await container.exec_done.wait()
        timings["exec"] = time.monotonic() - mark
        mark = time.monotonic()
        returncode = await container.wait()
        timings["run"] = time.monotonic() - mark
        if container.pty is not None:
            with trio.move_on_after(2):  # what the command wrote last, still in the pty
                await output.wait()
        inner.cancel_scope.cancel()
    return _exit_code(returncode)


def detach_mount(path: Path) -> None:
    """Lazily unmount ``path`` if it is a mount point; a failure is logged, not raised."""
    try:
        if is_mountpoint(path):
            umount2(str(path), MNT_DETACH)
    except OSError as exc:
        log.error("could not unmount %s: %s", path, exc)


def _remove_state(state: Path, *, keep: bool) -> None:
    """Remove the run's state directory, never through a mount still in it."""
    if keep:
        print(f"lazyfs: kept the container's state in {state}", file=sys.stderr)
        return
    for sub in ("rootfs", "lower"):
        if is_mountpoint(state / sub):
            log.error("%s is still mounted; leaving %s in place", state / sub, state)
            return
    shutil.rmtree(state, ignore_errors=True)


def _check_hostname(name: str) -> None:
    labels = name.split(".")
    if not 0 < len(name) <= 64 or not all(
        label and all(c.isalnum() or c == "-" for c in label) for label in labels
    ):
        raise LazyfsError(f"invalid hostname {name!r}")
