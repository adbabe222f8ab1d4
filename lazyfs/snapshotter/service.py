"""containerd's snapshot service: the snapshotter's rules, and their gRPC face.

:class:`Snapshotter` does the work in plain Python. Ordinary snapshots live in
``ROOT/snapshots/<id>/fs`` (the contents, or the upper dir of an overlay) and ``.../work``
(overlayfs's work dir), and their mounts are what containerd's own overlayfs snapshotter
returns:

* an active snapshot without parents: a read-write bind mount of its ``fs``;
* an active snapshot with parents: an overlay whose ``lowerdir`` lists the parents' dirs
  nearest first, ``upperdir`` its ``fs``, ``workdir`` its ``work``;
* a view: a read-only bind mount of its only parent's dir (or of its own empty ``fs``),
  or with several parents a read-only overlay of them.

A committed snapshot's dir is its ``fs``, or, for a **remote** one, the layer server's
``ROOT/layers/<hex>``: when ``Prepare`` carries ``containerd.io/snapshot.ref`` (the chain
ID containerd wants to end up with) and the CRI labels naming the image and the layer, the
snapshotter asks the layer server to serve that layer lazily, records a committed snapshot
named by the target with the given parent and labels, and answers "already exists", so
containerd neither downloads nor unpacks the layer. A layer the layer server cannot serve
lazily (:class:`~lazyfs.snapshotter.layers.NotLazy` or any other error) is prepared as an
ordinary active snapshot instead, which containerd fills the usual way.

:class:`SnapshotsServicer` maps the gRPC requests onto :class:`Snapshotter` and its errors
onto the status codes containerd turns back into its own errors: ``NOT_FOUND``,
``ALREADY_EXISTS``, ``INVALID_ARGUMENT``, ``FAILED_PRECONDITION``; anything unexpected is
``INTERNAL`` (and logged with its traceback). It also counts requests, errors and latency
(:class:`RequestStats`) for the metrics.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ..errors import LazyfsError
from .filters import compile_filters
from .metadata import (
    Kind,
    MetadataStore,
    Snapshot,
    SnapshotError,
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
)
from .proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc

__all__ = [
    "LABEL_IMAGE_REF",
    "LABEL_LAYER_DIGEST",
    "LABEL_TARGET",
    "LayerService",
    "Mount",
    "RequestStats",
    "SnapshotsServicer",
    "Snapshotter",
]

log = logging.getLogger("lazyfs.snapshotter")

#: The chain ID containerd wants a remote snapshot committed under.
LABEL_TARGET = "containerd.io/snapshot.ref"
#: The image a layer belongs to (CRI, with ``disable_snapshot_annotations = false``).
LABEL_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
#: The digest of the layer's blob.
LABEL_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"


class LayerService(Protocol):
    """What the snapshotter needs of the layer server (:mod:`lazyfs.snapshotter.layers`)."""

    def add_layer(self, ref: str, digest: str, **options: Any) -> Path: ...

    def remove_layer(self, digest: str) -> None: ...


def log_event(level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` (the server's formatter writes them as key=value)."""
    log.log(level, event, extra={"fields": fields})


@dataclass(frozen=True)
class Mount:
    """One mount(2) call a client makes to use a snapshot."""

    type: str
    source: str
    options: tuple[str, ...]

    def to_proto(self) -> mount_pb2.Mount:
        return mount_pb2.Mount(type=self.type, source=self.source, options=list(self.options))


