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
import select
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__, _startup
from .errors import LazyfsError, unwrap_task_errors
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


def _image(text: str) -> str:
    """A registry reference or an ``oci:DIR[:TAG]`` layout, checked early."""
    if not text.startswith("oci:"):
        _reference(text)
    return text


def _size(text: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (examples: 4096, 512K, 1M)"
        ) from None


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
        "--hosts-dir",
        type=Path,
        default=Path("/etc/containerd/certs.d"),
        metavar="DIR",
        help="containerd-style HOST/hosts.toml files: mirrors tried before the registry, TLS "
        "per host (default /etc/containerd/certs.d; a missing directory means none)",
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
    return RegistryClient(credentials=credentials, hosts=hosts, hosts_dir=args.hosts_dir)


async def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect_image, render_text
    from .oci.store import open_store

    async with make_client(args) as client:
        store = open_store(args.ref, client)
        report = await inspect_image(store, args.platform, read_indexes=not args.no_index)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    return 0


async def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import ConvertOptions, convert_image
    from .formats.zstd_chunked_writer import DEFAULT_CHUNK_SIZE
    from .inspect import human_size
    from .oci.store import open_store
    from .progress import progress_for

    prioritize: list[str] = []
    if args.prioritize:
        try:
            lines = args.prioritize.read_text().splitlines()
        except OSError as exc:
            raise LazyfsError(f"cannot read {args.prioritize}: {exc.strerror}") from None
        prioritize = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    options = ConvertOptions(
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, level=args.level, prioritize=prioritize
    )
    async with make_client(args) as client:
        src = open_store(args.src, client)
        dst = open_store(args.dst, client, create=True)
        with progress_for() as progress:
            report = await convert_image(src, dst, options, progress)
    if args.json:
        layers = [vars(layer) for layer in report.layers]
        summary = {"digest": str(report.digest), "media_type": report.media_type}
        print(json.dumps({**summary, "uploads": report.uploads, "layers": layers}, indent=2))
        return 0
    for layer in report.layers:
        if layer.result == "converted":
            print(
                f"{layer.source[:19]} -> {layer.digest[:19]}  {human_size(layer.tar_bytes)} tar, "
                f"{human_size(layer.source_bytes)} -> {human_size(layer.blob_bytes)}"
            )
        else:
            print(f"{layer.source[:19]} kept")
    print(f"{args.dst} {report.digest}")
    return 0


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """Options of everything that mounts an image (mount, run, the snapshotter)."""
    g = parser.add_argument_group("mount")
    g.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="chunk and layer cache (default: $LAZYFS_CACHE_DIR, else /var/cache/lazyfs for root, "
        "else ~/.cache/lazyfs)",
    )
    g.add_argument(
        "--cache-size",
        type=_size,
        default=10 * 1024**3,
        metavar="SIZE",
        help="disk cache bound (10G)",
    )
    g.add_argument(
        "--memory-cache",
        type=_size,
        default=256 * 1024**2,
        metavar="SIZE",
        help="memory cache bound (256M)",
    )
    g.add_argument("--no-prefetch", action="store_true", help="fetch nothing before it is read")
    g.add_argument(
        "--prefetch-all",
        action="store_true",
        help="after the prioritised files, prefetch the rest too",
    )


def mount_options(args: argparse.Namespace):
    from .fs.image import MountOptions, default_cache_dir

    return MountOptions(
        platform=args.platform,
        cache_dir=args.cache_dir or default_cache_dir(),
        cache_bytes=args.cache_size,
        memory_cache_bytes=args.memory_cache,
        prefetch=not args.no_prefetch,
        prefetch_all=args.prefetch_all,
    )


