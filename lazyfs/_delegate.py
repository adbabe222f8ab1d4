"""Handing a ``lazyfs`` command to a running ``lazyfs service`` (the client side).

A ``lazyfs run`` spends about a quarter of a second starting Python and importing trio,
httpx, pyfuse3 and lazyfs before it does any work (more with a cold page cache). A
``lazyfs service`` pays that once: it imports everything, then forks a worker per command it
is handed (see :mod:`lazyfs.service`). This module is the other end, used by the ``lazyfs``
entry point before it imports anything heavy: it connects to the service's socket, hands
over the command line, the environment, the working directory, the umask and its own
standard input, output and error (``SCM_RIGHTS``), forwards the signals a terminal or a
supervisor sends it, and exits with the worker's status. The worker then does exactly what
``lazyfs`` itself would have done, on the caller's terminal and files.

The command runs here instead, as if there were no service, when there is no service (no
socket, nobody listening), when ``LAZYFS_SERVICE`` says ``off``, and when the service
declines it: a caller of another user, or in another mount, PID, network, user, IPC, UTS or
cgroup namespace or root directory (what the worker would mount or start would land in the
service's, not the caller's).

The protocol, on a ``SOCK_SEQPACKET`` unix socket (one message per datagram):

* client → service, first: a JSON object ``{"argv", "env", "cwd", "umask"}`` with the
  client's standard input, output and error attached;
* service → client: ``accepted``, sent before the worker is forked (so a client that sees
  no answer knows nothing was started), or ``local REASON`` (declined: run it yourself);
* client → service, any number: ``signal N``, forwarded to the worker;
* service → client, last: ``exit STATUS`` (128 + N if the worker died of signal N).

If the client goes away before the worker ends, the worker gets ``SIGHUP`` (like a process
whose terminal hangs up). The client side imports no Python module beyond what the
interpreter has already loaded at start: only the C parts of ``socket``, ``signal`` and
``json`` (``socket`` and ``json`` import ``re`` and ``enum``, 10-30 ms that a start with a
cold page cache pays in disk reads, for a process that lives to relay).
"""

from __future__ import annotations

import _json
import _signal
import _socket
import os
import sys

__all__ = [
    "COMMANDS",
    "FORWARDED_SIGNALS",
    "MAX_MESSAGE",
    "delegate",
    "encode_request",
    "runtime_dir",
    "service_socket",
]

#: The commands a service runs for its clients (the others always run in the caller).
COMMANDS = frozenset({"run", "mount", "bundle", "umount", "stats"})

#: Signals the client forwards to the worker (stop requests, and the terminal's new size).
FORWARDED_SIGNALS = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGWINCH,
)

#: The largest message either side sends or accepts (the request carries the environment).
MAX_MESSAGE = 1024 * 1024

#: Values of ``LAZYFS_SERVICE`` that mean: never hand commands to a service.
_OFF = frozenset({"", "0", "off", "no", "none", "false"})


def runtime_dir() -> str:
    """``/run/lazyfs`` for root, ``$XDG_RUNTIME_DIR/lazyfs`` (or a /tmp dir) otherwise."""
    if os.geteuid() == 0:
        return "/run/lazyfs"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/lazyfs-{os.getuid()}"
    return os.path.join(base, "lazyfs")


def service_socket() -> str | None:
    """The socket a client tries: ``$LAZYFS_SERVICE`` if set (None if it says ``off``),
    else ``service.sock`` in :func:`runtime_dir`."""
    configured = os.environ.get("LAZYFS_SERVICE")
    if configured is not None:
        return None if configured.strip().lower() in _OFF else configured
    return os.path.join(runtime_dir(), "service.sock")


def encode_request(argv: list[str], env: dict[str, str], cwd: str, umask: int) -> bytes:
    """The request as JSON (what ``json.dumps`` would write, strings ASCII-escaped, so lone
    surrogates of undecodable bytes in the environment survive)."""

    def string(text: str) -> str:
        return _json.encode_basestring_ascii(text)

    items = ",".join(f"{string(k)}:{string(v)}" for k, v in env.items())
    data = (
        f'{{"argv":[{",".join(string(a) for a in argv)}],"env":{{{items}}},'
        f'"cwd":{string(cwd)},"umask":{int(umask)}}}'
    ).encode("ascii")
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"request of {len(data)} bytes, over {MAX_MESSAGE}")
    return data


def delegate(argv: list[str], command: str) -> int | None:
    """Run ``argv`` (``lazyfs``'s own, program name first) in a service if one takes it.

    Returns the command's exit status, or None if the caller should run it itself (no
    service, or it declined before starting anything).
    """
    if command not in COMMANDS:
        return None
    path = service_socket()
    if path is None:
        return None
    try:
        request = encode_request(argv, dict(os.environ), os.getcwd(), _umask())
    except (OSError, ValueError):  # a deleted working directory, a huge environment
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    stdio, opened = _stdio()
    try:
        try:
            sock.connect(path)
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in stdio)
            sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        except OSError:
            return None  # nobody there, or it went away: nothing started
        finally:
            for fd in opened:
                os.close(fd)
        return _wait(sock)
    finally:
        sock.close()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stdio() -> tuple[list[int], list[int]]:
    """Descriptors 0, 1 and 2 to hand over (``/dev/null`` for a closed one), and those
    opened here for that."""
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            opened.append(null)
            fds.append(null)
    return fds, opened


def _wait(sock: _socket.socket) -> int | None:
    """The command's status once the service sends it, signals forwarded to the worker
    meanwhile; None if the service declines (then the signals that came are raised here)."""
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        try:
            # Sent after the request: the service reads it once the worker exists.
            sock.send(b"signal %d" % signum)
        except OSError:
            pass  # the service is gone: the recv below sees it

    previous = {signum: _signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    try:
        answer = sock.recv(MAX_MESSAGE)  # retried after a handler runs (PEP 475)
    except OSError:
        answer = b""
    if answer != b"accepted":  # b"local REASON", or no answer: nothing started
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
        for signum in received:  # what this process would have got running it itself
            _signal.raise_signal(signum)
        return None
    while True:
        try:
            data = sock.recv(MAX_MESSAGE)
        except OSError as exc:
            data, error = b"", exc
        else:
            error = None
        if not data:
            why = f": {error.strerror}" if error is not None else ""
            print(
                f"lazyfs: error: the lazyfs service ended before the command did{why}",
                file=sys.stderr,
            )
            return 125
        word, _, value = data.partition(b" ")
        if word == b"exit" and value.isdigit():
            return int(value)
