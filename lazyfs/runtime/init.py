"""The in-container init of ``lazyfs run``: namespaces, the root filesystem, then the command.

``lazyfs run`` starts this module as ``python -m lazyfs.runtime.init SPEC_FD STATUS_FD``
with the container's stdio on fds 0-2. It reads an :class:`InitSpec` (JSON) from ``SPEC_FD``
to EOF, then:

1. writes its pid into each ``cgroup.procs`` file of ``spec.cgroup_procs``;
2. unshares the mount, UTS, IPC and PID namespaces (and the network namespace for
   ``network == "none"``) and makes ``/`` recursively private in the new mount namespace;
3. forks. The parent, "the shim", stays outside the new PID namespace: it reports
   ``{"pid": <child's host pid>}`` on ``STATUS_FD``, forwards SIGINT, SIGTERM, SIGHUP,
   SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH and SIGCONT to the child, and exits with the child's
   exit code (128 + N when signal N killed it);
4. the child, PID 1 of the new namespace, mounts inside ``spec.rootfs``: ``/proc``,
   ``/dev`` (with ``pts``, ``shm``, ``mqueue`` and ``console``), a read-only ``/sys``, masks
   over what Docker hides in ``/proc`` and ``/sys`` (``/proc/kcore``, ``/proc/keys``,
   ``/sys/firmware``...) and read-only binds over ``/proc/sys``, ``/proc/sysrq-trigger``...,
   then the bind files and the volumes; it creates the working directory, pivots into the
   rootfs, applies read-only root, host name, loopback, session and terminal, resource
   limits, capability bounding set, groups and ids, capabilities, ``no_new_privs`` and
   working directory, then executes the command: itself (``spec.init`` false, so the command
   is PID 1), or as PID 2 under a small reaper that forwards signals and reaps orphans
   (``spec.init`` true). It dies with the shim (parent death signal SIGKILL).

``STATUS_FD`` carries JSON lines: ``{"pid": N}`` first, then, only when setup or the exec
failed, ``{"error": "<message>", "code": C}`` with C = 127 (command not found), 126 (not
executable) or 125 (setup failure); the process then exits with C. A successful exec closes
the descriptor (it is close-on-exec in the container), so the reader sees EOF. A failure
before the fork (bad spec, cgroup, unshare) writes only the error line.

Paths inside the root filesystem are created without following symbolic links out of it:
each component is looked up in the rootfs, a symbolic link is resolved relative to the
rootfs root, and a ``..`` that would climb above it is refused.

The module imports only the standard library and :mod:`lazyfs.runtime.syscalls` (no trio),
and everything it needs is imported before ``pivot_root``, after which the host's Python
library is out of reach.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import os
import posixpath
import resource
import signal
import stat
import sys
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from lazyfs.runtime import syscalls

__all__ = [
    "DEFAULT_CAPABILITIES",
    "FORWARDED_SIGNALS",
    "InitSpec",
    "SetupError",
    "environment_path",
    "main",
    "resolve_in_root",
]

#: Capabilities a container keeps unless told otherwise (Docker's default set).
DEFAULT_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)

#: Signals the shim and the reaper pass on to the process they watch.
FORWARDED_SIGNALS = frozenset(
    {
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGWINCH,
        signal.SIGCONT,
    }
)
_WAITED_SIGNALS = FORWARDED_SIGNALS | {signal.SIGCHLD}

#: Exit codes (and ``code`` of the error line), as ``docker run`` uses them.
SETUP_FAILED = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127

#: ``PATH`` when neither the image nor the options set one (Docker's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Symbolic links :func:`resolve_in_root` follows before giving up (the kernel's limit).
MAX_SYMLINKS = 40

# Character devices of /dev: name -> (major, minor).
_DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
_DEV_SYMLINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
    "core": "/proc/kcore",
}
# What Docker hides in /proc and /sys (masked: /dev/null or an empty tmpfs on top), and the
# parts of /proc it makes read-only.
_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NODEV_NOEXEC = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
# statvfs f_flag bits -> the mount flags a bind remount must repeat to keep them.
_KEPT_MOUNT_FLAGS = {
    os.ST_NOSUID: syscalls.MS_NOSUID,
    os.ST_NODEV: syscalls.MS_NODEV,
    os.ST_NOEXEC: syscalls.MS_NOEXEC,
    os.ST_NOATIME: os.ST_NOATIME,
    os.ST_NODIRATIME: os.ST_NODIRATIME,
    os.ST_RELATIME: syscalls.MS_RELATIME,
}


@dataclass
class InitSpec:
    """What the init sets up and runs; ``lazyfs run`` fills it and sends it as JSON.

    Attributes:
        rootfs: Host path of the container's root filesystem (a mount point, or made one).
        args: The command and its arguments; ``args[0]`` is looked up in the ``PATH`` of
            ``env`` inside the container when it has no ``/``.
        env: The command's whole environment, ``"KEY=value"`` strings, passed as is.
        cwd: Working directory in the container; created (owned by root) when missing.
        uid, gid: Numeric user and primary group the command runs as.
        additional_gids: Supplementary groups (the whole list; nothing is added).
        hostname: Host name of the container's UTS namespace ("" leaves it unchanged).
        network: ``"host"`` shares the host's network namespace; ``"none"`` gives a new one
            with only ``lo``, up.
        read_only: Remount the root filesystem read-only (volumes, ``/dev`` and
            ``/dev/shm`` stay writable).
        volumes: ``{"source": host path, "destination": container path, "read_only":
            bool}`` dicts, bind-mounted recursively in order.
        bind_files: Container path -> host file bind-mounted on it (``/etc/hosts``...);
            skipped with a warning when the container path is a symlink or not a file.
        tty: fds 0-2 are a terminal: it becomes the controlling terminal of the container.
        console: Host path of that terminal, bound on ``/dev/console`` when ``tty``.
        no_new_privileges: Set ``no_new_privs`` before the exec.
        capabilities: Capability names kept in the bounding set (and, for uid 0, in the
            effective and permitted sets); every other one is dropped.
        cgroup_procs: ``cgroup.procs`` files the init writes its pid into first.
        init: Run a reaper as PID 1 and the command as PID 2.
        rlimits: ``{"RLIMIT_NOFILE": [soft, hard]}``; -1 is unlimited.
    """

    rootfs: str
    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    hostname: str = ""
    network: str = "host"
    read_only: bool = False
    volumes: list[dict[str, Any]] = field(default_factory=list)
    bind_files: dict[str, str] = field(default_factory=dict)
    tty: bool = False
    console: str | None = None
    no_new_privileges: bool = False
    capabilities: list[str] = field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    cgroup_procs: list[str] = field(default_factory=list)
    init: bool = False
    rlimits: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> str:
        """The spec as one JSON document."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> InitSpec:
        """Parse and check a spec; :class:`ValueError` says what is wrong with it."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown keys {', '.join(unknown)}")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        spec._check()
        return spec

    def _check(self) -> None:
        def fail(what: str) -> NoReturn:
            raise ValueError(what)

        def is_str_list(value: object) -> bool:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)

        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not isinstance(self.rootfs, str) or not self.rootfs.startswith("/"):
            fail("rootfs must be an absolute path")
        if not is_str_list(self.args) or not self.args:
            fail("args must be a non-empty list of strings")
        if not is_str_list(self.env):
            fail("env must be a list of strings")
        if any("\0" in item for item in (*self.args, *self.env)):
            fail("args and env cannot contain NUL characters")
        if not isinstance(self.cwd, str) or not self.cwd.startswith("/"):
            fail("cwd must be an absolute path")
        if not (is_int(self.uid) and is_int(self.gid) and self.uid >= 0 and self.gid >= 0):
            fail("uid and gid must be non-negative integers")
        if not isinstance(self.additional_gids, list) or not all(
            is_int(g) and g >= 0 for g in self.additional_gids
        ):
            fail("additional_gids must be a list of non-negative integers")
        if not isinstance(self.hostname, str):
            fail("hostname must be a string")
        if self.network not in ("host", "none"):
            fail(f"network must be 'host' or 'none', not {self.network!r}")
        for volume in self.volumes:
            if (
                not isinstance(volume, dict)
                or set(volume) != {"source", "destination", "read_only"}
                or not isinstance(volume["source"], str)
                or not isinstance(volume["destination"], str)
                or not volume["source"].startswith("/")
                or not volume["destination"].startswith("/")
                or not isinstance(volume["read_only"], bool)
            ):
                fail(f"bad volume {volume!r}: want absolute source, destination and read_only")
        if not isinstance(self.bind_files, dict) or not all(
            isinstance(k, str) and k.startswith("/") and isinstance(v, str)
            for k, v in self.bind_files.items()
        ):
            fail("bind_files must map absolute container paths to host paths")
        if self.console is not None and not isinstance(self.console, str):
            fail("console must be a path or null")
        if not is_str_list(self.capabilities):
            fail("capabilities must be a list of names")
        unknown = [c for c in self.capabilities if c not in syscalls.CAPABILITIES]
        if unknown:
            fail(f"unknown capabilities {', '.join(unknown)}")
        if not is_str_list(self.cgroup_procs):
            fail("cgroup_procs must be a list of paths")
        for name, value in (self.rlimits or {}).items():
            if not name.startswith("RLIMIT_") or not hasattr(resource, name):
                fail(f"unknown resource limit {name}")
            if not (isinstance(value, list) and len(value) == 2 and all(map(is_int, value))):
                fail(f"{name} must be [soft, hard]")
        for flag in ("read_only", "tty", "no_new_privileges", "init"):
            if not isinstance(getattr(self, flag), bool):
                fail(f"{flag} must be true or false")


class SetupError(Exception):
    """Setting up or starting the container failed; ``code`` is the exit code to report."""

    def __init__(self, message: str, code: int = SETUP_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _reason(exc: OSError) -> str:
    """The message of an OSError without Python's ``[Errno N]`` prefix."""
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn an OSError raised inside into a :class:`SetupError` saying ``what`` failed."""
    try:
        yield
    except OSError as exc:
        raise SetupError(f"{what}: {_reason(exc)}") from None


class _Status:
    """The status descriptor: JSON lines to ``lazyfs run``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, message: dict[str, Any]) -> None:
        try:
            os.write(self.fd, (json.dumps(message) + "\n").encode())
        except OSError:
            pass  # nobody listens any more; the exit code still tells

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def fail(self, error: SetupError) -> NoReturn:
        """Report ``error`` and exit with its code, without Python's shutdown."""
        self.write({"error": error.message, "code": error.code})
        os._exit(error.code)