async def cmd_mount(args: argparse.Namespace) -> int:
    from .control import serve_control
    from .fs.image import open_image
    from .fuse import mount_image
    from .oci.store import open_store

    mountpoint = args.mountpoint.resolve()
    if not mountpoint.is_dir():
        raise LazyfsError(f"mount point {args.mountpoint} is not a directory")
    ready_fd = args.ready_fd
    try:
        async with make_client(args) as client:
            image = await open_image(open_store(args.ref, client), mount_options(args))
            try:
                stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                with unwrap_task_errors(), trio.open_signal_receiver(*stop_signals) as signals:
                    async with trio.open_nursery() as nursery:
                        ready = trio.Event()
                        nursery.start_soon(
                            lambda: mount_image(
                                image, mountpoint, ready=ready, debug=args.debug_fuse
                            )
                        )
                        await ready.wait()
                        handlers = {"stats": image.stats, "unmount": lambda: _cancel(nursery)}
                        await nursery.start(serve_control, mountpoint, handlers)
                        log.info(
                            "%s mounted at %s in %.2fs",
                            args.ref,
                            mountpoint,
                            image.timings["total"],
                        )
                        if ready_fd is not None:
                            os.write(ready_fd, b"ok\n")
                            os.close(ready_fd)
                            ready_fd = None
                            _remember_startup(args)  # the daemon: it imported the rest
                        async for _ in signals:
                            nursery.cancel_scope.cancel()
                            break
            finally:
                image.close()
    except LazyfsError as exc:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}\n".encode())
        raise
    return 0


def _cancel(nursery: trio.Nursery) -> dict:
    nursery.cancel_scope.cancel()
    return {"unmounting": True}


def _daemonize(args: argparse.Namespace) -> int:
    """Serve ``args``' mounts from a detached child process; return once they are ready.

    The child is forked before trio starts (one thread: safe to fork), so it pays neither
    a second interpreter start nor the imports again. It runs the command in the
    foreground with ``ready_fd`` set, which reports ``ok`` or ``error: ...`` on a pipe;
    its output goes to ``CACHE/logs/mount.log``.
    """
    log_path = (args.cache_dir or mount_options(args).cache_dir) / "logs" / "mount.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(read_fd)
            os.setsid()
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(null)
            os.close(log_fd)
            args.daemon = False
            args.ready_fd = write_fd
            code = _run(args)
        finally:
            os._exit(code)
    os.close(write_fd)
    answer = b""
    deadline = time.monotonic() + 600
    while not answer.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([read_fd], [], [], 1.0)
        if ready:
            piece = os.read(read_fd, 4096)
            if not piece:
                break
            answer += piece
    os.close(read_fd)
    text = answer.decode(errors="replace").strip()
    if text == "ok":
        if args.command == "bundle":
            print(
                f"{args.directory}: bundle ready, rootfs mounted (daemon pid {pid}, log "
                f"{log_path}); stop it with: lazyfs umount {args.directory}/rootfs"
            )
        else:
            print(f"{args.mountpoint}: mounted (daemon pid {pid}, log {log_path})")
        return 0
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    message = text.removeprefix("error: ") or f"the mount daemon failed; see {log_path}"
    raise LazyfsError(message)


