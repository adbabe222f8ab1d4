"""From an image config and ``docker run``-style options to an OCI runtime bundle's config.

This module is the policy half of ``lazyfs run`` and ``lazyfs bundle``: pure functions, no
namespaces and no mounting. It decides, with Docker's semantics:

* what process to start (:func:`process_spec`): the arguments from the image's
  ``Entrypoint``/``Cmd`` and ``--entrypoint``/the command line, the environment from the
  image's ``Env``, ``--env-file`` and ``-e``, the working directory and the user text;
* which uid, gid and supplementary groups that user text means inside the image
  (:func:`resolve_user`), reading the image's ``/etc/passwd`` and ``/etc/group`` without ever
  leaving the root filesystem (:func:`resolve_in_root`), and the ``HOME`` it implies
  (:func:`apply_user_env`);
* what ``-v``, ``--memory`` and ``--cpus`` texts mean (:func:`parse_volume`,
  :func:`parse_memory`, :func:`parse_cpus`);
* the OCI runtime-spec ``config.json`` (:func:`runtime_spec`) that runc, crun and runsc run:
  Docker's default capabilities, mounts, masked paths and device rules.

Every error a user can cause is a :class:`RunConfigError` (a
:class:`~lazyfs.errors.LazyfsError`) with a one-line message.
"""

from __future__ import annotations

import errno
import math
import os
import posixpath
import re
import resource
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from lazyfs.errors import LazyfsError
from lazyfs.oci.manifest import ImageConfig
from lazyfs.runtime import init as _init
from lazyfs.runtime.init import DEFAULT_CAPABILITIES, DEFAULT_PATH, MAX_SYMLINKS

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "MAX_SYMLINKS",
    "MAX_USER_DB_SIZE",
    "MIN_MEMORY",
    "OCI_VERSION",
    "ProcessSpec",
    "ResolvedUser",
    "RunConfigError",
    "RunOptions",
    "Volume",
    "apply_user_env",
    "parse_cpus",
    "parse_memory",
    "parse_volume",
    "process_spec",
    "read_env_file",
    "resolve_in_root",
    "resolve_user",
    "runtime_spec",
]

OCI_VERSION = "1.0.2"
"""The runtime-spec version :func:`runtime_spec` documents claim (runc 1.1, crun 1.8 and
gVisor accept it)."""

MAX_USER_DB_SIZE = 4 * 1024 * 1024
"""Largest ``/etc/passwd`` or ``/etc/group`` :func:`resolve_user` reads."""

MIN_MEMORY = 6 * 1024 * 1024
"""Smallest ``--memory`` accepted (Docker's minimum)."""

_MAX_ID = 2**31 - 1
_NOFILE_LIMIT = 1024 * 1024
_CFS_PERIOD_US = 100_000
_MIN_CPUS = Fraction(1, 100)

_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Character devices every container may use (any minor when None).
_ALLOWED_CHAR_DEVICES = (
    (1, 3),  # null
    (1, 5),  # zero
    (1, 7),  # full
    (1, 8),  # random
    (1, 9),  # urandom
    (5, 0),  # tty
    (5, 1),  # console
    (5, 2),  # ptmx
    (136, None),  # the container's own pseudo-terminals
)


class RunConfigError(LazyfsError):
    """Options, an image config or image files that cannot be turned into a container."""


# -- options and the process --------------------------------------------------------------


