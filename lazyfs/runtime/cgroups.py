"""Resource limits of a container (memory, CPU, number of processes) with Linux cgroups.

:meth:`Cgroup.create` makes a control group ``lazyfs/<name>`` and writes the limits asked
for; the container's init joins it by writing its pid to each of :attr:`Cgroup.procs_files`;
:meth:`Cgroup.oom_killed` tells afterwards whether the kernel killed a process for lack of
memory; :meth:`Cgroup.destroy` kills what is left in the group and removes it.

Both kinds of cgroup file systems are handled:

* **v2** (the unified hierarchy, used when ``/sys/fs/cgroup`` itself is a ``cgroup2``
  mount): one directory ``/sys/fs/cgroup/lazyfs/<name>``, with ``memory.max`` (and
  ``memory.swap.max`` = 0), ``cpu.max`` and ``pids.max``; the controllers are enabled in the
  ``cgroup.subtree_control`` of ``/sys/fs/cgroup`` and ``/sys/fs/cgroup/lazyfs`` as needed.
* **v1** (one hierarchy per controller, found in ``/proc/self/mountinfo``): a directory
  ``lazyfs/<name>`` in the hierarchy of each controller a limit needs, with
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, so swap cannot extend it),
  ``cpu.cfs_period_us``/``cpu.cfs_quota_us``, and ``pids.max``.

Only the controllers the limits need are used: a cgroup with no limit has no directory.
Errors a user can hit (a controller the kernel does not offer, a limit it refuses) are
:class:`CgroupError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lazyfs.errors import LazyfsError

__all__ = ["CGROUP_ROOT", "CPU_PERIOD_US", "Cgroup", "CgroupError"]

#: Where the cgroup file systems are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: CPU bandwidth period: ``cpus`` = 1.5 allows 150 ms of CPU time per 100 ms.
CPU_PERIOD_US = 100_000
# The kernel refuses CFS quotas under 1 ms.
_MIN_CPU_QUOTA_US = 1_000
_PARENT = "lazyfs"


class CgroupError(LazyfsError):
    """A cgroup could not be created, limited or removed."""


def _unescape(field: str) -> str:
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup and cgroup2 mount."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype = fields[sep + 1]
            if fstype in ("cgroup", "cgroup2"):
                options = set(fields[sep + 3].split(",")) if len(fields) > sep + 3 else set()
                mounts.append((_unescape(fields[4]), fstype, options))
    return mounts


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _write(path: Path, value: str) -> None:
    """Write ``value`` to a cgroup file in one write(2), as the kernel wants."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {os.strerror(exc.errno)}") from None


def _check_limits(name: str, memory: int | None, cpus: float | None, pids: int | None) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise CgroupError(f"invalid cgroup name {name!r}")
    if memory is not None and memory <= 0:
        raise CgroupError(f"the memory limit must be positive, not {memory}")
    if cpus is not None and not cpus > 0:
        raise CgroupError(f"the CPU limit must be positive, not {cpus}")
    if pids is not None and pids <= 0:
        raise CgroupError(f"the process limit must be positive, not {pids}")


def _make_group(parent: Path, name: str) -> Path:
    """Create ``parent/name``, creating ``parent`` too (again, if a destroy just removed it)."""
    path = parent / name
    for _attempt in range(5):
        try:
            parent.mkdir(exist_ok=True)
            path.mkdir()
            return path
        except FileExistsError:
            raise CgroupError(f"cgroup {path} exists already") from None
        except FileNotFoundError:
            continue  # another container's destroy removed the parent meanwhile
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {os.strerror(exc.errno)}") from None
    raise CgroupError(f"cannot create cgroup {path}: its parent keeps disappearing")