async def cmd_umount(args: argparse.Namespace) -> int:
    from .control import is_mountpoint, request
    from .runtime.bundle import BundlePaths, unmount_bundle

    mountpoint = os.path.abspath(args.mountpoint)
    # A bundle's rootfs is an overlay over the image's mount in DIR/.lazyfs/lower.
    bundle = BundlePaths.from_rootfs(Path(mountpoint))
    is_bundle = is_mountpoint(bundle.lower)

    def busy() -> bool:
        if is_bundle and (is_mountpoint(bundle.lower) or bundle.state.exists()):
            return True
        return is_mountpoint(mountpoint)

    try:
        await request(mountpoint, "unmount")
        with trio.move_on_after(10):
            while busy():
                await trio.sleep(0.05)
    except LazyfsError as exc:
        log.info("%s; unmounting with fusermount3", exc)
    if is_bundle and busy():
        # The bundle's daemon is gone (or stuck): detach the overlay and the image.
        unmount_bundle(bundle)
        if not is_mountpoint(bundle.lower) and not is_mountpoint(mountpoint):
            shutil.rmtree(bundle.state, ignore_errors=True)
    if is_mountpoint(mountpoint):
        # No daemon (it died: the mount answers ENOTCONN) or it did not finish in time.
        result = await trio.run_process(
            ["fusermount3", "-u", "-z", mountpoint], check=False, capture_stderr=True
        )
        if result.returncode != 0 and is_mountpoint(mountpoint):
            message = result.stderr.decode(errors="replace").strip()
            raise LazyfsError(f"cannot unmount {mountpoint}: {message}")
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    from .control import request

    stats = await request(args.mountpoint, "stats")
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    from .inspect import human_size

    fetch = stats.get("fetch", {})
    print(f"{stats['image']} ({stats['platform']}), {stats['inodes']} inodes")
    print("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in stats.get("timings", {}).items()))
    columns = ("fetched", "requests", "chunks", "memory hits", "disk hits", "errors", "prefetch")
    rows = [("layer", *columns)]
    for layer in [*fetch.get("layers", []), {**fetch.get("total", {}), "name": "total"}]:
        done, todo = layer.get("prefetch_done", 0), layer.get("prefetch_total", 0)
        rows.append(
            (
                layer.get("name", "?"),
                human_size(layer.get("bytes_fetched", 0)),
                str(layer.get("requests", 0)),
                str(layer.get("chunks_fetched", 0)),
                str(layer.get("memory_hits", 0)),
                str(layer.get("disk_hits", 0)),
                str(layer.get("errors", 0)),
                f"{done}/{todo}" if todo else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``docker run``'s options that say how the container runs (``run`` and ``bundle``)."""
    from .runtime.config import parse_cpus, parse_memory

    g = parser.add_argument_group("container")
    g.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (K alone: take it from here)",
    )
    g.add_argument(
        "--env-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="read K=V lines from FILE",
    )
    g.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the container")
    g.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="user (name or uid, names looked up in the image's /etc/passwd)",
    )
    g.add_argument("--entrypoint", metavar="CMD", help="override the image's Entrypoint")
    g.add_argument("--hostname", metavar="NAME", help="container host name")
    g.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="bind-mount a host path into the container",
    )
    g.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    g.add_argument(
        "--network",
        choices=("host", "none"),
        default="host",
        help="host: the host's network (default); none: only a loopback",
    )
    g.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    g.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    g.add_argument(
        "-m", "--memory", type=parse_memory, metavar="SIZE", help="memory limit (e.g. 512m)"
    )
    g.add_argument("--cpus", type=parse_cpus, metavar="N", help="CPU limit (e.g. 1.5)")
    g.add_argument("--pids-limit", type=int, metavar="N", help="process limit")
    g.add_argument(
        "--init",
        action="store_true",
        help="run a reaper as PID 1 that forwards signals to the command",
    )
    g.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="no-new-privileges[=true|false] (default true)",
    )