def _warn(message: str) -> None:
    try:
        os.write(2, f"lazyfs: warning: {message}\n".encode())
    except OSError:
        pass


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# ----------------------------------------------------------------- paths inside the rootfs


def resolve_in_root(root: str, path: str, *, follow_last: bool = True) -> tuple[str, list[str]]:
    """Find container path ``path`` in the root filesystem at host path ``root``.

    Walks ``path`` one component at a time under ``root``: a symbolic link is read and its
    target followed inside ``root`` (an absolute target starts again at ``root``), and a
    ``..`` at ``root`` stays there, as it does at ``/`` in the container, so the walk never
    leaves the root filesystem. ``..`` is taken after the links before it, as the kernel
    does (``/link/..`` is the parent of the link's target). The last component
    is followed only when ``follow_last``. More than :data:`MAX_SYMLINKS` links, or a
    component under something that is not a directory, raise :class:`SetupError`.

    Returns the host path of the longest prefix that exists, and the components that do not
    (empty when the whole path exists).
    """
    parts = collections.deque(p for p in path.split("/") if p not in ("", "."))
    done: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if done:
                done.pop()
            continue
        host = posixpath.join(root, *done, part)
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return posixpath.join(root, *done), [part, *parts]
        except OSError as exc:
            raise SetupError(f"{path}: {_reason(exc)}") from None
        if stat.S_ISLNK(st.st_mode) and (parts or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise SetupError(f"{path}: too many levels of symbolic links")
            target = os.readlink(host)
            if target.startswith("/"):
                done = []
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if parts and not stat.S_ISDIR(st.st_mode):
            raise SetupError(f"{path}: {posixpath.join('/', *done, part)} is not a directory")
        done.append(part)
    return posixpath.join(root, *done), []


def _create_in_root(root: str, path: str, kind: str) -> str:
    """The host path of ``path`` in ``root``, created as ``kind`` ("dir"/"file") if missing.

    Missing parent directories are created (mode 755). An existing path is returned as is,
    whatever its type; the caller checks it.
    """
    host, missing = resolve_in_root(root, path)
    for i, part in enumerate(missing):
        if part == "..":
            raise SetupError(f"cannot create {path}: it goes through a missing directory")
        host = posixpath.join(host, part)
        with _step(f"cannot create {path} in the container"):
            if kind == "file" and i == len(missing) - 1:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(host, flags, 0o644))
            else:
                os.mkdir(host, 0o755)
    return host


