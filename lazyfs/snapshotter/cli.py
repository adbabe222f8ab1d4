"""The ``lazyfs snapshotter`` sub-command.

``lazyfs/cli.py`` registers it with :func:`add_parser`; ``python -m lazyfs.snapshotter.cli
snapshotter ...`` runs it without the main command (:func:`main`).

The command starts (or finds running) the layer server at ``ROOT/layers`` unless
``--no-remote`` is given, then serves containerd's snapshot API until SIGTERM or SIGINT.
Stopping it leaves the layer server, and so the FUSE mounts of running containers, alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import LazyfsError

__all__ = ["add_parser", "cmd_snapshotter", "main", "run_snapshotter"]

DEFAULT_ADDRESS = Path("/run/lazyfs/snapshotter.sock")
DEFAULT_ROOT = Path("/var/lib/lazyfs")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``snapshotter`` sub-command to ``sub`` (the main parser's sub-parsers)."""
    p = sub.add_parser(
        "snapshotter",
        help="serve containerd's snapshot API (a proxy snapshotter with lazily pulled layers)",
    )
    p.add_argument(
        "--address",
        type=Path,
        default=DEFAULT_ADDRESS,
        metavar="SOCK",
        help=f"unix socket to listen on (default {DEFAULT_ADDRESS})",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        metavar="DIR",
        help=f"state directory: metadata, snapshots, the layer mount (default {DEFAULT_ROOT})",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="chunk cache of the layer server (default ROOT/cache)",
    )
    p.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )
    p.add_argument(
        "--no-remote",
        action="store_true",
        help="no lazily pulled layers: containerd downloads and unpacks every layer",
    )
    p.add_argument(
        "--layerd-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the layer server (repeatable), e.g. "
        "--layerd-arg=--insecure-registry=HOST",
    )
    p.set_defaults(func=cmd_snapshotter, root_needed="lazyfs snapshotter")
    return p


def run_snapshotter(args: argparse.Namespace) -> int:
    """Serve until signalled (blocking; the main thread must call it)."""
    from .server import SnapshotterServer, setup_logging  # grpc: only when serving

    setup_logging(logging.DEBUG if getattr(args, "debug", False) else logging.INFO)
    root = args.root.absolute()
    layers = None
    if not args.no_remote:
        from .layers import LayerServer

        layers = LayerServer(
            root, cache_dir=args.cache_dir or root / "cache", extra_args=list(args.layerd_arg)
        )
        layers.ensure_running()
    server = SnapshotterServer(
        root, args.address, layers=layers, metrics_address=args.metrics_address
    )
    server.serve_until_signalled()
    return 0


async def cmd_snapshotter(args: argparse.Namespace) -> int:
    """The sub-command's entry for ``lazyfs/cli.py``, which runs commands under trio.

    The gRPC server is synchronous and blocks the (otherwise idle) trio loop; its own
    SIGTERM/SIGINT handlers replace trio's while it runs.
    """
    return run_snapshotter(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lazyfs.snapshotter.cli snapshotter [OPTIONS]``."""
    parser = argparse.ArgumentParser(prog="lazyfs")
    parser.add_argument("--debug", action="store_true", help="log at debug level")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return run_snapshotter(args)
    except LazyfsError as exc:
        print(f"lazyfs: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