@dataclass
class RunOptions:
    """The ``docker run`` options lazyfs understands, already split into fields.

    ``entrypoint`` is one executable (never split on spaces); ``""`` clears the image's
    Entrypoint and None keeps it. ``command`` holds the arguments after the image. ``env``
    holds ``-e`` texts (``K=V``, or ``K`` to take ``K`` from the host environment),
    ``volumes`` raw ``-v`` texts (see :func:`parse_volume`). ``network`` is ``"host"`` or
    ``"none"``. ``memory`` is in bytes and ``cpus`` in CPUs (see :func:`parse_memory` and
    :func:`parse_cpus`); ``pids_limit`` of None or less than 1 means no limit. ``init``
    and ``interactive`` concern how the caller starts the process, not its configuration.
    """

    entrypoint: str | None = None
    command: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    env_files: list[Path] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    tty: bool = False
    interactive: bool = False
    volumes: list[str] = field(default_factory=list)
    read_only: bool = False
    network: str = "host"
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    init: bool = False
    no_new_privileges: bool = True


@dataclass
class ProcessSpec:
    """The container's first process: arguments, ``K=V`` environment, absolute working
    directory, and the user text still to resolve with :func:`resolve_user` (``""`` means
    uid 0)."""

    args: list[str]
    env: list[str]
    cwd: str
    user: str


def process_spec(
    config: ImageConfig,
    options: RunOptions,
    host_env: Mapping[str, str] = os.environ,
    *,
    hostname: str | None = None,
) -> ProcessSpec:
    """Combine an image config with run options the way ``docker run`` does.

    Arguments: the entrypoint is ``options.entrypoint`` when given (``""`` meaning none),
    else the image's Entrypoint; the command is ``options.command`` when not empty, else the
    image's Cmd, except that giving ``--entrypoint`` drops the image's Cmd. The arguments
    are the entrypoint followed by the command; none at all is an error.

    Environment: ``PATH`` (:data:`DEFAULT_PATH`), ``HOSTNAME`` (*hostname*, else
    ``options.hostname``; left out when both are None) and, with a tty, ``TERM=xterm`` come
    first, then the image's Env, the env files in order (:func:`read_env_file`) and the
    ``-e`` options; a later value for a name replaces an earlier one in place, so names keep
    the position they first appeared at. ``-e K`` takes ``K`` from *host_env*; when the host
    has no ``K`` it removes ``K`` (as Docker does, even the image's value), and so does a bare
    ``K`` in an env file. ``HOME`` is added later, by :func:`apply_user_env`.

    Working directory: ``options.workdir`` (which must be absolute), else the image's
    WorkingDir (a relative one is taken from ``/``), else ``/``; normalised. User:
    ``options.user``, else the image's User, else ``""``. As with Docker, an empty
    ``options.workdir`` or ``options.user`` counts as not given.
    """
    if hostname is None:
        hostname = options.hostname
    return ProcessSpec(
        args=_arguments(config, options),
        env=_environment(config, options, host_env, hostname),
        cwd=_working_dir(config, options),
        user=options.user or config.user or "",
    )


def _arguments(config: ImageConfig, options: RunOptions) -> list[str]:
    if options.entrypoint is not None:
        entrypoint = [options.entrypoint] if options.entrypoint else []
        command = list(options.command)
    else:
        entrypoint = list(config.entrypoint or [])
        if entrypoint == [""]:
            entrypoint = []
        command = list(options.command) if options.command else list(config.cmd or [])
    args = entrypoint + command
    if not args or not args[0]:
        raise RunConfigError("no command: the image has no Entrypoint or Cmd and none was given")
    return args


def _working_dir(config: ImageConfig, options: RunOptions) -> str:
    if options.workdir:
        if not options.workdir.startswith("/"):
            raise RunConfigError(
                f"working directory {options.workdir!r} is invalid: it must be an absolute path"
            )
        return _clean_absolute(options.workdir)
    if config.working_dir:
        return _clean_absolute("/" + config.working_dir)
    return "/"