# ------------------------------------------------------------------------------- mounts


def _mount_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            raw = line.split(b" ")[4]
            points.add(
                raw.replace(b"\\040", b" ")
                .replace(b"\\011", b"\t")
                .replace(b"\\012", b"\n")
                .replace(b"\\134", b"\\")
                .decode("utf-8", "surrogateescape")
            )
    return points


def _remount_read_only(target: str) -> None:
    """Make the mount at ``target`` read-only, keeping its nosuid/nodev/noexec/atime flags."""
    kept = os.statvfs(target).f_flag
    flags = syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY
    for bit, mount_flag in _KEPT_MOUNT_FLAGS.items():
        if kept & bit:
            flags |= mount_flag
    if not kept & (os.ST_NOATIME | os.ST_RELATIME):
        flags |= syscalls.MS_STRICTATIME
    syscalls.mount(None, target, None, flags)


def _mount_volume(root: str, volume: dict[str, Any]) -> None:
    source, destination = volume["source"], volume["destination"]
    try:
        is_dir = stat.S_ISDIR(os.stat(source).st_mode)
    except FileNotFoundError:
        raise SetupError(f"volume source {source} does not exist") from None
    except OSError as exc:
        raise SetupError(f"volume source {source}: {_reason(exc)}") from None
    target = _create_in_root(root, destination, "dir" if is_dir else "file")
    if is_dir != stat.S_ISDIR(os.stat(target).st_mode):
        kind = "directory" if is_dir else "file"
        raise SetupError(f"cannot mount {kind} {source} on {destination}: not a {kind}")
    with _step(f"cannot mount volume {source} on {destination}"):
        syscalls.mount(source, target, None, syscalls.MS_BIND | syscalls.MS_REC)
        if volume["read_only"]:
            _remount_read_only(target)


