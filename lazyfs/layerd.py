"""``lazyfs layerd``: one FUSE mount serving image layers, each as an overlayfs lower directory.

The containerd snapshotter (``lazyfs snapshotter``) needs every lazily pulled layer as a
directory of its own, in the form overlayfs expects of a lower directory. This daemon serves
them all from a single FUSE mount at ``ROOT/layers``:

* ``ROOT/layers/<hex>/`` is the layer whose blob digest is ``sha256:<hex>``, built with
  ``MergedTree.build([index], overlay_whiteouts=True)``: whiteouts are 0/0 character
  devices, opaque directories carry ``trusted.overlay.opaque=y``
  (:class:`~lazyfs.fs.forest.LayerForest` puts the layers under one root).
* Layers are added and removed while the daemon runs, through its control socket. The root
  directory changes, so the kernel is told not to cache its attributes or its entries (zero
  timeouts: a name looked up again after a removal is not found); a layer's own tree never
  changes, so its entries, attributes and pages are cached as long as the kernel likes, as
  ``lazyfs mount`` does.
* Each layer has its own :class:`~lazyfs.fs.fetcher.ChunkFetcher` (its read-ahead,
  write-behind and prefetch run while the layer is served, and stop when it is released),
  all sharing one :class:`~lazyfs.fs.cache.ChunkCache` (``--cache-dir``, default
  ``ROOT/cache``) and one registry client.
* It is a separate, detached process (pyfuse3 serves one FUSE session per process, and a
  restart of the snapshotter must not take the mounts of running containers down). One
  daemon serves a ROOT: it holds a lock on ``ROOT/layerd.lock`` while it runs, and writes
  its pid to ``ROOT/layerd.pid``. A mount left behind by a daemon that died is detached
  when the next one starts. SIGTERM and SIGINT unmount and exit.

Control
-------

The daemon answers with :func:`lazyfs.control.serve_control`, on the unix socket
:func:`lazyfs.control.control_socket_path` gives for ``ROOT/layers`` (so ``lazyfs stats
ROOT/layers`` and ``lazyfs umount ROOT/layers`` work). The protocol is one JSON request line,
one JSON answer line; an answer with ``"error"`` failed, and its ``"kind"`` names the error
class (``NotLazy``, ``NotFound``...). Requests:

* ``{"op": "add_layer", "ref": REF, "digest": DIGEST, "media_type"?, "annotations"?,
  "diff_id"?, "insecure"?}``: serve the layer ``DIGEST`` of the registry repository of
  ``REF``. Idempotent (a layer already served is not read again; concurrent requests for one
  layer wait for the first). Without both ``media_type`` and ``annotations`` the image
  ``REF`` is resolved (for this host's platform, or ``--platform``; kept for a minute) and
  the layer's descriptor and diff ID are taken from it. The layer's index is read with one
  or two range requests. A layer without an index (eStargz or zstd:chunked) is refused with
  ``NotLazy``, unless the daemon runs with ``--stream-plain``: then it is streamed once into
  the cache directory and served from there. ``insecure``: registry hosts the caller means
  to reach without TLS verification; refused unless the daemon's own options allow them
  (``--insecure-registry``; loopback always is). Answers ``{"path", "digest", "added",
  ...}``.
* ``{"op": "remove_layer", "digest": DIGEST}``: the layer's directory disappears at once;
  its tree and fetcher go once the kernel holds none of its inodes (see
  :mod:`lazyfs.fs.forest`). Answers ``{"removed": bool}``.
* ``{"op": "has_layer", "digest": DIGEST}``, ``{"op": "list"}``, ``{"op": "ping"}``.
* ``{"op": "stats"}``: per layer and in total: bytes fetched, requests, cache hits, read
  errors, FUSE operation errors, prefetch progress; the shared cache's figures; the
  registry client's transfer counters (index reads included). The ``image``, ``inodes``,
  ``timings`` and ``fetch`` keys have the shape ``lazyfs stats`` prints.
* ``{"op": "unmount"}``: answer, then unmount and exit.

The client the snapshotter uses is :class:`lazyfs.snapshotter.layers.LayerServer`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from .control import is_mountpoint, serve_control
from .errors import LazyfsError, NotFound, unwrap_task_errors
from .formats.detect import find_layer_index
from .formats.plain import build_plain_index
from .fs.cache import ChunkCache
from .fs.fetcher import ChunkFetcher, LayerSource
from .fs.forest import ForestLayer, LayerForest
from .fs.tree import ROOT_INODE, MergedTree
from .fuse import LazyOperations, _tune_readahead
from .oci.blobs import RegistryBlob
from .oci.digest import Digest
from .oci.hosts import HostPolicy
from .oci.manifest import Descriptor
from .oci.platform import Platform
from .oci.reference import Reference
from .oci.registry import RegistryClient
from .oci.resolve import ResolvedImage

__all__ = [
    "LayerDaemon",
    "LayerOperations",
    "LayerdOptions",
    "NotLazy",
    "cmd_layerd",
    "layers_mountpoint",
    "main",
    "run_layerd",
]

log = logging.getLogger("lazyfs.layerd")

#: Entry and attribute timeout of the root directory and its entries: layers come and go.
ROOT_TIMEOUT = 0.0
#: Mount options: those of ``lazyfs mount`` (read-only, any uid, the kernel checks modes).
LAYERD_FUSE_OPTIONS = (
    "fsname=lazyfs-layers",
    "subtype=lazyfs",
    "ro",
    "allow_other",
    "default_permissions",
)
#: How long a resolved image (to find a layer's descriptor in) is reused, in seconds.
MANIFEST_TTL = 60.0


class NotLazy(LazyfsError):
    """The layer carries no index it could be served lazily from (and streaming is off)."""


def layers_mountpoint(root: Path) -> Path:
    """Where the daemon of ``root`` mounts its layers: ``ROOT/layers``."""
    return Path(root) / "layers"


def pid_path(root: Path) -> Path:
    """The file the daemon of ``root`` writes its pid to while it serves."""
    return Path(root) / "layerd.pid"


def log_path(root: Path) -> Path:
    """Where a daemon started by the client logs: ``ROOT/logs/layerd.log``."""
    return Path(root) / "logs" / "layerd.log"


# ---------------------------------------------------------------------------- FUSE


def _guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A FUSE operation with unknown inodes answered ``ENOENT`` and surprises ``EIO``.

    pyfuse3 stops serving when an operation raises anything but ``FUSEError``: a released
    layer's inode or a bug must fail one request, not the mount.
    """

    async def guarded(self: LayerOperations, *args: Any) -> Any:
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except Exception:
            log.exception("FUSE %s%r failed", method.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


class LayerOperations(LazyOperations):
    """:class:`~lazyfs.fuse.LazyOperations` over a :class:`LayerForest`.

    Adds what a changing root needs: zero timeouts for the root and its entries, a readdir
    cursor of the root that survives layers coming and going, the kernel's lookup counts
    passed to the forest (so removed layers are released), and per-layer error counts.
    """

    def __init__(self, forest: LayerForest) -> None:
        super().__init__(forest)  # type: ignore[arg-type]  # the forest is tree and reader
        self.forest = forest

    def _entry(self, attr):
        e = super()._entry(attr)
        if attr.ino == ROOT_INODE:
            e.entry_timeout = e.attr_timeout = ROOT_TIMEOUT
        elif self.forest.is_layer_root(attr.ino):
            e.entry_timeout = ROOT_TIMEOUT  # its name may go; its attributes never change
        return e

    def _count_error(self, inode: int) -> None:
        try:
            self.forest.layer_of(inode).fuse_errors += 1
        except KeyError:
            pass

    @_guarded
    async def lookup(self, parent_inode, name, ctx=None):
        entry = await super().lookup(parent_inode, name, ctx)
        self.forest.note_lookup(entry.st_ino)
        return entry

    @_guarded
    async def getattr(self, inode, ctx=None):
        return await super().getattr(inode, ctx)

    @_guarded
    async def readlink(self, inode, ctx):
        return await super().readlink(inode, ctx)

    @_guarded
    async def opendir(self, inode, ctx):
        return await super().opendir(inode, ctx)

    @_guarded
    async def readdir(self, fh, start_id, token):
        if fh == ROOT_INODE:
            # The cursor is a layer's root inode: layers are listed by increasing inode,
            # new ones come last, and a removal shifts nothing.
            for name, ino in self.forest.children(ROOT_INODE):
                if ino <= start_id:
                    continue
                if not pyfuse3.readdir_reply(token, name, self._entry(self.forest.attr(ino)), ino):
                    return
                self.forest.note_lookup(ino)
            return
        children = self.forest.children(fh)
        for i in range(start_id, len(children)):
            name, ino = children[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(self.forest.attr(ino)), i + 1):
                return
            self.forest.note_lookup(ino)

    @_guarded
    async def getxattr(self, inode, name, ctx):
        return await super().getxattr(inode, name, ctx)

    @_guarded
    async def listxattr(self, inode, ctx):
        return await super().listxattr(inode, ctx)

    async def forget(self, inode_list):
        for inode, count in inode_list:
            self.forest.forget(inode, count)

    async def read(self, fh, off, size):
        inode = self._handles[fh][0]
        started = time.monotonic()
        try:
            return await super().read(fh, off, size)
        except pyfuse3.FUSEError:
            self._count_error(inode)
            raise
        except Exception:
            self._count_error(inode)
            log.exception("read of inode %d failed", inode)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            with contextlib.suppress(KeyError):
                layer = self.forest.layer_of(inode)
                layer.reads += 1
                layer.read_seconds += time.monotonic() - started


# ---------------------------------------------------------------------------- the daemon


@dataclass
class LayerdOptions:
    """How the daemon serves: where, its caches, prefetch, what it accepts."""

    root: Path
    cache_dir: Path
    cache_bytes: int = 10 * 1024**3
    memory_cache_bytes: int = 256 * 1024**2
    prefetch: bool = True
    prefetch_all: bool = False
    read_timeout: float = 60.0
    stream_plain: bool = False
    platform: Platform | None = None
    insecure_hosts: Sequence[str] = field(default_factory=tuple)
    debug_fuse: bool = False


def _text(request: dict, key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise LazyfsError(f"the request has no {key!r}")
    return value


class LayerDaemon:
    """The state of one ``lazyfs layerd``: the forest, its fetchers, the control requests."""

    def __init__(self, options: LayerdOptions, client: RegistryClient) -> None:
        self.options = options
        self.client = client
        self.mountpoint = layers_mountpoint(options.root)
        self.cache = ChunkCache(options.memory_cache_bytes, options.cache_dir, options.cache_bytes)
        self.forest = LayerForest(on_release=self._released, prefetch_opened=options.prefetch)
        self.ops = LayerOperations(self.forest)
        self.started = time.time()
        self._hosts = HostPolicy(insecure_hosts=options.insecure_hosts)
        self._adding: dict[str, trio.Event] = {}
        self._scopes: dict[ForestLayer, trio.CancelScope] = {}
        self._images: dict[str, tuple[float, ResolvedImage]] = {}
        self._image_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        self._sweeping = trio.Lock()
        self.handlers: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "add_layer": self.add_layer,
            "remove_layer": self.remove_layer,
            "has_layer": self.has_layer,
            "list": self.list_layers,
            "stats": self.stats,
            "ping": self.ping,
            "unmount": self.unmount,
        }

    # ------------------------------------------------------------------ serving

    async def serve(self, *, on_ready: Callable[[], None] | None = None) -> None:
        """Mount, answer control requests, serve; until SIGTERM/SIGINT, ``unmount`` or cancel."""
        fuse_options = set(pyfuse3.default_options) | set(LAYERD_FUSE_OPTIONS)
        if self.options.debug_fuse:
            fuse_options.add("debug")
        try:
            pyfuse3.init(self.ops, str(self.mountpoint), fuse_options)
        except RuntimeError as exc:
            raise LazyfsError(f"cannot mount on {self.mountpoint}: {exc}") from None
        try:
            with (
                unwrap_task_errors(),
                trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            ):
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery

                    async def fuse_main() -> None:
                        await pyfuse3.main()  # returns when unmounted from outside
                        nursery.cancel_scope.cancel()

                    async def until_stopped() -> None:
                        await self._stop.wait()
                        nursery.cancel_scope.cancel()

                    async def until_signal() -> None:
                        async for signum in signals:
                            log.info("signal %d: unmounting", signum)
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(fuse_main)
                    nursery.start_soon(until_stopped)
                    nursery.start_soon(until_signal)
                    await _tune_readahead(self.mountpoint)
                    await nursery.start(serve_control, self.mountpoint, self.handlers)
                    pid_path(self.options.root).write_text(f"{os.getpid()}\n")
                    log.info("serving layers at %s (pid %d)", self.mountpoint, os.getpid())
                    if on_ready is not None:
                        on_ready()
        finally:
            self._nursery = None
            pyfuse3.close(unmount=True)
            pid_path(self.options.root).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the cache (after :meth:`serve`)."""
        self.cache.close()

    # ------------------------------------------------------------------ operations

    async def ping(self, request: dict) -> dict:
        return {"ok": True, "pid": os.getpid(), "mountpoint": str(self.mountpoint)}

    async def unmount(self, request: dict) -> dict:
        self._stop.set()  # the answer is sent before the server is cancelled
        return {"unmounting": True}

    async def has_layer(self, request: dict) -> dict:
        return {"present": Digest(_text(request, "digest")).hex in self.forest}

    async def list_layers(self, request: dict) -> dict:
        return {"layers": [self._describe(layer) for layer in self.forest.layers()]}

    async def add_layer(self, request: dict) -> dict:
        """Serve a layer (see the module docs); idempotent."""
        ref = Reference.parse(_text(request, "ref"))
        digest = Digest(_text(request, "digest"))
        self._check_insecure(request.get("insecure") or ())
        name = digest.hex
        while True:
            layer = self.forest.get(name)
            if layer is not None:
                return {**self._describe(layer), "added": False}
            busy = self._adding.get(name)
            if busy is None:
                break
            await busy.wait()  # then look again: it may have failed
        done = self._adding[name] = trio.Event()
        try:
            layer = await self._open_layer(ref, digest, request)
        finally:
            del self._adding[name]
            done.set()
        return {**self._describe(layer), "added": True}

    async def remove_layer(self, request: dict) -> dict:
        name = Digest(_text(request, "digest")).hex
        layer = self.forest.remove(name)
        if layer is None:
            return {"removed": False}
        log.info("removed layer %s (%s)", layer.info.get("digest"), layer.info.get("ref"))
        if not layer.released and self._nursery is not None:
            self._nursery.start_soon(self._sweep, layer)
        return {"removed": True}

    async def stats(self, request: dict | None = None) -> dict:
        """Per-layer and total figures; see the module docs."""
        layers, rows = [], []
        total: dict[str, int] = {}
        for layer in [*self.forest.layers(), *self.forest.pending()]:
            counters = dict(layer.fetcher.stats_snapshot()["total"])  # type: ignore[attr-defined]
            counters["fuse_errors"] = layer.fuse_errors
            counters["reads"] = layer.reads
            counters["read_seconds"] = layer.read_seconds
            counters["cache_hits"] = counters.get("memory_hits", 0) + counters.get("disk_hits", 0)
            counters["cache_misses"] = counters.get("chunks_fetched", 0) + counters.get(
                "shared_fetches", 0
            )
            for key, value in counters.items():
                total[key] = total.get(key, 0) + value
            layers.append({**self._describe(layer), **counters})
            rows.append({**counters, "name": f"{layer.name[:12]} {layer.info.get('format')}"})
        return {
            # The totals at the top level too, for metrics exporters.
            **total,
            "layer_count": len(self.forest.layers()),
            "image": f"layerd {self.options.root}",
            "digest": "",
            "platform": str(self.options.platform or Platform.host()),
            "inodes": len(self.forest),
            "timings": {"uptime": time.time() - self.started},
            "layers": layers,
            "total": total,
            "fetch": {"layers": rows, "total": total, "cache": self.cache.stats.snapshot()},
            "registry": self.client.stats.snapshot(),
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ layers

    def _describe(self, layer: ForestLayer) -> dict:
        return {
            **layer.info,
            "name": layer.name,
            "path": str(self.mountpoint / layer.name),
            "inodes": len(layer.tree),
            "removed": layer.removed,
        }

    def _check_insecure(self, hosts: Sequence[str]) -> None:
        if isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts):
            raise LazyfsError("'insecure' must be a list of host names")
        refused = [h for h in hosts if not self._hosts.settings(h).insecure]
        if refused:
            raise LazyfsError(
                f"layerd was not started with --insecure-registry for {', '.join(refused)}"
            )

    async def _open_layer(self, ref: Reference, digest: Digest, request: dict) -> ForestLayer:
        started = time.monotonic()
        desc, diff_id = await self._descriptor(ref, digest, request)
        label = digest.hex[:12]
        blob = RegistryBlob(self.client, ref, desc.digest, desc.size)
        index = await find_layer_index(
            blob, media_type=desc.media_type, annotations=desc.annotations, layer=label
        )
        if index is None:
            if not self.options.stream_plain:
                raise NotLazy(
                    f"layer {digest} of {ref.name} has no eStargz or zstd:chunked index; "
                    "layerd serves such layers only with --stream-plain"
                )
            index = await build_plain_index(
                blob,
                media_type=desc.media_type,
                layer=label,
                cache_dir=self.options.cache_dir,
                diff_id=diff_id,
            )
        tree = await trio.to_thread.run_sync(
            partial(MergedTree.build, [index], overlay_whiteouts=True)
        )
        source = LayerSource(
            name=f"{label} {index.format}",
            table=tree.tables[0],
            blob=None if index.local_path else blob,
            local_path=index.local_path,
            prefetch_offset=index.prefetch_offset,
            no_prefetch=index.no_prefetch,
        )
        fetcher = ChunkFetcher([source], self.cache, read_timeout=self.options.read_timeout)
        info = {
            **index.summary(),
            "digest": str(digest),
            "ref": str(ref),
            "media_type": desc.media_type,
            "size": desc.size,
            "index_seconds": round(time.monotonic() - started, 6),
        }
        layer = self.forest.add(digest.hex, tree, fetcher, info=info)
        scope = self._scopes[layer] = trio.CancelScope()
        if self._nursery is not None:
            self._nursery.start_soon(self._run_layer, layer, scope)
        log.info(
            "added layer %s of %s: %s, %d entries, in %.3fs",
            digest,
            ref.name,
            index.format,
            index.entry_count,
            info["index_seconds"],
        )
        return layer

    async def _descriptor(
        self, ref: Reference, digest: Digest, request: dict
    ) -> tuple[Descriptor, Digest | None]:
        """The layer's descriptor (from the request, else from the image) and diff ID."""
        media_type, annotations = request.get("media_type"), request.get("annotations")
        diff_id = Digest(request["diff_id"]) if request.get("diff_id") else None
        if isinstance(media_type, str) and isinstance(annotations, dict):
            size = await self.client.blob_size(ref, digest)
            if size is None:
                raise NotFound(f"blob {digest} is not in {ref.name}")
            return Descriptor(media_type, digest, size, annotations), diff_id
        image = await self._resolve(ref)
        for i, desc in enumerate(image.manifest.layers):
            if desc.digest == digest:
                ids = image.config.diff_ids
                return desc, diff_id or (ids[i] if i < len(ids) else None)
        raise NotFound(f"layer {digest} is not in the image {ref} ({image.platform})")

    async def _resolve(self, ref: Reference) -> ResolvedImage:
        key = str(ref)
        lock = self._image_locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._images.get(key)
            if cached is not None and time.monotonic() - cached[0] < MANIFEST_TTL:
                return cached[1]
            image = await self.client.resolve(ref, self.options.platform)
            self._images[key] = (time.monotonic(), image)
            return image

    async def _run_layer(self, layer: ForestLayer, scope: trio.CancelScope) -> None:
        """The layer's background work (read-ahead, write-behind, prefetch) until released."""
        with scope:
            async with trio.open_nursery() as nursery:
                fetcher: ChunkFetcher = layer.fetcher  # type: ignore[assignment]
                await nursery.start(fetcher.run)
                if self.options.prefetch:
                    nursery.start_soon(
                        partial(fetcher.prefetch, everything=self.options.prefetch_all)
                    )

    async def _sweep(self, layer: ForestLayer) -> None:
        """Get a removed layer's entries out of the kernel's cache, until it is released.

        The kernel forgets an inode once no dentry refers to it, but it keeps unused dentries
        cached (and they keep their parents) for as long as memory allows. Invalidating
        every entry of the layer, deepest first, drops those not in use at once and unhashes
        the others, which then go as soon as their user (an overlay mount, an open file)
        lets them go. Entries looked up again through such a user are cached anew, so the
        sweep is repeated, less and less often, while the layer is held.
        """
        for delay in itertools.chain((0, 1, 10, 60), itertools.repeat(600)):
            await trio.sleep(delay)
            if layer.released:
                return
            async with self._sweeping:  # pyfuse3's notification queue wants one caller
                await _invalidate_layer(layer)

    def _released(self, layer: ForestLayer) -> None:
        scope = self._scopes.pop(layer, None)
        if scope is not None:
            scope.cancel()
        log.info("released layer %s", layer.info.get("digest"))


async def _invalidate_layer(layer: ForestLayer, batch: int = 20_000) -> None:
    """Ask the kernel to drop every entry of ``layer`` it has cached, deepest first.

    The notifications are queued to pyfuse3's notification thread (entries the kernel does
    not know are ignored); the event loop gets a turn every ``batch`` entries.
    """
    tree, base = layer.tree, layer.base
    done = 0
    for local in range(len(tree), ROOT_INODE - 1, -1):  # inodes are numbered breadth first
        for name, _ in tree.children(local):
            pyfuse3.invalidate_entry_async(base + local, name, ignore_enoent=True)
            done += 1
            if done % batch == 0:
                await trio.sleep(0)
    pyfuse3.invalidate_entry_async(ROOT_INODE, layer.name.encode(), ignore_enoent=True)


# ---------------------------------------------------------------------------- process


def _lock_root(root: Path) -> int:
    """Take ``ROOT/layerd.lock`` for this process's life; a second daemon is refused."""
    fd = os.open(root / "layerd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LazyfsError(f"another lazyfs layerd serves {root}") from None
    return fd


def _detach_stale_mount(mountpoint: Path) -> None:
    """Lazily unmount what a dead daemon left at ``mountpoint`` (we hold the root's lock)."""
    if not is_mountpoint(mountpoint):
        return
    log.info("detaching the mount a previous layerd left at %s", mountpoint)
    for command in (["fusermount3", "-u", "-z"], ["umount", "-l"]):
        try:
            subprocess.run([*command, str(mountpoint)], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if not is_mountpoint(mountpoint):
            return
    raise LazyfsError(f"cannot unmount the stale mount at {mountpoint}")


async def run_layerd(
    options: LayerdOptions,
    client: RegistryClient,
    *,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``options.root``'s layers until told to stop (see the module docs)."""
    root = options.root
    root.mkdir(parents=True, exist_ok=True)
    lock = _lock_root(root)
    try:
        mountpoint = layers_mountpoint(root)
        _detach_stale_mount(mountpoint)
        mountpoint.mkdir(parents=True, exist_ok=True)
        daemon = LayerDaemon(options, client)
        try:
            await daemon.serve(on_ready=on_ready)
        finally:
            daemon.close()
    finally:
        os.close(lock)


# ---------------------------------------------------------------------------- command line


def options_from_args(args: argparse.Namespace) -> LayerdOptions:
    """The daemon's options from ``lazyfs layerd``'s arguments."""
    root = args.root.absolute()
    return LayerdOptions(
        root=root,
        cache_dir=(args.cache_dir or root / "cache").absolute(),
        cache_bytes=args.cache_size,
        memory_cache_bytes=args.memory_cache,
        prefetch=not args.no_prefetch,
        prefetch_all=args.prefetch_all,
        read_timeout=args.read_timeout,
        stream_plain=args.stream_plain,
        platform=args.platform,
        insecure_hosts=tuple(args.insecure_registry),
        debug_fuse=args.debug_fuse,
    )


async def cmd_layerd(args: argparse.Namespace) -> int:
    """``lazyfs layerd``: serve in the foreground until SIGTERM/SIGINT or ``unmount``."""
    from .cli import make_client

    async with make_client(args) as client:
        await run_layerd(options_from_args(args), client)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lazyfs.layerd [-v] [--debug] LAYERD-OPTIONS``: as ``lazyfs layerd``."""
    from . import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="lazyfs")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    from ._layerd_args import add_parser

    add_parser(sub)
    top = [a for a in argv if a in ("-v", "--verbose", "--debug")]
    rest = [a for a in argv if a not in top]
    args = parser.parse_args([*top, "layerd", *rest])
    cli._setup_logging(args)
    return cli._run(args)


if __name__ == "__main__":
    sys.exit(main())
