"""The host side of a container's terminal: a pty, raw mode, and copying bytes both ways.

With ``--tty`` the container gets the slave side of a new pseudo-terminal as its stdin,
stdout, stderr and controlling terminal; lazyfs keeps the master and copies the user's
keystrokes into it and the container's output out of it. The user's own terminal is put
into raw mode for the run (restored afterwards, whatever happens), so that Ctrl-C, Ctrl-Z
and line editing reach the container's shell as bytes and its own line discipline acts on
them, the way ``docker run -it`` behaves. Window size changes follow via ``SIGWINCH``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import termios
import tty
from collections.abc import Iterator

import trio

__all__ = ["Pty", "copy_window_size", "open_pty", "pump", "raw_mode"]

_WINSIZE = struct.Struct("HHHH")


class Pty:
    """A pseudo-terminal pair; the slave goes to the container, the master stays here."""

    def __init__(self, master: int, slave: int) -> None:
        self.master = master
        self.slave = slave
        self.slave_path = os.ttyname(slave)

    def close_slave(self) -> None:
        if self.slave >= 0:
            os.close(self.slave)
            self.slave = -1

    def close(self) -> None:
        self.close_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def open_pty(size_from: int | None = None) -> Pty:
    """A new pty whose window size is copied from the terminal ``size_from`` (if one)."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_blocking(master, False)
    pty = Pty(master, slave)
    if size_from is not None:
        copy_window_size(size_from, slave)
    return pty


def copy_window_size(src: int, dst: int) -> None:
    """Give terminal ``dst`` the rows and columns of terminal ``src`` (if it is one)."""
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, _WINSIZE.pack(0, 0, 0, 0))
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass  # not a terminal: the pty keeps its default size


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Terminal ``fd`` in raw mode for the block, restored after (no-op if not a tty)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def pump(src: int, dst: int, *, until_eof: bool = True) -> None:
    """Copy bytes from ``src`` to ``dst`` until ``src`` ends (EOF, or EIO from a pty master
    whose slave side is closed everywhere). Neither fd needs to be non-blocking: a read is
    made only once trio says the fd is readable, writes wait until writable."""
    pollable = True
    while True:
        if pollable:
            try:
                await trio.lowlevel.wait_readable(src)
            except OSError:  # a regular file or /dev/null: epoll refuses those
                pollable = False
        try:
            if pollable:
                data = os.read(src, 65536)
            else:
                data = await trio.to_thread.run_sync(os.read, src, 65536, abandon_on_cancel=True)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # the pty's other side is gone
                return
            raise
        if not data:
            if until_eof:
                return
            continue
        view = memoryview(data)
        while view:
            try:
                n = os.write(dst, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(dst)
                continue
            view = view[n:]
