"""Shaped networks for the benchmarks: a registry behind a slow link, on this machine only.

This kernel has no ``netem`` qdisc (FORMATS.md §8), so a link is emulated in two parts:

* **rate**: two network namespaces the bench creates, ``lzbc<pid>`` (the client's end) and
  ``lzbr<pid>`` (the registry's end), joined by a veth pair whose two ends are both inside
  them (the host's own interfaces are never touched), with a ``tbf`` qdisc on each end;
  addresses ``10.213.<n>.1`` and ``.2`` on a /30;
* **latency**: a small TCP proxy (:func:`serve_proxy`, this module run as a program) that
  listens on ``127.0.0.1`` in the host's namespace, so clients see a loopback registry
  (plain HTTP, as for any local registry), and opens its upstream connections from inside
  the client namespace, over the shaped veth, to a second registry process serving the
  same storage in the registry namespace. It holds every piece of data for RTT/2 in each
  direction before passing it on.

:class:`ShapedNetwork` sets this up and tears it all down (the proxy, the registry in the
namespace, both namespaces with their veth and qdiscs) on exit, errors and Ctrl-C
included; a namespace left by a killed earlier run (its owner's pid gone) is deleted when
the next one starts. :data:`PROFILES` are the links measured.

Run as ``python -m bench._netem proxy --connect HOST:PORT --netns NAME --delay-ms MS``: the
proxy; it prints ``port N`` once it listens and serves until it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PROFILES", "Profile", "ShapedNetwork", "serve_proxy"]

KiB = 1024
CLONE_NEWNET = 0x40000000
PREFIX = "lzb"
REGISTRY_PORT = 5000
#: Data a direction of a proxied connection may hold back before it stops reading.
QUEUE_LIMIT = 16 * 1024 * KiB
RECV_SIZE = 256 * KiB


@dataclass(frozen=True)
class Profile:
    """A link: ``rate_mbit`` (None: unshaped) and the round-trip time it adds."""

    name: str
    rate_mbit: float | None
    rtt_ms: float
    label: str

    @property
    def shaped(self) -> bool:
        return self.rate_mbit is not None or self.rtt_ms > 0


PROFILES = {
    p.name: p
    for p in (
        Profile("loopback", None, 0.0, "loopback, unshaped"),
        Profile("1gbit-2ms", 1000.0, 2.0, "1 Gbit/s, 2 ms RTT"),
        Profile("100mbit-20ms", 100.0, 20.0, "100 Mbit/s, 20 ms RTT"),
    )
}


def _say(text: str) -> None:
    print(f"--> {text}", file=sys.stderr, flush=True)


def _ip(*args: str, netns: str | None = None, check: bool = True, tool: str = "ip") -> None:
    """``ip`` (or ``tc``) with ``args``, in ``netns`` if given (``-n NAME``)."""
    cmd = [tool, *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def _netns_names() -> list[str]:
    result = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> None:
    """Delete ``lzb[cr]<pid>`` namespaces whose creating process is gone."""
    for name in _netns_names():
        ours = len(name) > 4 and name[:3] == PREFIX and name[3] in "cr" and name[4:].isdigit()
        if ours and not _pid_alive(int(name[4:])):
            _say(f"deleting network namespace {name}, left by an earlier run")
            _ip("netns", "del", name, check=False)


class ShapedNetwork:
    """Two namespaces, a veth between them, a registry in one and a delaying proxy.

    Use as a context manager. :meth:`start_registry` serves ``storage`` (the filesystem
    storage of a registry running on loopback) from the registry namespace;
    :meth:`apply` shapes the link for a :class:`Profile` and (re)starts the proxy;
    :attr:`host` is then ``127.0.0.1:PORT``, the registry as the client sees it.
    """

    def __init__(self, workdir: Path, subnet: int | None = None) -> None:
        self.workdir = Path(workdir)
        pid = os.getpid()
        self.client_ns, self.registry_ns = f"{PREFIX}c{pid}", f"{PREFIX}r{pid}"
        self.client_if, self.registry_if = f"{PREFIX}c{pid}"[:15], f"{PREFIX}r{pid}"[:15]
        n = subnet if subnet is not None else pid % 250 + 1
        self.client_ip, self.registry_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self.registry: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.port: int | None = None
        self.profile: Profile | None = None
        self._created = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ShapedNetwork:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create(self) -> None:
        """The namespaces and the veth pair (unshaped until :meth:`apply`)."""
        remove_stale_namespaces()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._created = True
        for ns in (self.client_ns, self.registry_ns):
            _ip("netns", "add", ns)
            _ip("link", "set", "lo", "up", netns=ns)
        _ip(
            "link", "add", self.client_if, "netns", self.client_ns, "type", "veth",
            "peer", "name", self.registry_if, "netns", self.registry_ns,
        )  # fmt: skip
        for ns, dev, ip in (
            (self.client_ns, self.client_if, self.client_ip),
            (self.registry_ns, self.registry_if, self.registry_ip),
        ):
            _ip("addr", "add", f"{ip}/30", "dev", dev, netns=ns)
            _ip("link", "set", dev, "up", netns=ns)

    def close(self) -> None:
        """Stop the proxy and the registry, delete the namespaces (and so the veth, qdiscs)."""
        for proc in (self.proxy, self.registry):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.proxy = self.registry = None
        if self._created:
            for ns in (self.client_ns, self.registry_ns):
                _ip("netns", "del", ns, check=False)
            self._created = False

    # ------------------------------------------------------------------ registry

    def start_registry(self, storage: Path) -> None:
        """``docker-registry`` on ``REGISTRY_IP:5000`` in the registry namespace, serving
        ``storage`` (read-only use: every push goes to the loopback registry)."""
        config = self.workdir / "registry-netns.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  formatter: text\n"
            f'storage:\n  filesystem:\n    rootdirectory: "{storage}"\n'
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f'http:\n  addr: "{self.registry_ip}:{REGISTRY_PORT}"\n'
            f'  secret: "{os.urandom(8).hex()}"\n'
            "health:\n  storagedriver:\n    enabled: false\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        with open(self.workdir / "registry-netns.log", "ab") as log:
            self.registry = subprocess.Popen(
                ["ip", "netns", "exec", self.registry_ns, "docker-registry", "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        probe = ["ip", "netns", "exec", self.client_ns, "curl", "-sf", "-o", "/dev/null"]
        probe.append(f"http://{self.registry_ip}:{REGISTRY_PORT}/v2/")
        while subprocess.run(probe, capture_output=True).returncode:
            if self.registry.poll() is not None or time.monotonic() > deadline:
                log = (self.workdir / "registry-netns.log").read_text()[-2000:]
                raise RuntimeError(f"the registry in {self.registry_ns} did not start:\n{log}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ shaping

    def apply(self, profile: Profile) -> str:
        """Shape the veth for ``profile`` and (re)start the proxy; returns :attr:`host`."""
        for ns, dev in ((self.client_ns, self.client_if), (self.registry_ns, self.registry_if)):
            if profile.rate_mbit is None:
                _ip("qdisc", "del", "dev", dev, "root", netns=ns, check=False, tool="tc")
                continue
            rate_bytes = profile.rate_mbit * 1e6 / 8
            burst = max(64 * KiB, int(rate_bytes * 0.004))  # 4 ms at the rate
            _ip(
                "qdisc", "replace", "dev", dev, "root", "tbf",
                "rate", f"{profile.rate_mbit:g}mbit", "burst", str(burst), "latency", "25ms",
                netns=ns, tool="tc",
            )  # fmt: skip
        self._start_proxy(profile.rtt_ms / 2)
        self.profile = profile
        return self.host

    @property
    def host(self) -> str:
        if self.port is None:
            raise RuntimeError("the proxy is not running")
        return f"127.0.0.1:{self.port}"

    def qdiscs(self) -> list[str]:
        """``tc qdisc show`` of both veth ends (for the report)."""
        out = []
        for ns, dev in ((self.client_ns, self.client_if), (self.registry_ns, self.registry_if)):
            result = subprocess.run(
                ["tc", "-n", ns, "qdisc", "show", "dev", dev],
                capture_output=True,
                text=True,
            )
            out.append(f"{dev}: {result.stdout.strip()}")
        return out

    def _start_proxy(self, delay_ms: float) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            os.killpg(self.proxy.pid, signal.SIGTERM)
            self.proxy.wait(timeout=10)
        cmd = [sys.executable, "-m", "bench._netem", "proxy", "--netns", self.client_ns]
        cmd += ["--connect", f"{self.registry_ip}:{REGISTRY_PORT}", "--delay-ms", str(delay_ms)]
        with open(self.workdir / "proxy.log", "ab") as log:
            self.proxy = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent,
                start_new_session=True,
            )
        assert self.proxy.stdout is not None
        line = self.proxy.stdout.readline().decode()
        if not line.startswith("port "):
            raise RuntimeError(f"the proxy did not start: {line!r}; see {self.workdir}/proxy.log")
        self.port = int(line.split()[1])


# ---------------------------------------------------------------------- the proxy


def _enter_netns(name: str) -> None:
    """Move this (still single-threaded) process into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class _Direction:
    """Copies ``src`` to ``dst``, each piece held ``delay`` seconds after it was read."""

    def __init__(self, src: socket.socket, dst: socket.socket, delay: float, done) -> None:
        self.src, self.dst, self.delay, self.done = src, dst, delay, done
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.cond = threading.Condition()
        self.failed = False

    def start(self) -> None:
        if self.delay <= 0:
            threading.Thread(target=self._copy, daemon=True).start()
            return
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _copy(self) -> None:
        try:
            while data := self.src.recv(RECV_SIZE):
                self.dst.sendall(data)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            self.failed = True
        self.done(self)

    def _read(self) -> None:
        while True:
            try:
                data = self.src.recv(RECV_SIZE)
            except OSError:
                data = b""
                self.failed = True
            with self.cond:
                while self.held > QUEUE_LIMIT and not self.failed:
                    self.cond.wait()
                self.queue.append((time.monotonic() + self.delay, data))
                self.held += len(data)
                self.cond.notify_all()
            if not data:
                return

    def _write(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.queue:
                        self.cond.wait()
                    due, data = self.queue.popleft()
                    self.held -= len(data)
                    self.cond.notify_all()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    self.dst.shutdown(socket.SHUT_WR)
                    break
                self.dst.sendall(data)
        except OSError:
            with self.cond:
                self.failed = True
                self.cond.notify_all()
        self.done(self)


def _serve_one(client: socket.socket, upstream: tuple[str, int], delay: float) -> None:
    try:
        server = socket.create_connection(upstream, timeout=10)
    except OSError:
        client.close()
        return
    server.settimeout(None)
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    left = [2]
    lock = threading.Lock()

    def done(direction: _Direction) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0 or direction.failed
        if last:
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    _Direction(client, server, delay, done).start()
    _Direction(server, client, delay, done).start()


def serve_proxy(netns: str, upstream: tuple[str, int], delay_ms: float, port: int = 0) -> None:
    """Listen on ``127.0.0.1:port`` here, connect to ``upstream`` from ``netns``, delaying
    each direction by ``delay_ms``; prints ``port N`` once listening. Never returns."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    _enter_netns(netns)  # the listener stays in the host's namespace
    print(f"port {listener.getsockname()[1]}", flush=True)
    delay = delay_ms / 1000
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(client, upstream, delay), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._netem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="the delaying TCP proxy")
    proxy.add_argument("--netns", required=True, help="namespace to connect from")
    proxy.add_argument("--connect", required=True, metavar="HOST:PORT")
    proxy.add_argument("--delay-ms", type=float, default=0.0, help="each direction's delay")
    proxy.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    args = parser.parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        serve_proxy(args.netns, (host, int(port)), args.delay_ms, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