def run_options(args: argparse.Namespace):
    from .runtime.config import RunOptions

    no_new_privileges = True
    for opt in args.security_opt:
        key, _, value = opt.partition("=")
        value = value or "true"
        if key != "no-new-privileges" or value not in ("true", "false"):
            raise LazyfsError(
                f"unsupported --security-opt {opt!r} (no-new-privileges[=true|false])"
            )
        no_new_privileges = value == "true"
    command = list(getattr(args, "args", []) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    return RunOptions(
        entrypoint=args.entrypoint,
        command=command,
        env=args.env,
        env_files=args.env_file,
        workdir=args.workdir,
        user=args.user,
        hostname=args.hostname,
        tty=args.tty,
        interactive=args.interactive,
        volumes=args.volume,
        read_only=args.read_only,
        network=args.network,
        memory=args.memory,
        cpus=args.cpus,
        pids_limit=args.pids_limit,
        init=args.init,
        no_new_privileges=no_new_privileges,
    )


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LazyfsError(f"{what} needs root (namespaces and mounts)")


async def cmd_run(args: argparse.Namespace) -> int:
    from .oci.store import open_store
    from .runtime.container import RunSettings, run_container

    options = run_options(args)
    settings = RunSettings(keep=args.keep, stop_timeout=args.stop_timeout, zygote=args.zygote)
    async with make_client(args) as client:
        report = await run_container(
            open_store(args.image, client),
            client,
            mount_options(args),
            options,
            settings,
            started=args.started,
        )
    if args.verbose:
        for line in report.describe():
            print(f"lazyfs: {line}", file=sys.stderr)
    return report.exit_code


async def cmd_bundle(args: argparse.Namespace) -> int:
    from .oci.store import open_store
    from .runtime.bundle import serve_bundle

    ready_fd = args.ready_fd

    def ready() -> None:
        nonlocal ready_fd
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)
            ready_fd = None
            _remember_startup(args)  # the daemon: it imported the rest

    try:
        async with make_client(args) as client:
            await serve_bundle(
                open_store(args.image, client),
                mount_options(args),
                run_options(args),
                args.directory.resolve(),
                hostname=args.hostname or "lazyfs",
                on_ready=ready,
            )
    except LazyfsError as exc:
        if ready_fd is not None:
            os.write(ready_fd, f"error: {exc}\n".encode())
        raise
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
    p.add_argument("ref", type=_image, metavar="REF", help="registry reference or oci:DIR[:TAG]")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument(
        "--no-index", action="store_true", help="judge layer formats by annotations only"
    )
    add_registry_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "convert",
        help="rewrite an image's layers as zstd:chunked (lazily mountable, pullable by anyone)",
    )
    p.add_argument("src", type=_image, metavar="SRC", help="registry reference or oci:DIR[:TAG]")
    p.add_argument("dst", type=_image, metavar="DST", help="registry reference or oci:DIR[:TAG]")
    p.add_argument(
        "--chunk-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="cut files larger than this into chunks (default 512K; K/M suffixes)",
    )
    p.add_argument("--level", type=int, default=3, help="zstd compression level (default 3)")
    p.add_argument(
        "--prioritize",
        type=Path,
        metavar="FILE",
        help="file listing paths (one per line) to put first in each layer and prefetch first",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_registry_options(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("mount", help="mount an image read-only; contents are fetched when read")
    p.add_argument("ref", type=_image, metavar="REF", help="registry reference or oci:DIR[:TAG]")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("--daemon", action="store_true", help="detach once the mount is ready")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--debug-fuse", action="store_true", help=argparse.SUPPRESS)
    add_registry_options(p)
    add_mount_options(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "run",
        help="run a command in an image without pulling it (like docker run)",
        usage="lazyfs run [OPTIONS] IMAGE [COMMAND [ARG...]]",
    )
    p.add_argument(
        "image", type=_image, metavar="IMAGE", help="registry reference or oci:DIR[:TAG]"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print each phase's duration and the bytes fetched",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the container's writable layer (printed at the end)",
    )
    p.add_argument(
        "--stop-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after a forwarded SIGINT/SIGTERM/SIGHUP, SIGKILL the container if it "
        "is still running this much later (10)",
    )
    add_run_options(p)
    add_registry_options(p)
    add_mount_options(p)
    p.set_defaults(func=cmd_run, private_mounts=True, root_needed="lazyfs run")

    p = sub.add_parser(
        "bundle",
        help="make an OCI runtime bundle (config.json + lazy rootfs) for runc, crun, runsc",
        usage="lazyfs bundle [OPTIONS] IMAGE DIR [COMMAND [ARG...]]",
    )
    p.add_argument(
        "image", type=_image, metavar="IMAGE", help="registry reference or oci:DIR[:TAG]"
    )
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.add_argument(
        "--foreground",
        dest="daemon",
        action="store_false",
        default=True,
        help="serve the mounts in the foreground instead of as a daemon",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    add_run_options(p)
    add_registry_options(p)
    add_mount_options(p)
    p.set_defaults(func=cmd_bundle, root_needed="lazyfs bundle")

    from ._layerd_args import add_parser as add_layerd
    from .snapshotter.cli import add_parser as add_snapshotter

    add_layerd(sub)
    add_snapshotter(sub)

    p = sub.add_parser(
        "service",
        help="run lazyfs commands for their callers, without Python's start-up cost each time",
        description="Import lazyfs once and run the run, mount, bundle, umount and stats "
        "commands of callers of this user in these namespaces, on their terminal and files "
        "(the lazyfs command hands them over when the socket answers; LAZYFS_SERVICE=off "
        "stops that). Runs in the foreground until SIGINT or SIGTERM.",
    )
    p.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        help="where to listen (default: $LAZYFS_SERVICE, else service.sock in /run/lazyfs "
        "for root, $XDG_RUNTIME_DIR/lazyfs otherwise)",
    )
    p.set_defaults(func=None)

    p = sub.add_parser("umount", help="unmount a lazyfs mount (also one whose daemon died)")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("stats", help="what a mount has fetched, cached and prefetched")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.set_defaults(func=cmd_stats)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="lazyfs: %(message)s", stream=sys.stderr)
    if not args.debug:
        # httpx logs every request at INFO; ours are enough.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(
    argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None
) -> int:
    """The ``lazyfs`` command (``parser``: one :func:`build_parser` made earlier, as a
    ``lazyfs service`` does once for all its workers: 3-5 ms each)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if args.command == "service":
        return _guarded(args, lambda: _serve(args))
    if getattr(args, "daemon", False):
        return _guarded(args, lambda: _daemonize(args))
    code = _run(args)
    _remember_startup(args)
    return code


def _serve(args: argparse.Namespace) -> int:
    from . import _delegate
    from .service import serve

    path = args.socket or _delegate.service_socket()
    if path is None:
        raise LazyfsError("LAZYFS_SERVICE says off: give the socket with --socket PATH")
    return serve(Path(path))


def _remember_startup(args: argparse.Namespace) -> None:
    """Note the files this command's imports read, for the next start (see :mod:`._startup`)."""
    _startup.record(_startup.list_path(args.command))


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names, with lazyfs's error handling."""
    args.started = time.monotonic()

    def run() -> int:
        if getattr(args, "root_needed", None):
            _require_root(args.root_needed)
        if getattr(args, "private_mounts", False):
            # Before trio starts any thread: unshare(CLONE_NEWNS) needs a single thread.
            from .runtime.syscalls import enter_private_mount_namespace

            enter_private_mount_namespace()
        args.zygote = None
        if args.command == "run" and not args.init:
            # The container's init, forked now (one thread, every module loaded) rather
            # than started as a new interpreter later (see runtime/zygote.py). Not with
            # --init: its reaper is the container's PID 1, and a fork of this process
            # would show the container lazyfs's whole command line (-e values included).
            from .runtime.zygote import Zygote

            args.zygote = Zygote.fork()
        try:
            return trio.run(args.func, args)
        finally:
            if args.zygote is not None:
                args.zygote.cancel()  # if no container was started: it exits

    return _guarded(args, run)


def _guarded(args: argparse.Namespace, work) -> int:
    """``work()``, with expected errors as one line on stderr and exit status 1."""
    try:
        return work()
    except LazyfsError as exc:
        if args.debug:
            raise
        print(f"lazyfs: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # The environment said no (permissions, a full disk, a missing file): one line too.
        if args.debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"lazyfs: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into a reader that went away (e.g. `| head`).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