def _bind_file(root: str, destination: str, source: str) -> None:
    host, missing = resolve_in_root(root, destination, follow_last=False)
    if missing:
        target = _create_in_root(root, destination, "file")
    else:
        target = host
        mode = os.lstat(target).st_mode
        if not stat.S_ISREG(mode):
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            _warn(f"{destination} is {what} in the image; not binding {source} on it")
            return
    with _step(f"cannot bind {source} on {destination}"):
        syscalls.mount(source, target, None, syscalls.MS_BIND)


def _mount_proc(root: str) -> None:
    target = _create_in_root(root, "/proc", "dir")
    with _step("cannot mount /proc"):
        syscalls.mount("proc", target, "proc", _NOSUID_NODEV_NOEXEC)


def _mount_dev(root: str, console: str | None) -> None:
    dev = _create_in_root(root, "/dev", "dir")
    with _step("cannot set up /dev"):
        syscalls.mount(
            "tmpfs",
            dev,
            "tmpfs",
            syscalls.MS_NOSUID | syscalls.MS_STRICTATIME,
            "mode=755,size=65536k",
        )
        for name, (major, minor) in _DEVICES.items():
            node = posixpath.join(dev, name)
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(node, 0o666)
        for name, target in _DEV_SYMLINKS.items():
            os.symlink(target, posixpath.join(dev, name))
        for name in ("pts", "shm", "mqueue"):
            os.mkdir(posixpath.join(dev, name), 0o755)
    with _step("cannot mount /dev/pts"):
        syscalls.mount(
            "devpts",
            posixpath.join(dev, "pts"),
            "devpts",
            syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        )
    with _step("cannot mount /dev/shm"):
        syscalls.mount(
            "shm",
            posixpath.join(dev, "shm"),
            "tmpfs",
            _NOSUID_NODEV_NOEXEC,
            "mode=1777,size=65536k",
        )
    with _step("cannot mount /dev/mqueue"):
        syscalls.mount("mqueue", posixpath.join(dev, "mqueue"), "mqueue", _NOSUID_NODEV_NOEXEC)
    if console is not None:
        target = posixpath.join(dev, "console")
        with _step(f"cannot bind {console} on /dev/console"):
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            syscalls.mount(console, target, None, syscalls.MS_BIND)