@dataclass
class Cgroup:
    """A container's control group: one directory per hierarchy it uses.

    Attributes:
        name: The name given to :meth:`create`.
        version: 1 or 2.
        paths: Controller name -> the group's directory (several controllers can share
            one directory; on v2 every controller does). Empty when no limit was asked for.
    """

    name: str
    version: int
    paths: dict[str, Path]

    @classmethod
    def create(
        cls,
        name: str,
        *,
        memory: int | None = None,
        cpus: float | None = None,
        pids: int | None = None,
    ) -> Cgroup:
        """Create group ``lazyfs/<name>`` limiting memory (bytes), CPUs and processes.

        ``None`` leaves a resource unlimited (and its controller unused).
        :class:`CgroupError` when a controller is missing or the kernel refuses a limit;
        nothing is left behind then.
        """
        _check_limits(name, memory, cpus, pids)
        needed = [
            controller
            for controller, limit in (("memory", memory), ("cpu", cpus), ("pids", pids))
            if limit is not None
        ]
        mounts = _cgroup_mounts()
        if any(point == str(CGROUP_ROOT) and fstype == "cgroup2" for point, fstype, _ in mounts):
            group = cls(name, 2, {})
            creating = group._create_v2
        else:
            group = cls(name, 1, {})
            creating = group._create_v1
        try:
            creating(needed, mounts, memory, cpus, pids)
        except BaseException:
            with contextlib.suppress(CgroupError):
                group.destroy()
            raise
        return group

    def _create_v1(
        self,
        needed: list[str],
        mounts: list[tuple[str, str, set[str]]],
        memory: int | None,
        cpus: float | None,
        pids: int | None,
    ) -> None:
        hierarchies = {}
        for controller in needed:
            point = next(
                (p for p, fstype, opts in mounts if fstype == "cgroup" and controller in opts),
                None,
            )
            if point is None:
                raise CgroupError(
                    f"the {controller} cgroup controller is not available "
                    "(no cgroup v1 hierarchy has it mounted)"
                )
            hierarchies[controller] = Path(point)
        made: dict[Path, Path] = {}
        for controller, point in hierarchies.items():
            if point not in made:
                made[point] = _make_group(point / _PARENT, self.name)
            self.paths[controller] = made[point]
        if memory is not None:
            path = self.paths["memory"]
            _write(path / "memory.limit_in_bytes", str(memory))
            if (path / "memory.memsw.limit_in_bytes").exists():
                _write(path / "memory.memsw.limit_in_bytes", str(memory))
        if cpus is not None:
            path = self.paths["cpu"]
            if not (path / "cpu.cfs_quota_us").exists():
                raise CgroupError("CPU limits need CFS bandwidth control, which this kernel lacks")
            _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(path / "cpu.cfs_quota_us", str(_cpu_quota(cpus)))
        if pids is not None:
            _write(self.paths["pids"] / "pids.max", str(pids))

    def _create_v2(
        self,
        needed: list[str],
        mounts: list[tuple[str, str, set[str]]],
        memory: int | None,
        cpus: float | None,
        pids: int | None,
    ) -> None:
        if not needed:
            return
        available = _read(CGROUP_ROOT / "cgroup.controllers").split()
        for controller in needed:
            if controller not in available:
                raise CgroupError(
                    f"the {controller} cgroup controller is not available in {CGROUP_ROOT}"
                )
        parent = CGROUP_ROOT / _PARENT
        parent.mkdir(exist_ok=True)
        for directory in (CGROUP_ROOT, parent):
            enabled = _read(directory / "cgroup.subtree_control").split()
            for controller in needed:
                if controller not in enabled:
                    _write(directory / "cgroup.subtree_control", f"+{controller}")
        path = _make_group(parent, self.name)
        self.paths = dict.fromkeys(needed, path)
        if memory is not None:
            _write(path / "memory.max", str(memory))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")
        if cpus is not None:
            _write(path / "cpu.max", f"{_cpu_quota(cpus)} {CPU_PERIOD_US}")
        if pids is not None:
            _write(path / "pids.max", str(pids))

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid to, to join the group."""
        return [str(path / "cgroup.procs") for path in self._directories()]

    def _directories(self) -> list[Path]:
        return list(dict.fromkeys(self.paths.values()))

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the group for exceeding its memory limit.

        Read it before :meth:`destroy`. False when the group has no memory limit.
        """
        path = self.paths.get("memory")
        if path is None:
            return False
        try:
            if self.version == 2:
                return _counter(_read(path / "memory.events"), "oom_kill") > 0
            control = _read(path / "memory.oom_control")
            if "oom_kill " in control:
                return _counter(control, "oom_kill") > 0
            # Kernels before 4.13 do not count kills: a hit limit is the best sign there is.
            return int(_read(path / "memory.failcnt")) > 0
        except FileNotFoundError:
            return False

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill the processes left in the group and remove its directories.

        Idempotent; a directory that is gone already is fine. :class:`CgroupError` when a
        directory still cannot be removed after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        for path in self._directories():
            _remove_group(path, deadline)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the shared "lazyfs" parent, once no group is left


def _cpu_quota(cpus: float) -> int:
    return max(_MIN_CPU_QUOTA_US, round(cpus * CPU_PERIOD_US))


def _counter(text: str, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``"key value"`` lines)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _remove_group(path: Path, deadline: float) -> None:
    """SIGKILL every process in group ``path`` until it is empty, then remove it."""
    while True:
        try:
            pids = [int(p) for p in _read(path / "cgroup.procs").split()]
        except FileNotFoundError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise CgroupError(
                        f"cannot remove cgroup {path}: {os.strerror(exc.errno)}"
                    ) from None
        if time.monotonic() > deadline:
            raise CgroupError(f"cannot remove cgroup {path}: processes are still in it")
        time.sleep(0.01)