def _overlay_extra_options() -> tuple[str, ...]:
    """``index=off`` where the kernel has overlayfs's inode index (as containerd does).

    With the index on, overlayfs would record the lower layers' file handles, which a
    FUSE lower dir does not keep stable across a restart of the layer server.
    """
    if os.path.exists("/sys/module/overlay/parameters/index"):
        return ("index=off",)
    return ()


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) used by the tree at ``path``: allocated blocks, hard links once."""
    seen: set[tuple[int, int]] = set()
    size = 0

    def visit(st: os.stat_result) -> None:
        nonlocal size
        ident = (st.st_dev, st.st_ino)
        if ident not in seen:
            seen.add(ident)
            size += st.st_blocks * 512

    if not path.exists():
        return 0, 0
    visit(path.lstat())
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                visit(os.lstat(os.path.join(dirpath, name)))
    return size, len(seen)


class Snapshotter:
    """The snapshots under ``root``, their metadata in ``store``, remote layers in ``layers``.

    ``layers`` is ``None`` when remote snapshots are off: every ``Prepare`` is ordinary.
    """

    def __init__(
        self,
        root: Path,
        store: MetadataStore,
        layers: LayerService | None = None,
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.layers = layers
        self.snapshots_dir = self.root / "snapshots"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        self._remote_lock = threading.Lock()
        self._overlay_options = _overlay_extra_options()

    # ------------------------------------------------------------------ paths

    def snapshot_dir(self, snapshot: Snapshot) -> Path:
        """``ROOT/snapshots/<id>`` of an ordinary snapshot."""
        return self.snapshots_dir / str(snapshot.id)

    def lower_dir(self, snapshot: Snapshot) -> str:
        """The directory a committed snapshot contributes to an overlay."""
        if snapshot.remote is not None:
            return snapshot.remote["path"]
        return str(self.snapshot_dir(snapshot) / "fs")

    def _make_dirs(self, snapshot: Snapshot) -> None:
        base = self.snapshot_dir(snapshot)
        if base.exists():
            shutil.rmtree(base)
        (base / "fs").mkdir(parents=True, mode=0o755)
        (base / "work").mkdir(mode=0o711)

    # ------------------------------------------------------------------ mounts

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of the active snapshot or view ``key``."""
        snapshot = self.store.get(key)
        if snapshot.kind == Kind.COMMITTED:
            raise SnapshotPrecondition(f"snapshot {key!r} is committed: it has no mounts")
        return self._mounts(snapshot)

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        lowers = [self.lower_dir(p) for p in self.store.chain(snapshot.key)]
        base = self.snapshot_dir(snapshot)
        if snapshot.kind == Kind.ACTIVE:
            if not lowers:
                return [Mount("bind", str(base / "fs"), ("rw", "rbind"))]
            options = (
                *self._overlay_options,
                f"workdir={base / 'work'}",
                f"upperdir={base / 'fs'}",
                f"lowerdir={':'.join(lowers)}",
            )
            return [Mount("overlay", "overlay", options)]
        if not lowers:
            return [Mount("bind", str(base / "fs"), ("ro", "rbind"))]
        if len(lowers) == 1:
            return [Mount("bind", lowers[0], ("ro", "rbind"))]
        options = (*self._overlay_options, f"lowerdir={':'.join(lowers)}")
        return [Mount("overlay", "overlay", options)]

    # ------------------------------------------------------------------ operations

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new active snapshot ``key`` on ``parent``; or, for a layer that can be served
        lazily, a committed remote snapshot and :class:`SnapshotExists`."""
        labels = dict(labels or {})
        if self.layers is not None and all(
            labels.get(k) for k in (LABEL_TARGET, LABEL_IMAGE_REF, LABEL_LAYER_DIGEST)
        ):
            self._prepare_remote(key, parent, labels)
        snapshot = self.store.create(key, Kind.ACTIVE, parent, labels, prepare=self._make_dirs)
        log_event(logging.INFO, "prepare", key=key, parent=parent, id=snapshot.id)
        return self._mounts(snapshot)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """A new read-only view ``key`` of ``parent``."""
        snapshot = self.store.create(key, Kind.VIEW, parent, labels, prepare=self._make_dirs)
        log_event(logging.INFO, "view", key=key, parent=parent, id=snapshot.id)
        return self._mounts(snapshot)

    def _prepare_remote(self, key: str, parent: str, labels: dict[str, str]) -> None:
        """Commit ``labels``'s target as a remote snapshot and raise :class:`SnapshotExists`;
        return (for an ordinary ``Prepare``) when the layer cannot be served lazily."""
        target = labels[LABEL_TARGET]
        image_ref = labels[LABEL_IMAGE_REF]
        digest = labels[LABEL_LAYER_DIGEST]
        with self._remote_lock:
            existing = self.store.find(target)
            if existing is not None:
                if existing.kind == Kind.COMMITTED and existing.parent == parent:
                    raise SnapshotExists(f"target snapshot {target!r}: already exists")
                return
            if self.store.find(key) is not None:
                raise SnapshotExists(f"snapshot {key!r}: already exists")
            if parent:
                parent_snapshot = self.store.get(parent)
                if parent_snapshot.kind != Kind.COMMITTED:
                    raise SnapshotInvalid(f"parent {parent!r} is not a committed snapshot")
            remote = {"ref": image_ref, "digest": digest}
            started = time.monotonic()
            try:
                path = self.layers.add_layer(image_ref, digest)
            except LazyfsError as exc:
                log_event(
                    logging.INFO,
                    "remote-fallback",
                    key=key,
                    layer=digest,
                    image=image_ref,
                    reason=str(exc),
                    error=type(exc).__name__,
                )
                return
            except Exception as exc:
                log.exception("layer server failed to add %s", digest)
                log_event(
                    logging.WARNING, "remote-fallback", key=key, layer=digest, reason=repr(exc)
                )
                return
            remote["path"] = str(path)
            snapshot = self.store.create(target, Kind.COMMITTED, parent, labels, remote=remote)
            log_event(
                logging.INFO,
                "remote-commit",
                key=key,
                name=target,
                parent=parent,
                layer=digest,
                image=image_ref,
                id=snapshot.id,
                seconds=round(time.monotonic() - started, 4),
            )
            raise SnapshotExists(f"target snapshot {target!r}: already exists")

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> Snapshot:
        """Commit the active snapshot ``key`` as ``name`` (its contents are then read-only)."""
        snapshot = self.store.commit(
            key, name, labels, usage=lambda s: disk_usage(self.snapshot_dir(s) / "fs")
        )
        log_event(logging.INFO, "commit", key=key, name=name, id=snapshot.id, size=snapshot.size)
        return snapshot

    def remove(self, key: str) -> None:
        """Remove ``key`` (which no snapshot may have as parent) and its directories."""
        snapshot = self.store.remove(key)
        if snapshot.remote is None:
            shutil.rmtree(self.snapshot_dir(snapshot), ignore_errors=True)
        else:
            self._release_layer(snapshot.remote["digest"])
        log_event(logging.INFO, "remove", key=key, id=snapshot.id, kind=snapshot.kind.name)

    def _release_layer(self, digest: str) -> None:
        """Tell the layer server to drop ``digest`` unless another snapshot still uses it."""
        if self.layers is None:
            return
        if any(s.remote["digest"] == digest for s in self.store.remote_snapshots()):
            return
        try:
            self.layers.remove_layer(digest)
        except Exception as exc:
            log_event(logging.WARNING, "remove-layer-failed", layer=digest, reason=str(exc))

    def stat(self, key: str) -> Snapshot:
        """The snapshot ``key``."""
        return self.store.get(key)

    def update(self, key: str, labels: Mapping[str, str], paths: list[str]) -> Snapshot:
        """Change the labels of ``key`` as the field mask ``paths`` says.

        No paths, or ``labels``, replace all labels; ``labels.KEY`` sets (or, absent from
        ``labels``, deletes) one. Other fields are immutable (:class:`SnapshotInvalid`).
        """
        snapshot = self.store.get(key)
        new = dict(snapshot.labels)
        if not paths or "labels" in paths:
            new = dict(labels)
        for path in paths:
            if path == "labels":
                continue
            if not path.startswith("labels."):
                raise SnapshotInvalid(f"cannot update field {path!r} of snapshot {key!r}")
            label = path.removeprefix("labels.")
            if label in labels:
                new[label] = labels[label]
            else:
                new.pop(label, None)
        return self.store.set_labels(key, new)

    def list(self, filters: list[str]) -> list[Snapshot]:
        """The snapshots any of ``filters`` matches (every one if there are none)."""
        match = compile_filters(filters)
        return [s for s in self.store.list() if match(s)]

    def usage(self, key: str) -> tuple[int, int]:
        """(bytes, inodes) of ``key``: measured now for active ones, at commit otherwise."""
        snapshot = self.store.get(key)
        if snapshot.kind == Kind.ACTIVE:
            return disk_usage(self.snapshot_dir(snapshot) / "fs")
        return snapshot.size, snapshot.inodes

    def cleanup(self) -> list[str]:
        """Delete snapshot directories the metadata no longer knows, and let go of layers
        the layer server serves for no snapshot (a crash between adding a layer and
        recording its snapshot leaves one). Returns the directory names removed."""
        keep = {str(i) for i in self.store.ids()}
        removed = []
        for entry in sorted(os.listdir(self.snapshots_dir)):
            if entry not in keep:
                path = self.snapshots_dir / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(entry)
        if removed:
            log_event(logging.INFO, "cleanup", removed=",".join(removed))
        self._release_orphan_layers()
        return removed

    def _release_orphan_layers(self) -> None:
        list_layers = getattr(self.layers, "list_layers", None)
        if list_layers is None:
            return
        try:
            served = {layer["digest"] for layer in list_layers()}
        except Exception as exc:
            log_event(logging.WARNING, "list-layers-failed", reason=str(exc))
            return
        used = {s.remote["digest"] for s in self.store.remote_snapshots()}
        for digest in sorted(served - used):
            log_event(logging.INFO, "cleanup-layer", layer=digest)
            self._release_layer(digest)

    def restore(self) -> tuple[int, int]:
        """Add every committed remote layer to the layer server again (after a restart).

        Returns (restored, failed). A layer that cannot be added is logged; its snapshots
        stay, and mounting them fails until the layer server can serve it.
        """
        restored = failed = 0
        if self.layers is None:
            return 0, 0
        done: set[str] = set()
        for snapshot in self.store.remote_snapshots():
            remote = snapshot.remote
            if remote["digest"] in done:
                continue
            try:
                path = self.layers.add_layer(remote["ref"], remote["digest"])
            except Exception as exc:
                failed += 1
                log_event(
                    logging.ERROR,
                    "restore-failed",
                    name=snapshot.key,
                    layer=remote["digest"],
                    reason=str(exc),
                )
                continue
            if str(path) != remote["path"]:
                log_event(logging.WARNING, "restore-path-moved", layer=remote["digest"])
            done.add(remote["digest"])
            restored += 1
        log_event(logging.INFO, "restore", restored=restored, failed=failed)
        return restored, failed


# ---------------------------------------------------------------------------- gRPC


_STATUS = (
    (SnapshotNotFound, grpc.StatusCode.NOT_FOUND),
    (SnapshotExists, grpc.StatusCode.ALREADY_EXISTS),
    (SnapshotInvalid, grpc.StatusCode.INVALID_ARGUMENT),
    (SnapshotPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
)


class RequestStats:
    """Counts of gRPC requests by method and status code, and their summed latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, float] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        with self._lock:
            key = (method, code.name)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.seconds[method] = self.seconds.get(method, 0.0) + seconds

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        """Copies of (requests, seconds)."""
        with self._lock:
            return dict(self.requests), dict(self.seconds)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _info(snapshot: Snapshot) -> snapshots_pb2.Info:
    return snapshots_pb2.Info(
        name=snapshot.key,
        parent=snapshot.parent,
        kind=int(snapshot.kind),
        created_at=_timestamp(snapshot.created_ns),
        updated_at=_timestamp(snapshot.updated_ns),
        labels=snapshot.labels,
    )


