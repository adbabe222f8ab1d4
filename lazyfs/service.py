"""``lazyfs service``: run ``lazyfs`` commands for their callers, without the start-up cost.

A ``lazyfs`` process spends about a quarter of a second (more with a cold page cache)
starting Python and importing its modules before it does anything; for ``lazyfs run`` of a
small command that is a third of the whole cold start. The service pays it once: it imports
every module the commands need, listens on a unix socket, and for each command a client
hands it (:mod:`lazyfs._delegate`, which the ``lazyfs`` entry point tries first) forks a
worker that runs the command exactly as ``lazyfs`` would have: same arguments, environment,
working directory and umask, on the client's own standard input, output and error. The
client forwards its signals and exits with the worker's status.

The service itself does no lazyfs work: no registry, no trio, no thread. It only accepts,
checks, forks, relays signals and reaps, in one ``selectors`` loop, so forking it is as
safe as forking a fresh ``lazyfs`` before trio starts (what ``lazyfs run`` does for the
container's init). A worker starts from that state alone: nothing of one command reaches
the next.

Who it serves: clients of its own user only (``SO_PEERCRED``; the socket is also ``0600``
in a ``0700`` directory), in its own mount, PID, network, user, IPC, UTS and cgroup
namespaces and root directory. Others are told to run the command themselves, which they
do without a word: a worker would mount, and start containers, where the service lives.

Stopping it (SIGINT or SIGTERM) closes the socket at once (new commands run in their
callers) and waits for the running workers; a second stop request forwards SIGTERM to them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import selectors
import signal
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import _delegate, _startup, cli
from .errors import LazyfsError
from .runtime import syscalls
from .runtime.zygote import adopt_stdio

__all__ = ["NAMESPACES", "Service", "preload", "serve"]

log = logging.getLogger("lazyfs.service")

#: Namespaces a client must share with the service (``/proc/PID/ns/NAME``).
NAMESPACES = ("mnt", "pid", "net", "user", "ipc", "uts", "cgroup")

#: The modules the served commands import when they run (most lazily, inside the commands).
PRELOAD = (
    "lazyfs.cli",
    "lazyfs.control",
    "lazyfs.fs.image",
    "lazyfs.fs.chunktable",
    "lazyfs.fuse",
    "lazyfs.oci.store",
    "lazyfs.formats.detect",
    "lazyfs.formats.estargz",
    "lazyfs.formats.plain",
    "lazyfs.formats.zstd_chunked",
    "lazyfs.runtime.bundle",
    "lazyfs.runtime.config",
    "lazyfs.runtime.container",
    "lazyfs.runtime.init",
    "lazyfs.runtime.syscalls",
    "lazyfs.runtime.zygote",
)


def preload() -> argparse.ArgumentParser:
    """Import what the served commands would import (see :data:`PRELOAD`); the command
    line parser, built once for every worker."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    from .cli import build_parser

    return build_parser()


def namespace_mismatch(pid: int) -> str | None:
    """Why a process ``pid`` may not be served here (another namespace or root), or None."""
    try:
        for name in NAMESPACES:
            theirs = os.stat(f"/proc/{pid}/ns/{name}")
            ours = os.stat(f"/proc/self/ns/{name}")
            if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
                return f"another {name} namespace"
        theirs = os.stat(f"/proc/{pid}/root")
        ours = os.stat("/")
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return "another root directory"
    except FileNotFoundError:
        return "this namespace of the caller cannot be checked"
    except OSError as exc:
        return f"the caller cannot be checked: {exc.strerror}"
    return None


@dataclass
class _Client:
    conn: socket.socket
    peer_pid: int = 0
    peer_uid: int = -1
    worker: int | None = None  # its pid once forked
    hung_up: bool = False  # the client went away while its worker ran
    command: str = ""