def _clean_absolute(path: str) -> str:
    """*path* (absolute) without ``.``, ``..``, repeated or trailing slashes."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _check_env_entry(entry: str, where: str) -> None:
    if "\0" in entry:
        raise RunConfigError(f"{where}: environment variable {entry!r} contains a NUL byte")


def _from_host(name: str, host_env: Mapping[str, str]) -> str:
    """``name=value`` from *host_env*, or the bare *name* (meaning: unset it)."""
    value = host_env.get(name)
    return name if value is None else f"{name}={value}"


def read_env_file(path: Path, host_env: Mapping[str, str] = os.environ) -> list[str]:
    """Read a Docker ``--env-file``: ``K=V`` lines, in order.

    Lines are UTF-8 (a leading byte-order mark is dropped). Leading whitespace is ignored;
    blank lines and lines starting with ``#`` are skipped. The value is everything after the
    first ``=``, verbatim (no quotes are removed). A line without ``=`` names a variable to
    take from *host_env*; if the host has none, the bare name is returned, which
    :func:`process_spec` reads as "unset". A name that is empty or contains a space or tab
    raises :class:`RunConfigError` naming ``file:line``.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RunConfigError(f"cannot read env file {path}: {exc.strerror}") from None
    entries: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{number}"
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise RunConfigError(f"{where}: not valid UTF-8") from None
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, has_value, value = line.partition("=")
        name = name.lstrip(" \t")
        if not name:
            raise RunConfigError(f"{where}: no variable name before '='")
        if " " in name or "\t" in name:
            raise RunConfigError(f"{where}: variable name {name!r} contains whitespace")
        entry = f"{name}={value}" if has_value else _from_host(name, host_env)
        _check_env_entry(entry, where)
        entries.append(entry)
    return entries


def _environment(
    config: ImageConfig,
    options: RunOptions,
    host_env: Mapping[str, str],
    hostname: str | None,
) -> list[str]:
    merged: dict[str, str | None] = {"PATH": DEFAULT_PATH}
    if hostname is not None:
        merged["HOSTNAME"] = hostname
    if options.tty:
        merged["TERM"] = "xterm"

    def apply(entries: Iterable[str]) -> None:
        for entry in entries:
            name, has_value, value = entry.partition("=")
            merged[name] = value if has_value else None

    for entry in config.env:
        _check_env_entry(entry, "image config Env")
    apply(config.env)
    for env_file in options.env_files:
        apply(read_env_file(env_file, host_env))
    for text in options.env:
        name, has_value, _ = text.partition("=")
        if not name:
            raise RunConfigError(f"invalid environment variable {text!r}: the name is empty")
        entry = text if has_value else _from_host(name, host_env)
        _check_env_entry(entry, "-e")
        apply([entry])
    return [f"{name}={value}" for name, value in merged.items() if value is not None]


# -- paths inside the root filesystem -----------------------------------------------------


def resolve_in_root(rootfs: Path, path: str) -> Path:
    """Resolve *path* as the container would see it, without ever leaving *rootfs*.

    :func:`lazyfs.runtime.init.resolve_in_root` does the walk (``..`` stops at the root, an
    absolute link restarts there, at most :data:`MAX_SYMLINKS` links); components that do
    not exist are appended, so the result may not exist. Its errors are
    :class:`RunConfigError` here.

    The answer is only as good as the tree is still: a tree changed concurrently by
    someone else can still swap a directory for a link after the check.
    """
    try:
        host, missing = _init.resolve_in_root(os.path.abspath(rootfs), path)
    except _init.SetupError as exc:
        raise RunConfigError(f"cannot resolve {path} in {rootfs}: {exc}") from None
    # A link's target may hold ".." past the missing directory: clamp it lexically, so the
    # result stays under the part that exists (it does not exist anyway).
    rest = posixpath.normpath("/" + "/".join(missing)).lstrip("/")
    return Path(host, rest) if rest else Path(host)