class SnapshotsServicer(snapshots_pb2_grpc.SnapshotsServicer):
    """containerd's ``Snapshots`` gRPC service over a :class:`Snapshotter`."""

    def __init__(self, snapshotter: Snapshotter, stats: RequestStats | None = None) -> None:
        self.snapshotter = snapshotter
        self.stats = stats or RequestStats()

    @contextlib.contextmanager
    def _call(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Run one request: map errors to status codes, count it and time it."""
        started = time.monotonic()
        code = grpc.StatusCode.OK
        message = ""
        try:
            yield
        except SnapshotError as exc:
            code = next(c for cls, c in _STATUS if isinstance(exc, cls))
            message = str(exc)
        except LazyfsError as exc:
            code, message = grpc.StatusCode.FAILED_PRECONDITION, str(exc)
        except OSError as exc:
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{method}: {exc}"
        except Exception as exc:
            log.exception("%s failed", method)
            code, message = grpc.StatusCode.INTERNAL, f"{method}: internal error: {exc!r}"
        finally:
            self.stats.observe(method, code, time.monotonic() - started)
        if code != grpc.StatusCode.OK:
            if code != grpc.StatusCode.ALREADY_EXISTS:
                log_event(
                    logging.INFO, "request-error", method=method, code=code.name, error=message
                )
            context.abort(code, message)

    def Prepare(self, request, context):
        with self._call("Prepare", context):
            mounts = self.snapshotter.prepare(request.key, request.parent, request.labels)
            return snapshots_pb2.PrepareSnapshotResponse(mounts=[m.to_proto() for m in mounts])

    def View(self, request, context):
        with self._call("View", context):
            mounts = self.snapshotter.view(request.key, request.parent, request.labels)
            return snapshots_pb2.ViewSnapshotResponse(mounts=[m.to_proto() for m in mounts])

    def Mounts(self, request, context):
        with self._call("Mounts", context):
            mounts = self.snapshotter.mounts(request.key)
            return snapshots_pb2.MountsResponse(mounts=[m.to_proto() for m in mounts])

    def Commit(self, request, context):
        with self._call("Commit", context):
            self.snapshotter.commit(request.name, request.key, request.labels)
            return empty_pb2.Empty()

    def Remove(self, request, context):
        with self._call("Remove", context):
            self.snapshotter.remove(request.key)
            return empty_pb2.Empty()

    def Stat(self, request, context):
        with self._call("Stat", context):
            return snapshots_pb2.StatSnapshotResponse(
                info=_info(self.snapshotter.stat(request.key))
            )

    def Update(self, request, context):
        with self._call("Update", context):
            snapshot = self.snapshotter.update(
                request.info.name, request.info.labels, list(request.update_mask.paths)
            )
            return snapshots_pb2.UpdateSnapshotResponse(info=_info(snapshot))

    def List(self, request, context):
        # Evaluated before the first message, so errors become a status, not a broken stream.
        snapshots: list[Snapshot] = []
        with self._call("List", context):
            snapshots = self.snapshotter.list(list(request.filters))
        for start in range(0, len(snapshots), 100):
            batch = snapshots[start : start + 100]
            yield snapshots_pb2.ListSnapshotsResponse(info=[_info(s) for s in batch])

    def Usage(self, request, context):
        with self._call("Usage", context):
            size, inodes = self.snapshotter.usage(request.key)
            return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    def Cleanup(self, request, context):
        with self._call("Cleanup", context):
            self.snapshotter.cleanup()
            return empty_pb2.Empty()
