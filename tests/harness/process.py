"""Lifecycles shared by the harness's servers: a daemon subprocess, or an HTTP server thread.

:class:`ManagedProcess` is the base of servers that run an external program
(:class:`~tests.harness.registry.RegistryServer`,
:class:`~tests.harness.containerd.ContainerdServer`). :meth:`ManagedProcess.start` checks
the binary, lets the subclass write its files (:meth:`~ManagedProcess._prepare`), starts
:meth:`~ManagedProcess._command` in its own session with stdout and stderr appended to
``log_path``, and polls :meth:`~ManagedProcess._not_ready` until the program answers,
raising the subclass's :attr:`~ManagedProcess.start_error` with the end of the log if it
exits or does not answer within ``startup_timeout`` seconds. :meth:`~ManagedProcess.stop`
sends SIGTERM to the process group, then SIGKILL after ``stop_timeout`` seconds.

:class:`ThreadedServer` is the base of in-process HTTP servers
(:class:`~tests.harness.faultproxy.FaultProxy`,
:class:`~tests.harness.tokenissuer.TokenIssuer`): :meth:`ThreadedServer.start` binds the
server :meth:`~ThreadedServer._make_server` builds to a free ``127.0.0.1`` port and serves
it in a daemon thread; ``port``, ``host`` and ``url`` say where.

Both are context managers (``with Server(...) as server:`` starts and stops), and both
``stop`` methods are idempotent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Self

__all__ = ["ManagedProcess", "ThreadedServer"]


class ManagedProcess:
    """An external program run as a server, with its output in a log file.

    Subclasses set :attr:`name` and :attr:`start_error`, and implement :meth:`_command` and
    :meth:`_not_ready`; they may override :meth:`_prepare`, :meth:`_environment` and
    :attr:`stop_timeout`.

    Args:
        binary: The executable; :meth:`start` fails if it is not executable.
        log_path: File the program's stdout and stderr are appended to.
        startup_timeout: Seconds :meth:`start` waits for the program to answer.

    Attributes:
        binary, log_path, startup_timeout: As given.
        process: The running :class:`subprocess.Popen`, or ``None`` when stopped.
    """

    #: What the program is called in messages (e.g. ``"registry"``).
    name = "process"
    #: Exception :meth:`start` raises when the program is missing, exits or does not answer.
    start_error: type[Exception] = RuntimeError
    #: Seconds :meth:`stop` waits after SIGTERM before it sends SIGKILL.
    stop_timeout = 10.0

    def __init__(self, *, binary: str, log_path: Path, startup_timeout: float) -> None:
        self.binary = binary
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ hooks

    def _command(self) -> list[str]:
        """The argv that starts the program."""
        raise NotImplementedError

    def _not_ready(self) -> str | None:
        """``None`` once the program answers; until then, why not (for the timeout error)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write what the program needs (configuration, directories) before it starts."""

    def _environment(self) -> dict[str, str] | None:
        """The program's environment; ``None`` inherits the test process's."""
        return None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start the program and wait until it answers (:meth:`_not_ready` gives ``None``).

        Raises :attr:`start_error` (with the end of the log) if the binary is missing, or
        the program exits or does not answer within ``startup_timeout`` seconds; the
        program is stopped then. Raises :class:`RuntimeError` if already started.
        """
        if self.process is not None:
            raise RuntimeError(f"{self.name} already started")
        if not os.access(self.binary, os.X_OK):
            raise self.start_error(f"{self.name} binary {self.binary} not found or not executable")
        self._prepare()
        command = self._command()
        with self.log_path.open("ab") as log:
            log.write(f"--- harness: starting {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise self.start_error(
                    f"{self.name} exited with status {self.process.returncode}; log:\n"
                    + self.log_tail()
                )
            reason = self._not_ready()
            if reason is None:
                return
            if time.monotonic() > deadline:
                raise self.start_error(
                    f"{self.name} not ready after {self.startup_timeout} s ({reason}); log:\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the process group (SIGTERM, SIGKILL after :attr:`stop_timeout` s).

        Waits for the process to end. Idempotent.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, or ``"(no log)"``."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class ThreadedServer:
    """A :class:`ThreadingHTTPServer` on a free ``127.0.0.1`` port, served in a daemon thread.

    Subclasses set :attr:`name` and implement :meth:`_make_server`.
    """

    #: Name of the serving thread, and of the server in messages.
    name = "http-server"

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _make_server(self, address: tuple[str, int]) -> ThreadingHTTPServer:
        """A new server bound to ``address``."""
        raise NotImplementedError

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} already started")
        self._server = self._make_server(("127.0.0.1", 0))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket. Idempotent.

        Requests being handled go on in their own daemon threads.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port."""
        if self._server is None:
            raise RuntimeError(f"{self.name} not started")
        return self._server.server_address[1]

    @property
    def host(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:PORT"``."""
        return f"http://{self.host}"
