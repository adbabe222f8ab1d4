"""The pre-forked init (lazyfs/runtime/zygote.py) when no container is started.

Starting containers through it is covered by tests/test_run.py (every ``lazyfs run``
without ``--init`` goes through it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lazyfs.runtime.zygote import Zygote

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by a new interpreter that imports this lazyfs."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited; its parent has not reaped it (yet)
            return True
        time.sleep(0.02)
    return False


def test_a_cancelled_zygote_exits_and_is_reaped() -> None:
    zygote = Zygote.fork()
    assert Path(f"/proc/{zygote.pid}").exists()
    zygote.cancel()
    assert not Path(f"/proc/{zygote.pid}").exists(), "not reaped"
    zygote.cancel()  # twice is fine


def test_a_zygote_exits_when_lazyfs_dies_before_starting_it(tmp_path: Path) -> None:
    """The socket's end (lazyfs killed, or gone) makes the zygote exit, not linger."""
    out = _python(
        """
        import os, sys
        from lazyfs.runtime.zygote import Zygote
        z = Zygote.fork()
        print(z.pid, flush=True)
        os._exit(0)  # no cancel: as if killed
        """
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    assert _gone(pid), f"the zygote {pid} outlived lazyfs"


def test_starting_a_zygote_twice_is_refused() -> None:
    zygote = Zygote.fork()
    zygote.cancel()
    with pytest.raises(RuntimeError, match="already started or cancelled"):
        zygote.start(0, 1, (0, 1, 2))


def test_a_waiting_zygote_leaves_ctrl_c_to_lazyfs() -> None:
    """A terminal's Ctrl-C reaches the whole process group: the zygote must neither die of
    it nor say anything; lazyfs decides (here: cancels it)."""
    out = _python(
        """
        import os, signal, time
        from lazyfs.runtime.zygote import Zygote
        z = Zygote.fork()
        time.sleep(0.2)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(z.pid, sig)
        time.sleep(0.3)
        state = open(f"/proc/{z.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        print("alive" if state != "Z" else "dead", flush=True)
        z.cancel()
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "alive"
    assert out.stderr == ""


def test_adopt_stdio_when_the_descriptors_given_are_0_1_and_2_themselves(tmp_path):
    # A process started with its own 0, 1 and 2 closed receives descriptors numbered 0-2:
    # copying them into place one by one would overwrite one before it is copied.
    import fcntl
    import json

    from lazyfs.runtime.zygote import adopt_stdio

    files = [tmp_path / name for name in "ABCD"]
    for f in files:
        f.write_bytes(b"")
    inode = {f.name: f.stat().st_ino for f in files}
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.set_inheritable(report_w, False)
            for fd in (0, 1, 2):
                os.close(fd)
            opened = [os.open(f, os.O_RDWR) for f in files]  # 0, 1, 2 and a higher one
            (moved,) = adopt_stdio([opened[1], opened[2], opened[0]], [opened[3]])
            result = {
                "stdio": [os.fstat(fd).st_ino for fd in (0, 1, 2)],
                "moved": [moved, os.fstat(moved).st_ino],
                "cloexec": [
                    bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
                    for fd in (0, 1, 2, moved)
                ],
                "opened": opened,
            }
            os.write(report_w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    data = os.read(report_r, 65536)
    os.close(report_r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result = json.loads(data)
    assert result["opened"][:3] == [0, 1, 2]
    assert result["stdio"] == [inode["B"], inode["C"], inode["A"]]
    assert result["moved"][0] > 2 and result["moved"][1] == inode["D"]
    assert result["cloexec"] == [False, False, False, True]
