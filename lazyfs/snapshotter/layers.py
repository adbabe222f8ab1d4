"""The snapshotter's client of ``lazyfs layerd``, the daemon serving lazily pulled layers.

``lazyfs layerd --root ROOT`` (:mod:`lazyfs.layerd`) holds one FUSE mount at ``ROOT/layers``;
``ROOT/layers/<hex>/`` is the layer whose blob digest is ``sha256:<hex>``, presented the way
overlayfs expects a lower directory (whiteouts as 0/0 character devices, opaque directories
with ``trusted.overlay.opaque=y``), its file contents fetched from the registry when first
read. A snapshotter uses these directories as ``lowerdir=`` entries of overlay mounts.

:class:`LayerServer` is synchronous (the snapshotter's gRPC server is threaded) and talks to
the daemon's control socket (:func:`lazyfs.control.control_socket_path` of ``ROOT/layers``)
with the standard ``socket`` module: one JSON request line, one JSON answer line, a new
connection per call, so one object may be used from several threads at once.

* :meth:`LayerServer.ensure_running` starts the daemon if its socket does not answer:
  ``sys.executable -m lazyfs.layerd -v --root ROOT [--cache-dir DIR] EXTRA_ARGS...`` in a
  new session (so it outlives the snapshotter and a restart of it), stdin from
  ``/dev/null``, stdout and stderr appended to ``ROOT/logs/layerd.log``. It returns once
  the daemon answers, and raises :class:`~lazyfs.errors.LazyfsError` (with the end of the
  log) if the daemon exits first or does not answer within ``start_timeout``. Concurrent
  callers, in this process or others, start one daemon (a lock file,
  ``ROOT/layerd.start.lock``, and the daemon's own lock on ``ROOT/layerd.lock``).
  ``EXTRA_ARGS`` are ``lazyfs layerd`` options: ``--stream-plain``, ``--insecure-registry
  HOST``, ``--creds``, ``--docker-config``, ``--platform``, ``--no-prefetch``,
  ``--cache-size``...
* :meth:`LayerServer.add_layer` makes the daemon serve one layer blob of the repository of
  an image reference and returns its directory. It is idempotent and may take a while the
  first time (the layer's index is read from the registry: one or two range requests; a
  plain layer, with ``--stream-plain``, is streamed whole). A layer without a lazy index
  raises :class:`NotLazy` (unless the daemon streams plain layers); any other failure
  (registry errors, a layer not in the image, a malformed index) raises
  :class:`~lazyfs.errors.LazyfsError` with the daemon's one-line message.
* :meth:`LayerServer.remove_layer` takes the directory away; :meth:`LayerServer.has_layer`,
  :meth:`LayerServer.list_layers` and :meth:`LayerServer.stats` ask; :meth:`LayerServer.stop`
  unmounts and waits for the daemon to exit.

A daemon that died (killed, crashed) leaves a dead mount behind; :meth:`ensure_running`
starts a new daemon, which detaches it, and the layers must be added again (the snapshotter
re-adds the ones its metadata records). Overlay mounts made over the dead daemon's layers
stay broken: restart the snapshotter, not the layer server (``KillMode=process``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..control import control_socket_path, is_mountpoint
from ..errors import LazyfsError
from ..layerd import NotLazy, layers_mountpoint, log_path, pid_path
from ..oci.digest import Digest

__all__ = ["LayerServer", "NotLazy"]

#: Seconds a quick request (ping, list, remove, stats) may take.
QUICK_TIMEOUT = 15.0
#: Seconds an ``add_layer`` may take (a plain layer is streamed whole with --stream-plain).
ADD_TIMEOUT = 900.0
_MAX_ANSWER = 64 * 1024 * 1024


class LayerServer:
    """The ``lazyfs layerd`` of ``root``: start it, add and remove layers, stop it.

    ``cache_dir``: the daemon's chunk cache (default ``ROOT/cache``). ``extra_args``: more
    ``lazyfs layerd`` options for a daemon this object starts. ``start_timeout``: seconds
    :meth:`ensure_running` waits for a new daemon to answer.
    """

    def __init__(
        self,
        root: Path,
        *,
        cache_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root).absolute()
        self.cache_dir = Path(cache_dir).absolute() if cache_dir is not None else None
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.mountpoint = layers_mountpoint(self.root)
        self.socket_path = control_socket_path(self.mountpoint)
        self.log_path = log_path(self.root)

    # ------------------------------------------------------------------ the daemon

    def ping(self) -> dict | None:
        """The daemon's ``{"ok", "pid", "mountpoint"}``, or None if nothing answers."""
        try:
            return self._request({"op": "ping"}, timeout=5.0)
        except LazyfsError:
            return None

    def ensure_running(self) -> None:
        """Start the daemon unless it answers already; return once it does."""
        if self.ping() is not None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            if self.ping() is not None:
                return  # another caller started it meanwhile
            process = self._spawn()
            deadline = time.monotonic() + self.start_timeout
            while True:
                if self.ping() is not None:
                    return
                code = process.poll()
                if code is not None:
                    raise LazyfsError(
                        f"lazyfs layerd exited with status {code} before serving {self.root}"
                        f"{self._log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise LazyfsError(
                        f"lazyfs layerd did not answer within {self.start_timeout:g} s "
                        f"(pid {process.pid}){self._log_tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount and wait for the daemon to exit; detaches a dead daemon's mount too."""
        pid = self._pid()
        try:
            self._request({"op": "unmount"}, timeout=QUICK_TIMEOUT)
        except LazyfsError:
            pass  # not running (or stuck): what follows cleans up
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid) and not is_mountpoint(self.mountpoint):
                return
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        if is_mountpoint(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30
            )
        if is_mountpoint(self.mountpoint):
            raise LazyfsError(f"cannot unmount {self.mountpoint}")

    # ------------------------------------------------------------------ layers

    def layer_path(self, digest: str) -> Path:
        """Where layer ``digest`` is (or would be) served: ``ROOT/layers/<hex>``."""
        return self.mountpoint / Digest(digest).hex

    def add_layer(
        self,
        ref: str,
        digest: str,
        *,
        media_type: str | None = None,
        annotations: dict | None = None,
        diff_id: str | None = None,
        insecure: Sequence[str] = (),
    ) -> Path:
        """Serve layer ``digest`` of the repository of image ``ref``; its directory.

        Without both ``media_type`` and ``annotations`` the daemon takes the layer's
        descriptor from the image ``ref`` names. ``insecure``: registry hosts to reach
        without TLS verification; the daemon refuses those it was not started with
        (``--insecure-registry``; loopback hosts always are). Raises :class:`NotLazy` or
        :class:`~lazyfs.errors.LazyfsError`.
        """
        request: dict = {"op": "add_layer", "ref": ref, "digest": str(Digest(digest))}
        if media_type is not None:
            request["media_type"] = media_type
        if annotations is not None:
            request["annotations"] = dict(annotations)
        if diff_id is not None:
            request["diff_id"] = diff_id
        if insecure:
            request["insecure"] = list(insecure)
        answer = self._request(request, timeout=ADD_TIMEOUT)
        return Path(answer["path"])

    def has_layer(self, digest: str) -> bool:
        """True if the daemon serves layer ``digest``."""
        return bool(self._request({"op": "has_layer", "digest": str(Digest(digest))})["present"])

    def remove_layer(self, digest: str) -> None:
        """Stop serving layer ``digest`` (nothing happens if it is not served)."""
        self._request({"op": "remove_layer", "digest": str(Digest(digest))})

    def list_layers(self) -> list[dict]:
        """The layers served: digest, ref, path, format, entries, inodes..."""
        return self._request({"op": "list"})["layers"]

    def stats(self) -> dict:
        """Per layer and in total: bytes fetched, requests, cache hits, errors, FUSE errors.

        Keys: ``layers`` (one dict per layer: ``digest``, ``path``, ``bytes_fetched``,
        ``requests``, ``memory_hits``, ``disk_hits``, ``errors``, ``fuse_errors``,
        ``prefetch_*``...), ``total`` (the counters added up), ``fetch.cache`` (the shared
        cache), ``registry`` (all HTTP traffic of the daemon, index reads included).
        """
        return self._request({"op": "stats"})

    # ------------------------------------------------------------------ plumbing

    def _request(self, request: dict, *, timeout: float = QUICK_TIMEOUT) -> dict:
        """Send one request and return the answer; errors become exceptions."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = bytearray()
                while not data.endswith(b"\n"):
                    piece = sock.recv(1 << 16)
                    if not piece:
                        break
                    data += piece
                    if len(data) > _MAX_ANSWER:
                        raise LazyfsError("lazyfs layerd sent an answer too long")
        except (FileNotFoundError, ConnectionRefusedError):
            raise LazyfsError(f"lazyfs layerd is not running for {self.root}") from None
        except TimeoutError:
            raise LazyfsError(
                f"lazyfs layerd of {self.root} did not answer {request['op']} within {timeout:g} s"
            ) from None
        except OSError as exc:
            raise LazyfsError(f"lazyfs layerd of {self.root}: {exc}") from None
        try:
            answer = json.loads(data)
        except ValueError:
            raise LazyfsError(
                f"lazyfs layerd of {self.root} sent no answer to {request['op']}"
            ) from None
        if not isinstance(answer, dict):
            raise LazyfsError(f"lazyfs layerd of {self.root} sent an unreadable answer")
        if "error" in answer:
            cls = NotLazy if answer.get("kind") == "NotLazy" else LazyfsError
            raise cls(str(answer["error"]))
        return answer

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "lazyfs.layerd", "-v", "--root", str(self.root)]
        if self.cache_dir is not None:
            command += ["--cache-dir", str(self.cache_dir)]
        return command + list(self.extra_args)

    def _spawn(self) -> subprocess.Popen:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log, open(os.devnull, "rb") as null:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting layerd\n".encode())
            log.flush()
            return subprocess.Popen(
                self._command(),
                stdin=null,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        fd = os.open(self.root / "layerd.start.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _pid(self) -> int | None:
        try:
            return int(pid_path(self.root).read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "; log " + str(self.log_path) + ":\n" + "\n".join(text) if text else ""


def _alive(pid: int | None) -> bool:
    """True if process ``pid`` exists (and is not a zombie we could reap)."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our child, now reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