def _mount_sys(root: str) -> None:
    target = _create_in_root(root, "/sys", "dir")
    with _step("cannot mount /sys"):
        try:
            syscalls.mount("sysfs", target, "sysfs", syscalls.MS_RDONLY | _NOSUID_NODEV_NOEXEC)
        except PermissionError:
            # sysfs may only be mounted from a network namespace the mounter owns.
            syscalls.mount("/sys", target, None, syscalls.MS_BIND | syscalls.MS_REC)
            _remount_read_only(target)


def _mask_paths(root: str) -> None:
    """Hide and write-protect the /proc and /sys entries Docker hides from containers."""
    null = posixpath.join(root, "dev/null")
    for path in _MASKED_PATHS:
        host, missing = resolve_in_root(root, path, follow_last=False)
        if missing:
            continue
        mode = os.lstat(host).st_mode
        with _step(f"cannot mask {path}"):
            if stat.S_ISDIR(mode):
                syscalls.mount("tmpfs", host, "tmpfs", syscalls.MS_RDONLY, "size=0,mode=555")
            elif not stat.S_ISLNK(mode):
                syscalls.mount(null, host, None, syscalls.MS_BIND)
    for path in _READONLY_PATHS:
        host, missing = resolve_in_root(root, path, follow_last=False)
        if missing or stat.S_ISLNK(os.lstat(host).st_mode):
            continue
        with _step(f"cannot make {path} read-only"):
            syscalls.mount(host, host, None, syscalls.MS_BIND | syscalls.MS_REC)
            _remount_read_only(host)


