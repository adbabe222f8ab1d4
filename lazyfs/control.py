"""Talking to a running mount: ``lazyfs stats`` and ``lazyfs umount``.

Each mount daemon listens on a unix socket named after its mount point, in a runtime
directory only its user can enter. This keeps control files out of the mounted tree, which
may be a container's root. The protocol is one JSON request line and one JSON answer
line: ``{"op": "stats"}`` or ``{"op": "unmount"}``. An answer with ``"error"`` failed; its
``"kind"`` names the error class. ``lazyfs layerd`` serves more ops, with arguments, the same way.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from . import _delegate
from .errors import LazyfsError

__all__ = ["control_socket_path", "is_mountpoint", "mount_device", "request", "serve_control"]

log = logging.getLogger("lazyfs.control")

#: Seconds a client has to send its request line (and to take its answer).
REQUEST_TIMEOUT = 10.0
_MAX_REQUEST = 1024 * 1024
_MAX_ANSWER = 64 * 1024 * 1024

#: A plain function of no argument, or an async function of the request object.
Handler = Callable[[], dict] | Callable[[dict], Awaitable[dict]]


def runtime_dir() -> Path:
    """``/run/lazyfs`` for root, ``$XDG_RUNTIME_DIR/lazyfs`` (or a /tmp dir) otherwise."""
    return Path(_delegate.runtime_dir())


def control_socket_path(mountpoint: str | os.PathLike[str]) -> Path:
    """The socket of the daemon serving ``mountpoint`` (by its absolute path)."""
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:20]
    return runtime_dir() / "mounts" / f"{key}.sock"


def _unescape(field: str) -> str:
    """A mountinfo field with its octal escapes (``\\040`` for a space...) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_device(path: str | os.PathLike[str]) -> str | None:
    """``"major:minor"`` of what is mounted at ``path`` (the last mount there), else None.

    Read from /proc/self/mountinfo, not with stat(): stat'ing a FUSE mount point asks its
    daemon, which may be this very process, not serving yet.
    """
    target = os.path.abspath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    found = fields[2]
    except OSError:
        pass
    return found


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """True if something is mounted at ``path``."""
    return mount_device(path) is not None


async def serve_control(
    mountpoint: Path,
    handlers: dict[str, Handler],
    *,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer control requests for ``mountpoint`` until cancelled; removes the socket after.

    ``handlers`` maps an op to a plain function, called with no argument, or to an async
    function, called with the request object and given as long as it needs. A handler that
    raises answers ``{"error": message, "kind": class name}``.
    """
    path = control_socket_path(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(64)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    request = json.loads(await _read_line(stream, _MAX_REQUEST))
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except (trio.TooSlowError, ValueError, trio.BrokenResourceError):
                return
            answer = await _answer(handlers, request)
            # Shielded: an "unmount" handler may have cancelled this server already.
            with trio.CancelScope(shield=True), trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    await stream.send_all(json.dumps(answer).encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            await trio.serve_listeners(handle, [trio.SocketListener(sock)], handler_nursery=nursery)
    finally:
        with trio.CancelScope(shield=True):
            path.unlink(missing_ok=True)


async def _answer(handlers: dict[str, Handler], request: dict) -> dict:
    """The answer of the handler of ``request``'s op (errors included, as ``error``)."""
    op = request.get("op")
    handler = handlers.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"error": f"unknown op {op!r}", "kind": "LazyfsError"}
    try:
        if inspect.iscoroutinefunction(handler):
            return await handler(request)
        return handler()  # type: ignore[call-arg]
    except LazyfsError as exc:
        log.warning("%s failed: %s", op, exc)
        return {"error": str(exc), "kind": type(exc).__name__}
    except Exception as exc:
        log.exception("%s failed", op)
        return {"error": f"internal error: {type(exc).__name__}: {exc}", "kind": "LazyfsError"}


async def _read_line(stream: trio.SocketStream, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        piece = await stream.receive_some(65536)
        if not piece:
            break
        data += piece
        if len(data) > limit:
            raise ValueError("line too long")
    return data.split(b"\n", 1)[0]


async def request(mountpoint: str | os.PathLike[str], op: str, *, timeout: float = 10) -> dict:
    """Send ``op`` to the daemon serving ``mountpoint``; its answer."""
    path = control_socket_path(mountpoint)
    if not path.exists():
        raise LazyfsError(f"no lazyfs daemon serves {mountpoint}")
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(json.dumps({"op": op}).encode() + b"\n")
                line = await _read_line(stream, _MAX_ANSWER)
    except (OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        raise LazyfsError(f"the lazyfs daemon of {mountpoint} does not answer ({exc})") from None
    try:
        return json.loads(line)
    except ValueError:
        raise LazyfsError(f"the lazyfs daemon of {mountpoint} sent an unreadable answer") from None
