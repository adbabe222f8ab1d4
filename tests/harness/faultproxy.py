"""A scriptable HTTP reverse proxy that injects faults between a client and a registry.

:class:`FaultProxy` listens on ``127.0.0.1:<free port>`` (plain HTTP) and
forwards every request to one upstream (HTTP, or HTTPS verified against a CA
file): method, path, query, headers (``Authorization`` and ``Range``
included) and bodies (``Content-Length`` or chunked; chunked bodies are
re-sent with a length). Responses come back unchanged except that hop-by-hop
headers are dropped and an absolute ``Location`` pointing at the upstream is
rewritten to point at the proxy, so clients stay behind it.
``WWW-Authenticate`` passes through untouched (a token realm elsewhere is
still reached directly).

Faults are scripted per request::

    proxy.add_fault(None, Respond(503), method="GET", path_contains="/blobs/", times=1)
    proxy.add_fault(lambda r: r.range is not None, Truncate(100))

Each incoming request is matched against the pending faults in the order they
were added; the first whose predicate (and the action's own condition, see
:meth:`Action.applies`) holds is used and its ``times`` count decreases. A
fault with ``times=None`` never expires. Requests no fault claims are
forwarded unchanged.

Every request is recorded (:class:`RequestRecord`) in a thread-safe log:
:attr:`FaultProxy.requests`, :meth:`FaultProxy.count`, :meth:`FaultProxy.clear`.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from tests.harness.process import ThreadedServer

__all__ = [
    "LOOP_MARKER",
    "Action",
    "Fault",
    "FaultProxy",
    "FlipBits",
    "RateLimit",
    "Redirect",
    "RedirectLoop",
    "RedirectToUpstream",
    "RejectMultiRange",
    "RequestRecord",
    "Reset",
    "Respond",
    "Stall",
    "StripRange",
    "Truncate",
]

#: Query parameter the proxy adds to self-redirects (:class:`RedirectLoop`);
#: it is removed before a request is forwarded upstream.
LOOP_MARKER = "faultproxy-hop"

#: Request headers not copied upstream: those that describe one connection
#: (RFC 9110 section 7.6.1), ``Host`` (set to the upstream's), ``Expect`` (the
#: proxy answers ``100-continue`` itself) and ``Content-Length`` (set by the proxy).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",
        "content-length",
    }
)

_CHUNK = 64 * 1024
_UPSTREAM_TIMEOUT = 60.0
_CONNECTION_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError)


# ---------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One request seen by the proxy.

    Attributes:
        method: HTTP method.
        path: Path without the query string.
        query: Raw query string (may be empty); includes :data:`LOOP_MARKER` if present.
        headers: Request headers, names lower-cased (last value wins).
        range: The ``Range`` header or ``None``.
        started_at: ``time.monotonic()`` when the request was received.
        status: Status sent to the client; ``None`` if none was (reset) or not yet.
        bytes_sent: Body bytes written to the client.
        fault: ``repr`` of the action applied, or ``None`` if forwarded untouched.
        upstream_status: Status the upstream answered, if it was asked.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    range: str | None
    started_at: float = field(default_factory=time.monotonic)
    status: int | None = None
    bytes_sent: int = 0
    fault: str | None = None
    upstream_status: int | None = None

    @property
    def target(self) -> str:
        """Path plus ``?query`` if there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path


class _ClientGone(ConnectionResetError):
    """The client disconnected while the proxy was reading its request body."""


#: A predicate selecting requests for a fault.
Matcher = Callable[[RequestRecord], bool]


# ---------------------------------------------------------------------------- actions


class Action:
    """Base class of fault actions.

    Subclasses implement :meth:`perform`, using the handler's helpers
    (``forward(record, strip_range=, truncate_after=, flip=)``,
    ``respond(record, status, body, headers)``, ``reset()``, ``drain_body()``,
    ``sleep(seconds)``), and may narrow :meth:`applies`.
    """

    def applies(self, record: RequestRecord) -> bool:
        """Whether this action has anything to do for ``record``.

        A fault whose action does not apply is skipped and not consumed.
        """
        return True

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        """Produce the (faulty) response for ``record``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Respond(Action):
    """Answer ``status`` with ``body`` and ``headers`` without asking the upstream."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        handler.respond(record, self.status, self.body, self.headers)


@dataclass(frozen=True)
class RateLimit(Action):
    """Answer ``429 Too Many Requests`` with a ``Retry-After`` header."""

    retry_after: str = "1"
    body: bytes = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        headers = {"Retry-After": self.retry_after, "Content-Type": "application/json"}
        handler.respond(record, 429, self.body, headers)


@dataclass(frozen=True)
class Reset(Action):
    """Reset the TCP connection (RST) instead of answering.

    With ``after_upstream=True`` the request is first sent to the upstream
    (so it takes effect there) and only the response is lost.
    """

    after_upstream: bool = False

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        if self.after_upstream:
            handler.forward(record, discard_response=True)
        handler.reset()


@dataclass(frozen=True)
class Truncate(Action):
    """Forward, send the headers (full ``Content-Length``) and ``after`` body bytes, then close."""

    after: int

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.forward(record, truncate_after=self.after)


@dataclass(frozen=True)
class FlipBits(Action):
    """Forward, XOR-ing the response body byte at ``offset`` with ``mask``.

    Offsets past the end of the body leave it intact.
    """

    offset: int = 0
    mask: int = 0x01

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.forward(record, flip=(self.offset, self.mask))


@dataclass(frozen=True)
class Stall(Action):
    """Wait ``seconds``, then forward normally.

    If the proxy is stopped meanwhile, the connection is dropped instead.
    """

    seconds: float

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        if handler.sleep(self.seconds):
            handler.forward(record)
        else:
            handler.reset()


@dataclass(frozen=True)
class Redirect(Action):
    """Answer ``status`` (e.g. 302 or 307) with ``Location: location``."""

    location: str
    status: int = 307

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        handler.respond(record, self.status, b"", {"Location": self.location})


@dataclass(frozen=True)
class RedirectToUpstream(Action):
    """Redirect to the same path and query on the upstream itself.

    Emulates registries that send blob downloads to a storage backend; the
    client leaves the proxy for that request.
    """

    status: int = 307

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        location = handler.proxy.upstream_url + handler.upstream_target(record)
        handler.respond(record, self.status, b"", {"Location": location})


@dataclass(frozen=True)
class RedirectLoop(Action):
    """Redirect to the same path on the proxy, counting hops in :data:`LOOP_MARKER`.

    With ``times=None`` (or large) every hop matches again and the client
    loops until its redirect limit.
    """

    status: int = 302

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        params = urllib.parse.parse_qsl(record.query, keep_blank_values=True)
        hops = next((int(v) for k, v in params if k == LOOP_MARKER and v.isdigit()), 0)
        params = [(k, v) for k, v in params if k != LOOP_MARKER] + [(LOOP_MARKER, str(hops + 1))]
        location = f"{handler.proxy.url}{record.path}?{urllib.parse.urlencode(params)}"
        handler.respond(record, self.status, b"", {"Location": location})


@dataclass(frozen=True)
class StripRange(Action):
    """Forward without the ``Range`` header, so the upstream sends the whole body (200).

    Applies only to requests that carry a ``Range`` header.
    """

    def applies(self, record: RequestRecord) -> bool:
        return record.range is not None

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.forward(record, strip_range=True)


@dataclass(frozen=True)
class RejectMultiRange(Action):
    """Answer ``status`` (400) to requests whose ``Range`` asks for more than one range.

    Applies only to such requests; others are left to later faults or forwarded.
    """

    status: int = 400

    def applies(self, record: RequestRecord) -> bool:
        return record.range is not None and "," in record.range

    def perform(self, handler: _ProxyHandler, record: RequestRecord) -> None:
        handler.drain_body()
        body = b'{"errors":[{"code":"RANGE_INVALID","message":"multiple ranges unsupported"}]}'
        handler.respond(record, self.status, body, {"Content-Type": "application/json"})