def _set_up_rootfs(spec: InitSpec) -> None:
    """Everything mounted in the rootfs, pivoted into, root read-only if asked."""
    root = os.path.realpath(spec.rootfs)
    if root not in _mount_points():
        with _step(f"cannot bind {root} on itself"):
            syscalls.mount(root, root, None, syscalls.MS_BIND | syscalls.MS_REC)
    _mount_proc(root)
    _mount_dev(root, spec.console if spec.tty else None)
    _mount_sys(root)
    _mask_paths(root)
    for destination, source in spec.bind_files.items():
        _bind_file(root, destination, source)
    for volume in spec.volumes:
        _mount_volume(root, volume)
    cwd = _create_in_root(root, spec.cwd, "dir")
    if not stat.S_ISDIR(os.stat(cwd).st_mode):
        raise SetupError(f"working directory {spec.cwd} exists and is not a directory")
    with _step(f"cannot pivot into {root}"):
        os.chdir(root)
        syscalls.pivot_root(".", ".")
        syscalls.umount2(".", syscalls.MNT_DETACH)
        os.chdir("/")
    if spec.read_only:
        with _step("cannot make the root filesystem read-only"):
            _remount_read_only("/")


# -------------------------------------------------------------------- process settings


def _set_up_process(spec: InitSpec) -> None:
    """Host name, network, session, limits, identity, capabilities, working directory."""
    if spec.hostname:
        with _step("cannot set the host name"):
            syscalls.sethostname(spec.hostname)
    if spec.network == "none":
        with _step("cannot bring up lo"):
            syscalls.bring_up_loopback()
    with _step("cannot start a session"):
        os.setsid()
    if spec.tty:
        with _step("cannot make the terminal the controlling terminal"):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for name, (soft, hard) in spec.rlimits.items():
        with _step(f"cannot set {name} to {soft}:{hard}"):
            resource.setrlimit(getattr(resource, name), (soft, hard))
    keep = syscalls.capability_mask(spec.capabilities)
    with _step("cannot drop capabilities"):
        syscalls.drop_bounding_capabilities(keep)
        syscalls.clear_ambient_capabilities()
    with _step(f"cannot switch to uid {spec.uid} gid {spec.gid}"):
        os.setgroups(spec.additional_gids)
        os.setgid(spec.gid)
        os.setuid(spec.uid)
    with _step("cannot set capabilities"):
        if spec.uid == 0:
            _effective, permitted, _inheritable = syscalls.get_capabilities()
            syscalls.set_capabilities(keep & permitted, keep & permitted, 0)
        else:
            syscalls.set_capabilities(0, 0, 0)
    if spec.no_new_privileges:
        with _step("cannot set no_new_privs"):
            syscalls.set_no_new_privs()
    with _step(f"cannot change to the working directory {spec.cwd}"):
        os.chdir(spec.cwd)


# --------------------------------------------------------------------------------- exec


def environment_path(env: list[str]) -> str:
    """The ``PATH`` of a ``K=V`` environment (:data:`DEFAULT_PATH` if it has none)."""
    for entry in env:
        if entry.startswith("PATH="):
            return entry[5:]
    return DEFAULT_PATH


def _exec(spec: InitSpec) -> NoReturn:
    """Execute the command like ``execvpe`` with the container's PATH; raise on failure."""
    name = spec.args[0]
    searching = "/" not in name
    if searching:
        path = environment_path(spec.env)
        candidates = [posixpath.join(d or ".", name) for d in path.split(":")]
    else:
        candidates = [name]
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    denied = None
    for candidate in candidates:
        try:
            syscalls.execve(candidate, spec.args, spec.env)
        except OSError as exc:
            missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            reason = os.strerror(exc.errno or 0).lower()
            if not searching:
                code = NOT_FOUND if missing else NOT_EXECUTABLE
                raise SetupError(f"{name}: {reason}", code) from None
            if missing:
                continue
            if exc.errno == errno.EACCES:
                denied = candidate
                continue
            raise SetupError(f"{candidate}: {reason}", NOT_EXECUTABLE) from None
    if denied is not None:
        raise SetupError(f"{denied}: permission denied", NOT_EXECUTABLE)
    raise SetupError(f"{name}: executable file not found in $PATH", NOT_FOUND)


def _wait_signals() -> Iterator[int]:
    """Blocked signals of :data:`_WAITED_SIGNALS`, as they come."""
    while True:
        yield signal.sigwaitinfo(_WAITED_SIGNALS).si_signo


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass  # gone already, or no longer ours to signal