def _read_image_file(rootfs: Path, name: str) -> str | None:
    """The text of the image's file *name*, or None if the image has none.

    Refuses files that are not regular (a FIFO would block) or larger than
    :data:`MAX_USER_DB_SIZE`. Bytes that are not UTF-8 are replaced.
    """
    path = resolve_in_root(rootfs, name)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise RunConfigError(f"cannot read {name} in the image: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunConfigError(f"cannot read {name} in the image: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_USER_DB_SIZE:
            chunk = os.read(fd, MAX_USER_DB_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_USER_DB_SIZE:
        raise RunConfigError(
            f"{name} in the image is larger than {MAX_USER_DB_SIZE // (1024 * 1024)} MiB"
        )
    return data.decode("utf-8", errors="replace")


# -- users -----------------------------------------------------------------------------------


@dataclass
class ResolvedUser:
    """Numeric credentials for the container's process, and the home directory for
    ``HOME``. ``name`` is the matching ``/etc/passwd`` entry's name, None without one."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"
    name: str | None = None


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


_NUMERIC = re.compile(r"[+-]?[0-9]+")


def _as_id(text: str) -> int | None:
    """*text* as a numeric id, None if it is a name; out-of-range numbers raise."""
    if not _NUMERIC.fullmatch(text):
        return None
    value = int(text)
    if not 0 <= value <= _MAX_ID:
        raise RunConfigError(f"user or group id {text} is out of range 0-{_MAX_ID}")
    return value


def _field_id(text: str) -> int | None:
    """A uid/gid field of passwd or group, None if malformed."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= _MAX_ID else None


def _database_lines(text: str | None) -> Iterable[list[str]]:
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line.split(":")


def _parse_passwd(text: str | None) -> list[_PasswdEntry]:
    """``name:password:uid:gid:gecos:home:shell`` lines; malformed ones are skipped."""
    entries = []
    for fields in _database_lines(text):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = _field_id(fields[2]), _field_id(fields[3])
        if uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 else ""
        entries.append(_PasswdEntry(fields[0], uid, gid, home or "/"))
    return entries


def _parse_group(text: str | None) -> list[_GroupEntry]:
    """``name:password:gid:member,member`` lines; malformed ones are skipped."""
    entries = []
    for fields in _database_lines(text):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = _field_id(fields[2])
        if gid is None:
            continue
        members = fields[3].split(",") if len(fields) > 3 else []
        entries.append(_GroupEntry(fields[0], gid, tuple(m.strip() for m in members if m)))
    return entries


def resolve_user(user: str, rootfs: Path) -> ResolvedUser:
    """Resolve a ``--user``/image ``User`` text against the image's user databases.

    Accepted forms are ``""``, ``name``, ``uid``, ``name:group``, ``name:gid``,
    ``uid:group`` and ``uid:gid`` (with runc's and Docker's meaning):

    * ``""`` is uid 0; its gid and home come from the passwd entry for uid 0 if there is
      one (else gid 0, home ``/``).
    * A name must have an entry in the image's ``/etc/passwd`` (the first one wins);
      otherwise ``unable to find user NAME: no matching entries in passwd file``.
      A number is always a uid: it takes the gid and home of the first entry with that
      uid, and needs no entry (then gid 0, home ``/``).
    * An explicit group replaces the gid. A group name must be in ``/etc/group``
      (``unable to find group NAME: no matching entries in group file``); a number needs
      no entry.
    * Supplementary groups are only given in the implicit form (no ``:group``) and only
      when a passwd entry matched: every ``/etc/group`` entry listing that entry's name as a
      member, in file order, without repeats. With an explicit group there are none, as
      runc's ``GetExecUser`` (which Docker uses) does.

    The files are read inside *rootfs* (see :func:`resolve_in_root`), so links in the image
    cannot make this read a host file. Missing files read as empty; files that are not
    regular or larger than :data:`MAX_USER_DB_SIZE` raise :class:`RunConfigError`, and
    malformed lines are skipped. Numbers must be in ``0..2**31-1``.
    """
    if user.count(":") > 1:
        raise RunConfigError(f"invalid user {user!r}: expected USER[:GROUP]")
    user_arg, _, group_arg = user.partition(":")
    uid_arg = _as_id(user_arg) if user_arg else 0
    gid_arg = _as_id(group_arg) if group_arg else None

    passwd = _parse_passwd(_read_image_file(rootfs, "/etc/passwd"))
    if uid_arg is not None:
        match = next((e for e in passwd if e.uid == uid_arg), None)
    else:
        match = next((e for e in passwd if e.name == user_arg), None)
        if match is None:
            raise RunConfigError(
                f"unable to find user {user_arg}: no matching entries in passwd file"
            )
    if match is not None:
        resolved = ResolvedUser(match.uid, match.gid, [], match.home, match.name)
    else:
        assert uid_arg is not None
        resolved = ResolvedUser(uid_arg, 0, [], "/", None)

    if group_arg:
        if gid_arg is not None:
            resolved.gid = gid_arg
        else:
            groups = _parse_group(_read_image_file(rootfs, "/etc/group"))
            group = next((g for g in groups if g.name == group_arg), None)
            if group is None:
                raise RunConfigError(
                    f"unable to find group {group_arg}: no matching entries in group file"
                )
            resolved.gid = group.gid
    elif match is not None:
        groups = _parse_group(_read_image_file(rootfs, "/etc/group"))
        for group in groups:
            if match.name in group.members and group.gid not in resolved.additional_gids:
                resolved.additional_gids.append(group.gid)
    return resolved


def apply_user_env(env: list[str], user: ResolvedUser) -> list[str]:
    """*env* with ``HOME=<user.home>`` appended if it sets no ``HOME`` (a new list)."""
    if any(entry.partition("=")[0] == "HOME" for entry in env):
        return list(env)
    return [*env, f"HOME={user.home}"]


# -- option values --------------------------------------------------------------------------


@dataclass
class Volume:
    """A bind mount: an existing host path, an absolute container path, and whether the
    container sees it read-only."""

    source: Path
    destination: str
    read_only: bool = False


_VOLUME_OPTIONS = {"ro", "rw", "z", "Z"}


def parse_volume(text: str, cwd: Path | None = None) -> Volume:
    """Parse a ``-v SRC:DST[:OPTS]`` text into a bind mount.

    SRC must be a host path: absolute, or ``.``/``..`` or starting with ``./``/``../``
    (then taken from *cwd*, default the current directory); it is normalised but links are
    not resolved, and it must exist. Anything else would be a named volume, which lazyfs
    does not support. DST must be absolute and not ``/``; it is normalised. OPTS is a
    comma-separated list of ``ro``, ``rw`` (the default), and the SELinux relabel flags
    ``z``/``Z``, which are accepted and ignored; anything else (propagation modes,
    ``nocopy``) is an error.
    """
    parts = text.split(":")
    if len(parts) == 1:
        raise RunConfigError(
            f"-v {text}: anonymous volumes are not supported; use -v HOST_PATH:CONTAINER_PATH"
        )
    if len(parts) > 3:
        raise RunConfigError(f"-v {text}: expected HOST_PATH:CONTAINER_PATH[:OPTIONS]")
    source_text, destination, options_text = parts[0], parts[1], parts[2] if len(parts) > 2 else ""

    if source_text.startswith("/"):
        source = Path(_clean_absolute(source_text))
    elif source_text in (".", "..") or source_text.startswith(("./", "../")):
        base = Path.cwd() if cwd is None else Path(cwd)
        source = Path(os.path.normpath(os.path.join(os.path.abspath(base), source_text)))
    elif not source_text:
        raise RunConfigError(f"-v {text}: the host path is empty")
    else:
        raise RunConfigError(
            f"-v {text}: named volumes are not supported; give a host path that is absolute "
            "or starts with ./ or ../"
        )
    if not os.path.exists(source):
        raise RunConfigError(f"-v {text}: {source} does not exist")

    if not destination.startswith("/"):
        raise RunConfigError(f"-v {text}: the container path must be absolute")
    destination = _clean_absolute(destination)
    if destination == "/":
        raise RunConfigError(f"-v {text}: cannot mount over the container's /")

    flags = options_text.split(",") if len(parts) > 2 else []
    for flag in flags:
        if flag not in _VOLUME_OPTIONS:
            raise RunConfigError(f"-v {text}: unsupported option {flag!r} (use ro or rw)")
    if "ro" in flags and "rw" in flags:
        raise RunConfigError(f"-v {text}: ro and rw contradict each other")
    return Volume(source=source, destination=destination, read_only="ro" in flags)


_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?(?:([kmgtp])i?)?b?", re.IGNORECASE)
_MEMORY_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(text: str) -> int:
    """Parse a ``--memory`` size into bytes, the way Docker does.

    A number (decimals allowed) with an optional binary unit ``k``, ``m``, ``g``, ``t`` or
    ``p`` (any case, optionally followed by ``i`` and/or ``b``): ``512m``, ``1g``,
    ``1.5GiB``, ``1024k``, ``100b``, ``6291456``. Fractions of a byte are dropped. Less
    than :data:`MIN_MEMORY` (6 MiB) is an error.
    """
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise RunConfigError(f"invalid --memory {text!r}: expected a size such as 512m or 1g")
    number, unit = match.groups()
    size = math.floor(Fraction(number) * _MEMORY_UNITS[unit.lower() if unit else None])
    if size < MIN_MEMORY:
        raise RunConfigError(f"invalid --memory {text!r}: the minimum is 6 MiB")
    return size


_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return os.cpu_count() or 1


def parse_cpus(text: str) -> float:
    """Parse ``--cpus`` (how many CPUs' worth of time the container may use).

    A decimal number from 0.01 to the number of CPUs this process may run on, as Docker
    requires. (:func:`runtime_spec` turns it into a CFS quota of whole microseconds per
    100 ms period.)
    """
    if not _DECIMAL.fullmatch(text.strip()):
        raise RunConfigError(f"invalid --cpus {text!r}: expected a number such as 1.5")
    value = Fraction(text.strip())
    available = _available_cpus()
    if not _MIN_CPUS <= value <= available:
        raise RunConfigError(
            f"invalid --cpus {text!r}: must be from 0.01 to {available}, "
            f"the number of CPUs available"
        )
    return float(value)


# -- the runtime spec -----------------------------------------------------------------------


def _default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip


def _volume_mounts(volumes: Sequence[Volume]) -> list[dict[str, Any]]:
    """Bind mounts for *volumes*, parents before children; repeated destinations raise."""
    seen: set[str] = set()
    for volume in volumes:
        if volume.destination in seen:
            raise RunConfigError(f"duplicate mount point {volume.destination}")
        seen.add(volume.destination)
    ordered = sorted(volumes, key=lambda v: v.destination.rstrip("/").count("/"))
    return [
        {
            "destination": volume.destination,
            "type": "bind",
            "source": str(volume.source),
            "options": ["rbind", "rprivate", "ro" if volume.read_only else "rw"],
        }
        for volume in ordered
    ]


def _device_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "access": "m"},
        {"allow": True, "type": "b", "access": "m"},
    ]
    for major, minor in _ALLOWED_CHAR_DEVICES:
        rule: dict[str, Any] = {"allow": True, "type": "c", "major": major}
        if minor is not None:
            rule["minor"] = minor
        rule["access"] = "rwm"
        rules.append(rule)
    return rules


