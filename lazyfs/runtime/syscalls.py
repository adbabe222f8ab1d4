"""Thin ctypes wrappers around the Linux system calls the container runtime needs.

Python's standard library has no ``unshare``, ``mount``, ``pivot_root``, ``prctl`` or
``capset``; this module calls them in the C library directly (``ctypes.CDLL(None)``: the
libc the interpreter already uses). Every wrapper raises :class:`OSError` with the errno and a
message naming the call and its path (``"mount /x/proc: Operation not permitted"``) when the
call fails, so callers can report precisely what went wrong.

The module imports only the standard library and is cheap to import: the in-container init
(:mod:`lazyfs.runtime.init`) uses it between ``fork`` and ``execve``.

Besides the wrappers it holds the constants they take (``CLONE_*``, ``MS_*``,
``MNT_DETACH``), the table of capability names (:data:`CAPABILITIES`), and a few composite
operations: :func:`enter_private_mount_namespace`, :func:`drop_capabilities` (and its
parts) and :func:`bring_up_loopback`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Sequence

__all__ = [
    "CAPABILITIES",
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_RELATIME",
    "MS_REMOUNT",
    "MS_SLAVE",
    "MS_STRICTATIME",
    "bring_up_loopback",
    "capability_mask",
    "clear_ambient_capabilities",
    "drop_bounding_capabilities",
    "drop_capabilities",
    "enter_private_mount_namespace",
    "execve",
    "get_capabilities",
    "mount",
    "pivot_root",
    "set_capabilities",
    "set_child_subreaper",
    "set_no_new_privs",
    "set_pdeathsig",
    "sethostname",
    "umount2",
    "unshare",
]

# unshare(2) / clone(2) flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2(2) flag.
MNT_DETACH = 2

#: Every capability Linux defines, by name (``capabilities(7)``), with its number.
CAPABILITIES: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETPCAP",
            "CAP_LINUX_IMMUTABLE",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_ADMIN",
            "CAP_NET_RAW",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_SYS_MODULE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_CHROOT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_NICE",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_MKNOD",
            "CAP_LEASE",
            "CAP_AUDIT_WRITE",
            "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP",
            "CAP_MAC_OVERRIDE",
            "CAP_MAC_ADMIN",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND",
            "CAP_AUDIT_READ",
            "CAP_PERFMON",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
        )
    )
}

# prctl(2) options.
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4

# capget(2)/capset(2): _LINUX_CAPABILITY_VERSION_3 takes two 32-bit data structs.
_CAPABILITY_VERSION_3 = 0x20080522

# Network interface ioctls (netdevice(7)); struct ifreq is 40 bytes on 64-bit Linux.
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ_SIZE = 40

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 217, "arm64": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.prctl.restype = ctypes.c_int


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _path(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _check(result: int, call: str, what: object = "") -> int:
    """Raise the OSError of ``errno`` when ``result`` is -1; else return ``result``."""
    if result == -1:
        err = ctypes.get_errno()
        detail = f"{call} {os.fsdecode(what)}" if what != "" else call
        raise OSError(err, f"{detail}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``CLONE_NEW*`` flags), ``unshare(2)``."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """``mount(2)``: attach ``source`` (a device, path or name) of type ``fstype`` at ``target``.

    ``None`` for ``source``, ``fstype`` or ``data`` passes a null pointer (as remounts and
    propagation changes want).
    """
    _check(
        _libc.mount(
            _path(source),
            _path(target),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        "mount",
        target,
    )


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    """``umount2(2)``: detach the mount at ``target`` (``MNT_DETACH`` for a lazy unmount)."""
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    """``pivot_root(2)``: make ``new_root`` the root mount, moving the old one to ``put_old``."""
    machine = os.uname().machine
    number = _SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(0, f"pivot_root: unsupported architecture {machine}")
    _check(
        _libc.syscall(ctypes.c_long(number), _path(new_root), _path(put_old)),
        "pivot_root",
        new_root,
    )


def sethostname(name: str) -> None:
    """Set the host name of the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def execve(path: str | os.PathLike[str], argv: Sequence[str], envp: Sequence[str]) -> None:
    """``execve(2)`` with exactly ``envp`` (``"K=V"`` strings, order and duplicates kept).

    :func:`os.execve` takes a mapping, which cannot express duplicate or ``=``-less entries;
    this passes the list as given. Returns only by raising.
    """
    args = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    env = (ctypes.c_char_p * (len(envp) + 1))(*[os.fsencode(e) for e in envp], None)
    _libc.execve(_path(path), args, env)
    _check(-1, "execve", path)


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "") -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0), "prctl", what)