@dataclass
class Service:
    """The listening socket and the clients being served (see the module's docstring)."""

    path: Path
    parser: argparse.ArgumentParser | None = None  # the CLI's, built once
    listener: socket.socket | None = None
    clients: dict[int, _Client] = field(default_factory=dict)  # by connection fd
    workers: dict[int, _Client] = field(default_factory=dict)  # by worker pid
    stopping: int = 0  # stop requests so far
    _own_fds: list[int] = field(default_factory=list)  # the signal pipe, the selector

    def listen(self) -> None:
        """Bind the socket (``0600``, its directory ``0700``); LazyfsError if one answers."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            probe.connect(str(self.path))
        except OSError:
            pass  # nobody listens: a stale socket at most
        else:
            raise LazyfsError(f"a lazyfs service already listens on {self.path}")
        finally:
            probe.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(old)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener

    def close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def serve(self, ready=None) -> None:
        """Serve until stopped and every worker has ended. ``ready()`` once listening."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        selector = selectors.DefaultSelector()
        self._own_fds = [wake_r, wake_w, selector.fileno()]
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, lambda *_: None) for s in (*stops, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            selector.register(wake_r, selectors.EVENT_READ, "signals")
            assert self.listener is not None
            selector.register(self.listener, selectors.EVENT_READ, "listener")
            log.info("serving on %s", self.path)
            if ready is not None:
                ready()
            while self.listener is not None or self.workers or self.clients:
                for key, _ in selector.select():
                    if key.data == "signals":
                        self._signals(os.read(wake_r, 256), selector)
                    elif key.data == "listener":
                        self._accept(selector)
                    else:
                        self._client_readable(key.data, selector)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            selector.close()
            os.close(wake_r)
            os.close(wake_w)
            self.close_listener()
            for client in list(self.clients.values()):
                client.conn.close()

    # ------------------------------------------------------------------ events

    def _signals(self, received: bytes, selector: selectors.BaseSelector) -> None:
        if signal.SIGCHLD in received:
            self._reap(selector)
        if signal.SIGINT in received or signal.SIGTERM in received:
            self.stopping += 1
            if self.listener is not None:
                selector.unregister(self.listener)
                self.close_listener()
                log.info("stopping: %d command(s) still running", len(self.workers))
            if self.stopping > 1:
                for pid in self.workers:
                    _kill(pid, signal.SIGTERM)
            # Clients that connected but sent nothing yet are not waited for.
            for client in list(self.clients.values()):
                if client.worker is None:
                    self._drop(client, selector)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("cannot accept a client: %s", exc.strerror)
                    return
                raise
            conn.setblocking(False)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pid, uid, _gid = (int.from_bytes(creds[i : i + 4], sys.byteorder) for i in (0, 4, 8))
            client = _Client(conn, peer_pid=pid, peer_uid=uid)
            self.clients[conn.fileno()] = client
            selector.register(conn, selectors.EVENT_READ, client)

    def _client_readable(self, client: _Client, selector: selectors.BaseSelector) -> None:
        try:
            if client.worker is None:
                data, fds, _flags, _addr = socket.recv_fds(client.conn, _delegate.MAX_MESSAGE, 3)
            else:
                data, fds = client.conn.recv(_delegate.MAX_MESSAGE), []
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            self._hang_up(client, selector)
            return
        if client.worker is None:
            try:
                request = json.loads(data)
            except ValueError:
                request = None
            self._start(client, request if isinstance(request, dict) else {}, fds, selector)
        else:
            word, _, value = data.partition(b" ")
            if word == b"signal" and value.isdigit() and int(value) in _delegate.FORWARDED_SIGNALS:
                _kill(client.worker, int(value))

    def _start(
        self, client: _Client, request: dict, fds: list[int], selector: selectors.BaseSelector
    ) -> None:
        try:
            argv, env, cwd, umask = (request.get(k) for k in ("argv", "env", "cwd", "umask"))
            valid = (
                isinstance(argv, list)
                and len(argv) >= 2
                and all(isinstance(a, str) for a in argv)
                and isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
                and isinstance(cwd, str)
                and isinstance(umask, int)
                and 0 <= umask <= 0o777
                and len(fds) == 3
            )
            if client.peer_uid != os.geteuid():  # (declined once its request is in)
                self._decline(client, f"the service serves uid {os.geteuid()} only", selector)
                return
            if not valid:
                self._decline(client, "malformed request", selector)
                return
            command = _startup.command_of(argv)
            if command not in _delegate.COMMANDS:
                self._decline(client, f"{command!r} is not served", selector)
                return
            why = namespace_mismatch(client.peer_pid)
            if why is not None:
                self._decline(client, why, selector)
                return
            try:
                client.conn.send(b"accepted")
            except OSError:
                self._drop(client, selector)
                return
            client.command = command
            service_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                _worker(self, service_pid, argv, env, cwd, umask, fds)  # never returns
            client.worker = pid
            self.workers[pid] = client
            log.info("pid %d: lazyfs %s (worker %d)", client.peer_pid, command, pid)
        finally:
            for fd in fds:
                os.close(fd)

    def _decline(self, client: _Client, why: str, selector: selectors.BaseSelector) -> None:
        log.info("pid %d runs its command itself: %s", client.peer_pid, why)
        try:
            client.conn.send(b"local " + why.encode())
        except OSError:
            pass
        self._drop(client, selector)

    def _hang_up(self, client: _Client, selector: selectors.BaseSelector) -> None:
        if client.worker is not None and not client.hung_up:
            log.info("pid %d went away: SIGHUP to worker %d", client.peer_pid, client.worker)
            client.hung_up = True
            _kill(client.worker, signal.SIGHUP)
        selector.unregister(client.conn)
        if client.worker is None:
            self._drop(client, None)

    def _reap(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            client = self.workers.pop(pid, None)
            if client is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            log.info("worker %d (lazyfs %s) ended: %d", pid, client.command, code)
            if not client.hung_up:
                try:
                    client.conn.send(b"exit %d" % code)
                except OSError:
                    pass
            self._drop(client, None if client.hung_up else selector)

    def _drop(self, client: _Client, selector: selectors.BaseSelector | None) -> None:
        fd = client.conn.fileno()
        if selector is not None and fd >= 0:
            try:
                selector.unregister(client.conn)
            except (KeyError, ValueError):
                pass
        self.clients.pop(fd, None)
        client.conn.close()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _worker(
    service: Service,
    service_pid: int,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    umask: int,
    fds: list[int],
) -> None:
    """In the forked worker: become the client's ``lazyfs`` and run its command."""
    code = 125
    try:
        try:
            if not _take_over(service, service_pid, env, cwd, umask, fds):
                return  # the service died before the worker could watch it
        except OSError as exc:  # (stderr is the client's by now, or still the service's)
            where = f": {exc.filename}" if exc.filename else ""
            print(
                f"lazyfs: error: cannot take the caller's place: {exc.strerror}{where}",
                file=sys.stderr,
            )
            return
        sys.argv = list(argv)
        _startup.recording = False
        code = cli.main(argv[1:], parser=service.parser)
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()  # a bug: shown as the lazyfs command itself would show it
        code = 1
    finally:
        _startup._exit_now(code)


def _take_over(
    service: Service,
    service_pid: int,
    env: dict[str, str],
    cwd: str,
    umask: int,
    fds: list[int],
) -> bool:
    """Leave the service's state behind and take the client's: stdio, working directory,
    umask, environment. False if the service is already gone."""
    os.setsid()  # out of the service's process group and session; no terminal
    # If the service is killed, its clients lose their line to the worker: end the
    # command as if the client had gone (the client reports the service's end).
    syscalls.set_pdeathsig(signal.SIGHUP)
    if os.getppid() != service_pid:
        return False
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if service.listener is not None:
        service.listener.close()
    for other in service.clients.values():
        other.conn.close()
    for fd in service._own_fds:
        os.close(fd)
    adopt_stdio(fds)
    os.chdir(cwd)
    os.umask(umask)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # computed again from the client's TMPDIR
    for handler in logging.root.handlers[:]:
        logging.root.removeHandler(handler)  # cli.main sets logging up for the client
    log.setLevel(logging.NOTSET)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=stream.isatty())
        except (OSError, ValueError, AttributeError):
            pass
    return True


def serve(path: Path, *, ready=None) -> int:
    """``lazyfs service``: import everything, listen on ``path``, serve until stopped."""
    service = Service(path, parser=preload())
    service.listen()
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)  # one line per command served, even without -v
    service.serve(ready)
    log.info("stopped")
    return 0
