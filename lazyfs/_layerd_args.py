"""``lazyfs layerd``'s command-line options, apart from the daemon so that building the
``lazyfs`` parser does not import the daemon (FUSE, the fetcher) for every command."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser"]


async def _cmd_layerd(args: argparse.Namespace) -> int:
    from .layerd import cmd_layerd

    return await cmd_layerd(args)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lazyfs layerd`` to the ``lazyfs`` command's sub-commands."""
    from .cli import add_mount_options, add_registry_options

    p = sub.add_parser(
        "layerd",
        help="serve image layers as overlayfs lower directories (the snapshotter starts it)",
        description="Serve lazily fetched image layers at ROOT/layers/<digest hex>/, each in the "
        "form overlayfs expects of a lower directory. Layers are added over the control socket "
        "(lazyfs.snapshotter.layers.LayerServer). The cache defaults to ROOT/cache.",
    )
    p.add_argument(
        "--root", type=Path, required=True, metavar="ROOT", help="state directory (mount, cache)"
    )
    p.add_argument(
        "--stream-plain",
        action="store_true",
        help="also serve layers without an index, from a copy streamed once into the cache "
        "(default: refuse them, so the snapshotter unpacks them the ordinary way)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a read that takes longer fails with EIO (60)",
    )
    p.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    add_registry_options(p)
    add_mount_options(p)
    p.set_defaults(func=_cmd_layerd)
    return p