def _reap(spec: InitSpec, status: _Status) -> NoReturn:
    """PID 1 with ``init``: run the command as PID 2, forward signals, reap every child."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    command = os.fork()
    if command == 0:
        try:
            os.setpgid(0, 0)
            if spec.tty:
                os.tcsetpgrp(0, os.getpid())
            _exec(spec)
        except SetupError as exc:
            status.fail(exc)
        except BaseException as exc:
            status.fail(SetupError(f"cannot start the command: {exc!r}"))
    status.close()
    for sig in _wait_signals():
        if sig != signal.SIGCHLD:
            _forward(command, sig)
            continue
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == command:
                os._exit(_exit_code(wait_status))
    raise AssertionError("unreachable")


def _container(spec: InitSpec, status: _Status, lifeline: int) -> NoReturn:
    """The child of the shim: PID 1 of the container."""
    os.set_inheritable(status.fd, False)
    try:
        _set_up_rootfs(spec)
        _set_up_process(spec)
        # The shim is our parent: die with it. Set after the id changes, which clear it.
        with _step("cannot set the parent death signal"):
            syscalls.set_pdeathsig(signal.SIGKILL)
        os.set_blocking(lifeline, False)
        try:
            if os.read(lifeline, 1) == b"":
                os._exit(SETUP_FAILED)  # the shim died before the death signal was set
        except BlockingIOError:
            pass
        os.close(lifeline)
        if spec.init:
            _reap(spec, status)
        _exec(spec)
    except SetupError as exc:
        status.fail(exc)
    except BaseException as exc:
        status.fail(SetupError(f"container setup failed: {exc!r}"))


def _shim(child: int) -> NoReturn:
    """Forward signals to ``child`` until it exits, then exit with its code."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    parent = os.getppid()
    while True:
        info = signal.sigtimedwait(_WAITED_SIGNALS, 0.5)
        if info is None:
            # lazyfs (our parent) serves the container's root filesystem: if it is gone
            # (killed), the container cannot go on; its end comes back here as SIGCHLD.
            if os.getppid() != parent:
                _forward(child, signal.SIGKILL)
            continue
        sig = info.si_signo
        if sig != signal.SIGCHLD:
            _forward(child, sig)
            continue
        pid, wait_status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            os._exit(_exit_code(wait_status))
    raise AssertionError("unreachable")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _join_cgroups(paths: list[str]) -> None:
    pid = str(os.getpid()).encode()
    for path in paths:
        with _step(f"cannot join cgroup {path}"):
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: ``python -m lazyfs.runtime.init SPEC_FD STATUS_FD``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        sys.stderr.write("usage: python -m lazyfs.runtime.init SPEC_FD STATUS_FD\n")
        sys.exit(2)
    status = _Status(int(args[1]))
    try:
        spec = InitSpec.from_json(_read_all(int(args[0])))
    except (OSError, ValueError) as exc:
        status.fail(SetupError(f"invalid init spec: {exc}"))
    flags = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC
    flags |= syscalls.CLONE_NEWPID
    if spec.network == "none":
        flags |= syscalls.CLONE_NEWNET
    try:
        _join_cgroups(spec.cgroup_procs)
        with _step("cannot create the container's namespaces"):
            syscalls.unshare(flags)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    except SetupError as exc:
        status.fail(exc)

    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_SIGNALS)
    lifeline_r, lifeline_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(lifeline_w)
        if os.read(lifeline_r, 1) != b"g":
            os._exit(SETUP_FAILED)  # the shim is gone
        _container(spec, status, lifeline_r)
    os.close(lifeline_r)
    status.write({"pid": child})
    status.close()
    os.write(lifeline_w, b"g")  # kept open: the child sees EOF when the shim dies
    _shim(child)


if __name__ == "__main__":
    main()