def set_no_new_privs() -> None:
    """Set ``no_new_privs``: execve can no longer grant privileges (setuid bits, file caps)."""
    _prctl(_PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread exits."""
    _prctl(_PR_SET_PDEATHSIG, sig, what="PR_SET_PDEATHSIG")


def set_child_subreaper() -> None:
    """Make this process adopt its orphaned descendants (``PR_SET_CHILD_SUBREAPER``)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, what="PR_SET_CHILD_SUBREAPER")


def enter_private_mount_namespace() -> None:
    """Move into a new mount namespace whose mounts do not propagate to or from the host.

    Mounts made afterwards are invisible to other processes and disappear when the last
    process in the namespace exits. The caller must be single-threaded.
    """
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def capability_mask(names: Iterable[str]) -> int:
    """The bit mask of capability ``names``; :class:`ValueError` names an unknown one."""
    mask = 0
    for name in names:
        number = CAPABILITIES.get(name)
        if number is None:
            raise ValueError(f"unknown capability {name!r}")
        mask |= 1 << number
    return mask


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


def drop_bounding_capabilities(keep: int) -> None:
    """Remove every capability not in the mask ``keep`` from the bounding set.

    Needs ``CAP_SETPCAP``. The bounding set limits what any later execve can grant, also
    to root.
    """
    for number in range(_last_capability() + 1):
        if not keep & (1 << number) and _libc.prctl(_PR_CAPBSET_READ, number, 0, 0, 0) == 1:
            _prctl(_PR_CAPBSET_DROP, number, what=f"PR_CAPBSET_DROP {number}")


def clear_ambient_capabilities() -> None:
    """Empty the ambient capability set."""
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")


def _cap_call(function: ctypes._CFuncPtr, data: ctypes.Array, call: str) -> None:
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    _check(function(ctypes.byref(header), data), call)


def get_capabilities() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability masks."""
    data = (_CapData * 2)()
    _cap_call(_libc.capget, data, "capget")

    def mask(field: str) -> int:
        return getattr(data[0], field) | getattr(data[1], field) << 32

    return mask("effective"), mask("permitted"), mask("inheritable")


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    """``capset(2)`` (version 3) the calling thread's three capability sets to these masks."""
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _cap_call(_libc.capset, data, "capset")


def drop_capabilities(keep: Iterable[str]) -> None:
    """Keep only the capabilities named in ``keep`` (``"CAP_CHOWN"``...).

    Drops every other capability from the bounding set, clears the ambient set, and sets the
    effective and permitted sets to ``keep`` (limited to what the process holds now). The
    inheritable set is emptied, as Docker does since CVE-2022-24769: a non-empty one would let
    a non-root process gain capabilities by executing a file with inheritable file
    capabilities.
    """
    mask = capability_mask(keep)
    drop_bounding_capabilities(mask)
    clear_ambient_capabilities()
    _effective, permitted, _inheritable = get_capabilities()
    set_capabilities(mask & permitted, mask & permitted, 0)


def bring_up_loopback() -> None:
    """Set the ``lo`` interface of the current network namespace up (``IFF_UP``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = bytearray(_IFREQ_SIZE)
        request[:2] = b"lo"
        try:
            fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
            (flags,) = struct.unpack_from("=H", request, 16)
            struct.pack_into("=H", request, 16, flags | _IFF_UP)
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, request)
        except OSError as exc:
            raise OSError(exc.errno, f"ioctl SIOCSIFFLAGS lo: {os.strerror(exc.errno)}") from None
