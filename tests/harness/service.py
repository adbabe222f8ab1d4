"""A ``lazyfs service`` started by a test or a bench (see :mod:`lazyfs.service`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["LazyfsService"]


class LazyfsService:
    """A ``lazyfs service`` a test or a bench starts (a bench does not count its start,
    like containerd's): ``lazyfs`` commands given :meth:`env` are run by it.

    :meth:`served` counts the commands its log says it ran, so that a caller can check that
    a command really went through the service (a client runs a command itself, silently,
    when the service cannot take it).
    """

    def __init__(self, lazyfs: list[str], directory: Path) -> None:
        self.argv = [*lazyfs, "service", "--socket", str(directory / "service.sock")]
        self.socket = directory / "service.sock"
        self.log = directory / "service.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> LazyfsService:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LAZYFS_SERVICE": "off"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lazyfs service exited: {self.log.read_text()[-2000:]}")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(str(self.socket))
                return self
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        self.stop()
        raise RuntimeError(f"lazyfs service did not listen within {timeout:.0f} s")

    def env(self) -> dict[str, str]:
        return {"LAZYFS_SERVICE": str(self.socket)}

    def served(self) -> int:
        """Commands the service has started a worker for, so far."""
        return len(re.findall(r": lazyfs \w+ \(worker \d+\)$", self.text(), re.MULTILINE))

    def text(self) -> str:
        """Its log so far."""
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def served_pid(self, pid: int) -> bool:
        """Whether it started a worker for the client process ``pid``."""
        return re.search(rf": pid {pid}: lazyfs \w+ \(worker \d+\)$", self.text(), re.M) is not None

    def stop(self) -> int | None:
        """SIGTERM, then wait for it (SIGKILL after 30 s); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode
