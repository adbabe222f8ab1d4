"""The snapshotter daemon: the gRPC server on a unix socket, its restore step, logs, metrics.

:class:`SnapshotterServer` opens the metadata under the root, asks the layer server (if
any) to serve every committed remote layer again (:meth:`Snapshotter.restore`), removes
directories a crash left behind, and only then binds the socket, so containerd never sees
a snapshotter whose remote snapshots are not mounted. The gRPC server is grpcio's
synchronous one with a small thread pool; the snapshot rules are serialised by the
metadata store's transactions.

The layer server runs in a process of its own, started detached by
:class:`~lazyfs.snapshotter.layers.LayerServer` and never stopped here: restarting (or
killing) the snapshotter leaves the FUSE mounts under running containers alone.

Logs are one line per event, ``time=... level=... event=... key=value ...`` (values with
spaces quoted), on stderr. With ``metrics_address`` an HTTP server in a thread answers
``GET /metrics`` in Prometheus's text format (:func:`render_metrics`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc

from ..errors import LazyfsError
from .metadata import Kind, MetadataStore
from .proto import snapshots_pb2_grpc
from .service import LayerService, RequestStats, SnapshotsServicer, Snapshotter, log_event

__all__ = [
    "KeyValueFormatter",
    "SnapshotterServer",
    "parse_metrics_address",
    "render_metrics",
    "setup_logging",
]

log = logging.getLogger("lazyfs.snapshotter")

_MAX_SOCKET_PATH = 107


# ---------------------------------------------------------------------------- logs


def _kv(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """Formats a record as ``time=ISO level=... event=MESSAGE k=v ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"time={when}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"event={_kv(record.getMessage())}",
        ]
        fields: Mapping[str, Any] = getattr(record, "fields", {}) or {}
        parts += [f"{k}={_kv(v)}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f"traceback={_kv(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the snapshotter's (and lazyfs's) logs to stderr as key=value lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("lazyfs")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# ---------------------------------------------------------------------------- metrics


def _metric_lines(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return lines


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _number(stats: Mapping[str, Any], *path: str) -> float | None:
    """``stats[path[0]][path[1]]...`` if it is a number, else ``None``."""
    value: Any = stats
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


#: What is exported of the layer server's ``stats()``: (path, metric, type, help).
_LAYER_STATS = (
    (
        ("registry", "bytes_received"),
        "lazyfs_fetched_bytes_total",
        "counter",
        "Bytes received from registries (layer indexes and contents).",
    ),
    (("registry", "requests"), "lazyfs_registry_requests_total", "counter", "HTTP requests."),
    (("registry", "retries"), "lazyfs_registry_retries_total", "counter", "HTTP retries."),
    (("total", "requests"), "lazyfs_fetch_requests_total", "counter", "Chunk fetch requests."),
    (("total", "errors"), "lazyfs_fetch_errors_total", "counter", "Chunk fetches that failed."),
    (
        ("total", "fuse_errors"),
        "lazyfs_fuse_errors_total",
        "counter",
        "FUSE operations answered with an error.",
    ),
    (("layer_count",), "lazyfs_layers", "gauge", "Layers the layer server serves."),
)


def render_metrics(
    stats: RequestStats, counts: Mapping[Kind, int], layer_stats: Mapping[str, Any] | None
) -> str:
    """The Prometheus text exposition of the snapshotter's and the layer server's numbers."""
    requests, seconds = stats.snapshot()
    lines = _metric_lines(
        "lazyfs_snapshotter_grpc_requests_total",
        "counter",
        "gRPC requests by method and status code.",
        [(_labels(method=m, code=c), n) for (m, c), n in sorted(requests.items())],
    )
    lines += _metric_lines(
        "lazyfs_snapshotter_grpc_errors_total",
        "counter",
        "gRPC requests that ended with a status other than OK.",
        [
            (_labels(method=m, code=c), n)
            for (m, c), n in sorted(requests.items())
            if c not in ("OK", "ALREADY_EXISTS")
        ],
    )
    lines += _metric_lines(
        "lazyfs_snapshotter_grpc_request_seconds_total",
        "counter",
        "Seconds spent answering gRPC requests, by method.",
        [(_labels(method=m), s) for m, s in sorted(seconds.items())],
    )
    lines += _metric_lines(
        "lazyfs_snapshotter_snapshots",
        "gauge",
        "Snapshots by kind.",
        [(_labels(kind=k.name.lower()), n) for k, n in sorted(counts.items())],
    )
    if layer_stats is not None:
        lines += _metric_lines(
            "lazyfs_layer_server_up", "gauge", "1 if the layer server answered.", [("", 1)]
        )
        for path, name, kind, help_text in _LAYER_STATS:
            value = _number(layer_stats, *path)
            if value is not None:
                lines += _metric_lines(name, kind, help_text, [("", value)])
        cache = ("fetch", "cache")
        hits = [_number(layer_stats, *cache, k) for k in ("memory_hits", "disk_hits")]
        misses = _number(layer_stats, *cache, "misses")
        if None not in hits and misses is not None:
            lines += _metric_lines(
                "lazyfs_cache_hits_total",
                "counter",
                "Chunk reads served from the cache.",
                [("", sum(hits))],
            )
            lines += _metric_lines(
                "lazyfs_cache_misses_total",
                "counter",
                "Chunk reads that needed a fetch.",
                [("", misses)],
            )
            if sum(hits) + misses:
                lines += _metric_lines(
                    "lazyfs_cache_hit_ratio",
                    "gauge",
                    "Share of chunk reads served from the cache.",
                    [("", sum(hits) / (sum(hits) + misses))],
                )
        latency = _number(layer_stats, "total", "fetch_seconds")
        if latency is not None:
            lines += _metric_lines(
                "lazyfs_fetch_seconds_total",
                "counter",
                "Seconds spent fetching chunks.",
                [("", latency)],
            )
    return "\n".join(lines) + "\n"


def parse_metrics_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise LazyfsError(f"metrics address {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


class _MetricsHandler(BaseHTTPRequestHandler):
    render: Callable[[], str]

    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = self.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---------------------------------------------------------------------------- the server


class SnapshotterServer:
    """The snapshotter serving ``Snapshots`` on the unix socket ``address``.

    Args:
        root: State directory (``metadata.db``, ``snapshots/``; the layer server's
            ``layers/`` mount when there is one).
        address: Path of the unix socket to listen on (replaced if it exists).
        layers: The layer server client, already running, or ``None`` for no remote
            snapshots.
        metrics_address: ``HOST:PORT`` for the Prometheus endpoint, or ``None``.
        workers: Size of the gRPC thread pool.
    """

    def __init__(
        self,
        root: Path,
        address: Path,
        *,
        layers: LayerService | None = None,
        metrics_address: str | None = None,
        workers: int = 4,
    ) -> None:
        self.root = Path(root).absolute()
        self.address = Path(address).absolute()
        if len(str(self.address)) > _MAX_SOCKET_PATH:
            raise LazyfsError(f"socket path {self.address} is longer than {_MAX_SOCKET_PATH}")
        self.layers = layers
        self.metrics_address = metrics_address
        self.workers = workers
        self.stats = RequestStats()
        self.store: MetadataStore | None = None
        self.snapshotter: Snapshotter | None = None
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self.metrics_port: int | None = None

    def start(self) -> None:
        """Open the state, restore remote layers, clean up, then listen."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = MetadataStore(self.root / "metadata.db")
        self.snapshotter = Snapshotter(self.root, self.store, self.layers)
        self.snapshotter.restore()
        self.snapshotter.cleanup()
        if self.metrics_address:
            self._start_metrics(self.metrics_address)
        self.address.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.address.unlink()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers))
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(
            SnapshotsServicer(self.snapshotter, self.stats), server
        )
        if server.add_insecure_port(f"unix:{self.address}") == 0:
            raise LazyfsError(f"cannot listen on {self.address}")
        server.start()
        os.chmod(self.address, 0o660)
        self._grpc = server
        log_event(
            logging.INFO,
            "serving",
            address=str(self.address),
            root=str(self.root),
            remote=self.layers is not None,
            metrics=f"{self._http.server_address[0]}:{self.metrics_port}" if self._http else "",
        )

    def _start_metrics(self, address: str) -> None:
        host, port = parse_metrics_address(address)
        handler = type("Handler", (_MetricsHandler,), {"render": staticmethod(self.metrics)})
        self._http = ThreadingHTTPServer((host, port), handler)
        self._http.daemon_threads = True
        self.metrics_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="metrics", daemon=True).start()

    def metrics(self) -> str:
        """The current Prometheus exposition."""
        layer_stats = None
        stats_of = getattr(self.layers, "stats", None)
        if stats_of is not None:
            try:
                layer_stats = stats_of()
            except Exception as exc:
                log_event(logging.WARNING, "layer-stats-failed", reason=str(exc))
        counts = self.store.counts() if self.store is not None else {}
        return render_metrics(self.stats, counts, layer_stats)

    def wait(self) -> None:
        """Block until the gRPC server stops."""
        if self._grpc is not None:
            self._grpc.wait_for_termination()

    def stop(self, grace: float = 5.0) -> None:
        """Stop listening (requests in flight get ``grace`` seconds) and close the state.

        The layer server keeps running. Idempotent.
        """
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
            with contextlib.suppress(FileNotFoundError):
                self.address.unlink()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.store is not None:
            self.store.close()
            self.store = None
        log_event(logging.INFO, "stopped")

    def __enter__(self) -> SnapshotterServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_signalled(self) -> None:
        """:meth:`start`, serve until SIGTERM or SIGINT, then :meth:`stop`. Main thread only."""
        stopping = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            log_event(logging.INFO, "signal", signal=signal.Signals(signum).name)
            stopping.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stopping.wait(3600):
                pass
        finally:
            self.stop()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
