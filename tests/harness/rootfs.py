"""A small real userland for containers in tests, built from the host's static busybox.

Debian's ``busybox-static`` package installs ``/bin/busybox``, a statically linked binary
that runs in any root filesystem. :func:`busybox_entries` describes a minimal root
filesystem around it as tar entries (for image layers); :func:`make_busybox_rootfs` writes
the same tree to a directory (for tests of the runtime that need no image).

The tree: ``bin/busybox`` with a ``bin/<applet>`` symlink for every applet it has; ``etc``
with ``passwd`` (root 0, app 1000, nobody 65534) and ``group`` (root 0, staff 50 and app 1000
with member app, nogroup 65534); ``tmp`` (1777), ``root`` (700), ``home/app`` (owned by
1000:1000), and empty ``proc``, ``sys``, ``dev`` and ``usr/bin``.
"""

from __future__ import annotations

import functools
import os
import struct
import subprocess
from pathlib import Path

from tests.harness.images import Entry

__all__ = ["BUSYBOX", "busybox_applets", "busybox_entries", "make_busybox_rootfs"]

#: The statically linked busybox the root filesystem is made from.
BUSYBOX = Path("/bin/busybox")

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
_PT_INTERP = 3

GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1000:app\nnogroup:x:65534:\n"


def _is_dynamically_linked(binary: Path) -> bool:
    """Whether the ELF64 ``binary`` asks for a program interpreter (``PT_INTERP``)."""
    data = binary.read_bytes()
    order = "<" if data[5] == 1 else ">"
    (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    return any(
        struct.unpack_from(order + "I", data, phoff + i * phentsize)[0] == _PT_INTERP
        for i in range(phnum)
    )


def _require_busybox() -> None:
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError(
            f"{BUSYBOX} is missing: container tests need Debian's busybox-static package "
            "(scripts/test installs it)"
        )
    if _is_dynamically_linked(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is dynamically linked: install busybox-static")


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    """The applet names ``busybox --list`` prints, sorted."""
    _require_busybox()
    listing = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout
    return tuple(sorted({name for name in listing.split() if name and "/" not in name}))


def busybox_entries() -> list[Entry]:
    """The busybox root filesystem as tar entries, parents before children."""
    entries = [
        Entry("bin", "dir"),
        Entry("dev", "dir"),
        Entry("etc", "dir"),
        Entry("home", "dir"),
        Entry("home/app", "dir", uid=1000, gid=1000),
        Entry("proc", "dir"),
        Entry("root", "dir", mode=0o700),
        Entry("sys", "dir"),
        Entry("tmp", "dir", mode=0o1777),
        Entry("usr", "dir"),
        Entry("usr/bin", "dir"),
        Entry("bin/busybox", "file", data=BUSYBOX.read_bytes(), mode=0o755),
        Entry("etc/passwd", "file", data=PASSWD.encode()),
        Entry("etc/group", "file", data=GROUP.encode()),
    ]
    entries += [
        Entry(f"bin/{name}", "symlink", linkname="busybox")
        for name in busybox_applets()
        if name != "busybox"
    ]
    return entries


def make_busybox_rootfs(path: Path) -> Path:
    """Write the busybox root filesystem into directory ``path`` (created); returns it."""
    path.mkdir(parents=True, exist_ok=True)
    for entry in busybox_entries():
        target = path / entry.name
        if entry.kind == "dir":
            target.mkdir(exist_ok=True)
        elif entry.kind == "file":
            target.write_bytes(entry.data)
        elif entry.kind == "symlink":
            target.symlink_to(entry.linkname)
        else:
            raise ValueError(f"unexpected entry kind {entry.kind}")
        os.lchown(target, entry.uid, entry.gid)
        if entry.kind != "symlink":
            default = 0o755 if entry.kind == "dir" else 0o644
            os.chmod(target, default if entry.mode is None else entry.mode)
    return path
