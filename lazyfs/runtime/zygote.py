"""The container's init, forked before lazyfs starts: no second interpreter to start.

``lazyfs run`` used to start the container's init as ``python -S -m lazyfs.runtime.init``: a
new interpreter that imports the init module, about 40-50 ms on the benchmark VM before it
does anything (more with a cold page cache). A :class:`Zygote` is a child forked from the
``lazyfs`` process itself while it still has one thread (before trio starts, after it has
entered its private mount namespace, so the child sees the mounts made later). It has every
module already and waits on a socket; :meth:`Zygote.start` hands it the init's spec and
status pipes and the container's stdio (``SCM_RIGHTS``), and it becomes the init exactly as
the exec'd one did (:func:`lazyfs.runtime.init.main`): same spec, same status reports, same
signals, same shim watching its parent. If lazyfs gives up before starting a container, or
dies, the zygote reads the end of the socket and exits.

Not for ``--init``: there the init forks a reaper that stays the container's PID 1, and a
fork of lazyfs would show the container lazyfs's own command line in ``/proc/1/cmdline``
(``-e`` values included); the exec'd init shows only ``python -S -m lazyfs.runtime.init``.

:class:`ForkedProcess` is the parent's handle of the started zygote: what
:class:`trio.Process` gives for an exec'd one (``pid``, ``returncode``, ``send_signal``,
``wait``), through a pidfd.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
from collections.abc import Sequence

import trio

from .init import SETUP_FAILED

__all__ = ["ForkedProcess", "Zygote", "adopt_stdio"]

_START = b"start"


class Zygote:
    """A forked child waiting to become a container's init (see the module docs)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock: socket.socket | None = sock

    @classmethod
    def fork(cls) -> Zygote:
        """Fork the zygote. Call it while the process has a single thread (no trio yet)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = SETUP_FAILED
            try:
                parent_end.close()
                code = _become_init(child_end)
            except BaseException as exc:  # nothing may return into the parent's code
                try:
                    os.write(2, f"lazyfs: error: the container's init: {exc!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        child_end.close()
        return cls(pid, parent_end)

    @property
    def started(self) -> bool:
        return self._sock is None

    def start(self, spec_fd: int, status_fd: int, stdio: tuple[int, int, int]) -> ForkedProcess:
        """Make the zygote the container's init, with these pipes and stdio (ours to keep:
        it gets copies). Returns its handle."""
        if self._sock is None:
            raise RuntimeError("the zygote was already started or cancelled")
        sock, self._sock = self._sock, None
        try:
            socket.send_fds(sock, [_START], [spec_fd, status_fd, *stdio])
        finally:
            sock.close()
        return ForkedProcess(self.pid)

    def cancel(self) -> None:
        """Not needed after all: let the zygote exit, and reap it. No-op once started."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


#: Signals a terminal or a supervisor sends lazyfs's whole process group: while it waits,
#: the zygote leaves them to lazyfs (which cancels it, or hands it a container).
_WAITING_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def _become_init(sock: socket.socket) -> int:
    """(In the zygote.) Wait for the spec, set up the process like the exec'd init, run it."""
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in _WAITING_IGNORES}
    try:
        message, fds, _, _ = socket.recv_fds(sock, len(_START), 5)
    except OSError:
        return 0
    finally:
        sock.close()
    for signum, handler in saved.items():  # as a new interpreter has them: init relies on it
        signal.signal(signum, handler)
    if message != _START or len(fds) != 5:
        for fd in fds:
            os.close(fd)
        return 0  # lazyfs went on without a container (or is gone)
    os.setsid()
    spec_fd, status_fd = adopt_stdio(fds[2:], fds[:2])
    _close_fds_except({0, 1, 2, spec_fd, status_fd})
    from .init import main as init_main

    try:
        init_main([str(spec_fd), str(status_fd)])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else SETUP_FAILED
    return SETUP_FAILED  # init_main does not return


def adopt_stdio(stdio: Sequence[int], others: Sequence[int] = ()) -> list[int]:
    """Make the three ``stdio`` descriptors this process's 0, 1 and 2 (inheritable), and
    move ``others`` above 2 (close-on-exec); the descriptors given are closed. Returns the
    new numbers of ``others``, in order.

    Everything is first copied above 2, so that no ``dup2`` overwrites a descriptor still to
    be copied: descriptors received from a process whose own 0, 1 or 2 were closed can be
    0, 1 or 2 themselves.
    """
    given = [*stdio, *others]
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in given]
    for fd in set(given):
        os.close(fd)
    for target, fd in enumerate(high[:3]):
        os.dup2(fd, target)
        os.close(fd)
    return high[3:]


def _close_fds_except(keep: set[int]) -> None:
    """Close every open file descriptor not in ``keep`` (what the exec'd init inherited)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, already closed


class ForkedProcess:
    """A started zygote, as :class:`trio.Process` shows an exec'd child."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd: int | None = os.pidfd_open(pid)

    def send_signal(self, signum: int) -> None:
        if self.returncode is None and self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signum)

    async def wait(self) -> int:
        """Its exit status, ``-N`` if signal N killed it (like :class:`trio.Process`)."""
        if self.returncode is None:
            assert self._pidfd is not None
            await trio.lowlevel.wait_readable(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
            self._pidfd = None
        return self.returncode