def _resources(options: RunOptions) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": _device_rules()}
    if options.memory is not None:
        if options.memory < MIN_MEMORY:
            raise RunConfigError("memory limit below the minimum of 6 MiB")
        resources["memory"] = {"limit": int(options.memory)}
    if options.cpus is not None:
        if not options.cpus > 0 or not math.isfinite(options.cpus):
            raise RunConfigError(f"invalid cpus {options.cpus!r}: must be a positive number")
        quota = max(1000, round(options.cpus * _CFS_PERIOD_US))
        resources["cpu"] = {"quota": quota, "period": _CFS_PERIOD_US}
    if options.pids_limit is not None and options.pids_limit > 0:
        resources["pids"] = {"limit": int(options.pids_limit)}
    return resources


def _nofile_limit() -> int:
    """Docker's open-file limit, 1048576, or this process's hard limit if lower: without
    CAP_SYS_RESOURCE a runtime cannot give the container more than it has itself."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return _NOFILE_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _NOFILE_LIMIT)


def runtime_spec(
    process: ProcessSpec,
    user: ResolvedUser,
    options: RunOptions,
    *,
    hostname: str,
    rootfs: str = "rootfs",
    volumes: Sequence[Volume] | None = None,
    cgroups_path: str | None = None,
) -> dict[str, Any]:
    """An OCI runtime-spec ``config.json`` document running *process* as *user*.

    Accepted by runc 1.1, crun 1.8 and runsc. It follows Docker's defaults: the
    :data:`DEFAULT_CAPABILITIES` as bounding set, and as effective and permitted sets for
    uid 0 only (a non-root user starts with none, as after ``execve``); no inheritable or
    ambient capabilities; ``RLIMIT_NOFILE`` soft and hard 1048576 (or this process's hard
    limit if lower); ``noNewPrivileges`` from the options;
    the standard mounts (``/proc``, ``/dev`` tmpfs, ``/dev/pts``, ``/dev/shm``,
    ``/dev/mqueue``, read-only ``/sys`` and ``/sys/fs/cgroup``) with *volumes* (default:
    ``options.volumes`` through :func:`parse_volume`) bind-mounted after them, parents
    first, replacing a standard mount at the same place; new pid, ipc, uts and mount
    namespaces, and a network namespace (loopback only) unless ``options.network`` is
    ``"host"``; a device cgroup denying all but the standard character devices (and
    ``mknod``); memory, CPU (CFS quota over a 100 ms period) and pids limits from the
    options; Docker's masked and read-only ``/proc`` and ``/sys`` paths.

    *process* is used as is: pass its ``env`` through :func:`apply_user_env` first.
    *rootfs* is the root filesystem path (relative paths are relative to the bundle);
    *cgroups_path* goes to ``linux.cgroupsPath`` when given (else the runtime picks one).
    ``options.init`` is not represented: running an init as process 1 is the caller's
    business (it changes ``process.args``).
    """
    if options.network not in ("host", "none"):
        raise RunConfigError(f"network {options.network!r} is not supported: use host or none")
    if volumes is None:
        volumes = [parse_volume(text) for text in options.volumes]
    bind_mounts = _volume_mounts(volumes)
    bound = {mount["destination"] for mount in bind_mounts}
    mounts = [m for m in _default_mounts() if m["destination"] not in bound] + bind_mounts

    nofile = _nofile_limit()
    capabilities = list(DEFAULT_CAPABILITIES)
    granted = capabilities if user.uid == 0 else []
    process_user: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        process_user["additionalGids"] = list(user.additional_gids)

    namespaces = [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]
    if options.network != "host":
        namespaces.append({"type": "network"})

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": _resources(options),
        "maskedPaths": list(_MASKED_PATHS),
        "readonlyPaths": list(_READONLY_PATHS),
    }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path

    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": bool(options.tty),
            "user": process_user,
            "args": list(process.args),
            "env": list(process.env),
            "cwd": process.cwd,
            "capabilities": {
                "bounding": list(capabilities),
                "effective": list(granted),
                "permitted": list(granted),
                "inheritable": [],
                "ambient": [],
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": bool(options.no_new_privileges),
        },
        "root": {"path": rootfs, "readonly": bool(options.read_only)},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux,
    }
