"""The ``lazyfs`` command.

Each sub-command parses its options, builds the library objects it needs and prints; the
work is done by the library. Errors lazyfs expects (bad references, registry and auth
failures, digest mismatches) end with one line on stderr and exit status 1, never a
traceback; ``--debug`` shows the traceback and the HTTP exchanges.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__
from .errors import LazyfsError
from .oci.credentials import Credentials, CredentialStore
from .oci.hosts import HostPolicy
from .oci.platform import Platform
from .oci.reference import Reference
from .oci.registry import RegistryClient

__all__ = ["main"]

log = logging.getLogger("lazyfs")


def _platform(text: str) -> Platform:
    try:
        return Platform.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _reference(text: str) -> Reference:
    try:
        return Reference.parse(text)
    except LazyfsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _credentials(text: str) -> Credentials:
    try:
        return Credentials.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_registry_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that talks to a registry takes."""
    g = parser.add_argument_group("registry")
    g.add_argument(
        "--platform",
        type=_platform,
        help="os/arch[/variant] to pick from an index (default: this host)",
    )
    g.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST",
        help="allow plain HTTP and unverified TLS for HOST (repeatable; loopback always is)",
    )
    g.add_argument(
        "--ca-cert",
        action="append",
        default=[],
        type=Path,
        metavar="PEM",
        help="extra CA bundle to trust",
    )
    g.add_argument(
        "--creds",
        type=_credentials,
        metavar="USER:PASS",
        help="credentials for the image's registry",
    )
    g.add_argument(
        "--docker-config",
        type=Path,
        metavar="FILE",
        help="docker config.json to read credentials from (default: $DOCKER_CONFIG/config.json, "
        "else ~/.docker/config.json)",
    )


def make_client(args: argparse.Namespace) -> RegistryClient:
    """A registry client configured from the registry options."""
    credentials = CredentialStore(config_path=args.docker_config, default=args.creds)
    hosts = HostPolicy(insecure_hosts=args.insecure_registry, ca_files=args.ca_cert)
    return RegistryClient(credentials=credentials, hosts=hosts)


async def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_image, render_text

    async with make_client(args) as client:
        report = await inspect_image(client, args.ref, args.platform)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyfs",
        description="Mount OCI images straight from a registry; run containers without pulling.",
    )
    parser.add_argument("--version", action="version", version=f"lazyfs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what is happening")
    parser.add_argument(
        "--debug", action="store_true", help="log HTTP exchanges and show tracebacks"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("inspect", help="show what an image reference resolves to")
    p.add_argument(
        "ref", type=_reference, metavar="REF", help="image reference, e.g. localhost:5000/app:1.0"
    )
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    add_registry_options(p)
    p.set_defaults(func=cmd_inspect)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="lazyfs: %(message)s", stream=sys.stderr)
    if not args.debug:
        # httpx logs every request at INFO; ours are enough.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return trio.run(args.func, args)
    except LazyfsError as exc:
        if args.debug:
            raise
        print(f"lazyfs: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into a reader that went away (e.g. `| head`).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