# ---------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """A scripted fault: ``action`` for requests matching ``match``, ``times`` times.

    Attributes:
        match: Predicate on the :class:`RequestRecord`.
        action: What to do.
        remaining: How many more requests it applies to (``None``: unlimited).
        hits: How many requests it has been applied to.
    """

    match: Matcher
    action: Action
    remaining: int | None
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether the fault has been used up."""
        return self.remaining is not None and self.remaining <= 0


def _matcher(match: Matcher | None, method: str | None, path_contains: str | None) -> Matcher:
    def predicate(record: RequestRecord) -> bool:
        if method is not None and record.method != method.upper():
            return False
        if path_contains is not None and path_contains not in record.path:
            return False
        return match is None or bool(match(record))

    return predicate


# ---------------------------------------------------------------------------- proxy


class FaultProxy(ThreadedServer):
    """Reverse proxy on ``127.0.0.1`` in front of ``upstream_url`` with scriptable faults.

    :meth:`start`, ``port``, ``host``, ``url`` and use as a context manager come from
    :class:`~tests.harness.process.ThreadedServer`.

    Args:
        upstream_url: ``http://host:port`` or ``https://host:port`` of the upstream.
        ca_file: CA to verify an HTTPS upstream with (default: system trust).

    Attributes:
        upstream_url: The upstream base URL, without trailing slash.
        url: ``http://127.0.0.1:PORT`` (after :meth:`start`).
        host: ``127.0.0.1:PORT``.
        port: The listening port.
    """

    name = "fault-proxy"

    def __init__(self, upstream_url: str, *, ca_file: Path | str | None = None) -> None:
        super().__init__()
        parsed = urllib.parse.urlsplit(upstream_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"unsupported upstream URL {upstream_url!r}")
        self.upstream_url = f"{parsed.scheme}://{parsed.netloc}"
        self._upstream_netloc = parsed.netloc
        self._upstream_host = parsed.hostname
        self._upstream_port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._ssl_context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._ssl_context = ssl.create_default_context(
                cafile=str(ca_file) if ca_file is not None else None
            )
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def _make_server(self, address: tuple[str, int]) -> _ProxyServer:
        self._stopping.clear()  # set by the previous stop(), if any
        return _ProxyServer(address, _ProxyHandler, self)

    def stop(self) -> None:
        """Stop serving, cut open client connections, interrupt stalls. Idempotent."""
        self._stopping.set()
        super().stop()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ faults

    def add_fault(
        self,
        match: Matcher | None,
        action: Action,
        *,
        times: int | None = 1,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> Fault:
        """Apply ``action`` to the next ``times`` requests that match.

        Args:
            match: Predicate on the :class:`RequestRecord`, or ``None`` for any request.
            action: The fault to inject (:class:`Respond`, :class:`Reset`, ...).
            times: Number of requests to affect; ``None`` for every matching request.
            method: Only requests with this method (combined with ``match``).
            path_contains: Only requests whose path contains this string.

        Returns:
            The :class:`Fault`, whose ``hits`` and ``remaining`` can be inspected.
        """
        if times is not None and times < 1:
            raise ValueError("times must be positive or None")
        fault = Fault(_matcher(match, method, path_contains), action, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove all pending faults."""
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Snapshot of the pending (not exhausted) faults."""
        with self._lock:
            return list(self._faults)

    def _claim_fault(self, record: RequestRecord) -> Action | None:
        with self._lock:
            for fault in self._faults:
                if fault.match(record) and fault.action.applies(record):
                    fault.hits += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault.action
        return None

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def count(
        self,
        match: Matcher | None = None,
        *,
        method: str | None = None,
        path_contains: str | None = None,
        status: int | None = None,
    ) -> int:
        """Number of logged requests matching all the given criteria."""
        predicate = _matcher(match, method, path_contains)
        with self._lock:
            return sum(
                1
                for record in self._log
                if predicate(record) and (status is None or record.status == status)
            )

    def clear(self) -> None:
        """Empty the request log (faults are kept; see :meth:`clear_faults`)."""
        with self._lock:
            self._log.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _track(self, conn: socket.socket, active: bool) -> None:
        with self._lock:
            if active:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------------------ upstream

    def _connect_upstream(self) -> http.client.HTTPConnection:
        if self._ssl_context is not None:
            return http.client.HTTPSConnection(
                self._upstream_host,
                self._upstream_port,
                timeout=_UPSTREAM_TIMEOUT,
                context=self._ssl_context,
            )
        return http.client.HTTPConnection(
            self._upstream_host, self._upstream_port, timeout=_UPSTREAM_TIMEOUT
        )

    def _rewrite_location(self, location: str) -> str:
        if location.startswith(self.upstream_url):
            rest = location[len(self.upstream_url) :]
            if rest == "" or rest[0] in "/?#":
                return self.url + rest
        return location


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up are routine here; anything else is a harness bug.
        exc = sys.exc_info()[1]
        if isinstance(exc, _CONNECTION_ERRORS):
            return
        if isinstance(exc, OSError) and self.proxy._stopping.is_set():
            return
        super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    """Handles the requests of one client connection (keep-alive aware)."""

    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 120
    server: _ProxyServer

    # -------------------------------------------------------------- plumbing

    @property
    def proxy(self) -> FaultProxy:
        return self.server.proxy

    def setup(self) -> None:
        super().setup()
        self._reset_requested = False
        self._body_pending = False
        self.proxy._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # flushing to a client that is gone
        finally:
            self.proxy._track(self.connection, False)
            if self._reset_requested:
                # Linger 0 makes close() send RST instead of FIN.
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        record = RequestRecord(
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            range=headers.get("range"),
        )
        self._body_pending = bool(
            int(self.headers.get("Content-Length") or 0) or self._chunked_request()
        )
        self.proxy._record(record)
        action = self.proxy._claim_fault(record)
        try:
            if action is None:
                self.forward(record)
            else:
                record.fault = repr(action)
                action.perform(self, record)
        except (*_CONNECTION_ERRORS, http.client.HTTPException):
            # The client went away, or the upstream did mid-body: drop the connection.
            self.close_connection = True
        if self._body_pending:
            # Unread request body would be parsed as the next request.
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle

    # -------------------------------------------------------------- request body

    def _chunked_request(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body as it arrives (Content-Length or chunked)."""
        if self._chunked_request():
            yield from self._iter_chunked()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(_CHUNK, remaining))
                if not data:
                    raise ConnectionResetError("client closed during request body")
                remaining -= len(data)
                yield data
        self._body_pending = False

    def _iter_chunked(self) -> Iterator[bytes]:
        rfile: BinaryIO = self.rfile
        while True:
            size_line = rfile.readline(1024)
            if not size_line:
                raise ConnectionResetError("client closed during chunked body")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Skip trailers up to the blank line.
                while rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                return
            data = rfile.read(size)
            if len(data) != size:
                raise ConnectionResetError("client closed during chunked body")
            rfile.readline(2)
            yield data

    def drain_body(self) -> None:
        """Read and discard the request body so the connection can be reused."""
        for _ in self._iter_body():
            pass

    # -------------------------------------------------------------- responses

    def respond(
        self,
        record: RequestRecord,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Send a complete response generated by the proxy."""
        self.send_response_only(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        record.status = status  # before the headers go out: the client may look right after
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            record.bytes_sent += len(body)

    def reset(self) -> None:
        """Abort the connection with a TCP reset once the handler returns."""
        self._reset_requested = True
        self.close_connection = True

    def sleep(self, seconds: float) -> bool:
        """Sleep; return early with ``False`` if the proxy is stopping, else ``True``."""
        return not self.proxy._stopping.wait(seconds)

    def upstream_target(self, record: RequestRecord) -> str:
        """Path and query to request upstream (the loop marker removed)."""
        query = record.query
        if LOOP_MARKER in query:
            params = urllib.parse.parse_qsl(query, keep_blank_values=True)
            query = urllib.parse.urlencode([(k, v) for k, v in params if k != LOOP_MARKER])
        return f"{record.path}?{query}" if query else record.path

    def forward(
        self,
        record: RequestRecord,
        *,
        strip_range: bool = False,
        truncate_after: int | None = None,
        flip: tuple[int, int] | None = None,
        discard_response: bool = False,
    ) -> None:
        """Send the request upstream and relay the response.

        Args:
            record: The request.
            strip_range: Do not forward the ``Range`` header.
            truncate_after: Send only this many body bytes, then close the connection.
            flip: ``(offset, mask)``: XOR the body byte at ``offset`` with ``mask``.
            discard_response: Read the upstream response but send nothing.
        """
        proxy = self.proxy
        skip = _HOP_BY_HOP | ({"range"} if strip_range else set())
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in skip]
        body: Iterator[bytes]
        if self._chunked_request():
            # Re-send a chunked body with a length: buffer it first.
            buffered = b"".join(self._iter_body())
            length, body = len(buffered), iter([buffered])
        else:
            length, body = int(self.headers.get("Content-Length") or 0), self._iter_body()

        upstream = proxy._connect_upstream()
        try:
            try:
                self._send_upstream(upstream, record, headers, length, body)
                response = upstream.getresponse()
            except _ClientGone:
                raise
            except (OSError, http.client.HTTPException) as exc:
                if not discard_response:
                    message = f"faultproxy: upstream failed: {exc!r}".encode()
                    self.respond(record, 502, message, {"Content-Type": "text/plain"})
                return
            record.upstream_status = response.status
            if discard_response:
                response.read()
                return
            self._relay(record, response, truncate_after, flip)
        finally:
            upstream.close()

    def _send_upstream(
        self,
        upstream: http.client.HTTPConnection,
        record: RequestRecord,
        headers: list[tuple[str, str]],
        length: int,
        body: Iterator[bytes],
    ) -> None:
        """Send the request line, headers and body to the upstream.

        Failing to connect or to send the headers raises ``OSError``. A
        failure while sending the body is swallowed: the upstream may have
        answered early (e.g. 401 before reading an upload), and if not,
        ``getresponse()`` reports the failure. Failures reading the client's
        body raise :class:`_ClientGone`.
        """
        upstream.putrequest(
            self.command, self.upstream_target(record), skip_host=True, skip_accept_encoding=True
        )
        upstream.putheader("Host", self.proxy._upstream_netloc)
        for name, value in headers:
            upstream.putheader(name, value)
        if length or self.command in ("POST", "PUT", "PATCH"):
            upstream.putheader("Content-Length", str(length))
        upstream.endheaders()
        while True:
            try:
                piece = next(body, None)
            except OSError as exc:
                raise _ClientGone(str(exc)) from exc
            if piece is None:
                return
            try:
                upstream.send(piece)
            except OSError:
                return

    def _relay(
        self,
        record: RequestRecord,
        response: http.client.HTTPResponse,
        truncate_after: int | None,
        flip: tuple[int, int] | None,
    ) -> None:
        proxy = self.proxy
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        length_header = response.getheader("Content-Length")
        buffered: bytes | None = None
        if has_body and length_header is None:
            # Upstream used chunked encoding or close-delimiting: send a length instead.
            buffered = response.read()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP and lower != "content-length":
                continue
            if lower == "location":
                value = proxy._rewrite_location(value)
            self.send_header(name, value)
        if buffered is not None:
            self.send_header("Content-Length", str(len(buffered)))
        record.status = response.status  # before the headers go out (see respond)
        self.end_headers()
        if not has_body:
            return

        position = 0
        chunks: Iterator[bytes] = (
            iter([buffered]) if buffered is not None else iter(lambda: response.read(_CHUNK), b"")
        )
        for chunk in chunks:
            if flip is not None and position <= flip[0] < position + len(chunk):
                data = bytearray(chunk)
                data[flip[0] - position] ^= flip[1]
                chunk = bytes(data)
            if truncate_after is not None and position + len(chunk) >= truncate_after:
                chunk = chunk[: truncate_after - position]
                self._write(record, chunk)
                self.wfile.flush()
                self.close_connection = True
                return
            self._write(record, chunk)
            position += len(chunk)

    def _write(self, record: RequestRecord, data: bytes) -> None:
        if data:
            self.wfile.write(data)
            record.bytes_sent += len(data)
