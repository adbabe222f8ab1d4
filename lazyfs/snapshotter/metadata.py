"""The snapshotter's state: every snapshot containerd knows of, in SQLite under the root.

One table holds every snapshot, active, view and committed alike, because containerd's
keys (of active snapshots and views) and names (of committed ones) share one namespace:
a key cannot be used while a snapshot of any kind has it. Each row has

* ``id``: a number no later snapshot gets once this one was stored (``AUTOINCREMENT``),
  which names the snapshot's directory ``snapshots/<id>`` (so a removed snapshot's
  directory, left behind by a crash, is never taken for a new snapshot's);
* ``key`` (its name once committed), ``kind``, the parent's row id, the labels (JSON),
  creation and update times in nanoseconds;
* ``size`` and ``inodes``, measured when an active snapshot is committed;
* ``remote``: for committed snapshots served lazily by the layer server, what is needed to
  add the layer again after a restart (JSON: image reference, layer digest and options);
  ``NULL`` for ordinary snapshots.

The database runs in WAL mode with ``synchronous=FULL``: a committed transaction survives a
crash of the process or the machine. Every public method is one transaction and is safe to
call from several threads (one connection, behind a lock). The rules containerd expects of
a snapshotter are checked here and broken ones raise :class:`SnapshotError` subclasses that
the gRPC layer maps onto status codes: a missing key (:class:`SnapshotNotFound`), a key or
name in use (:class:`SnapshotExists`), a parent that is not committed or a bad label
(:class:`SnapshotInvalid`), an operation the snapshot's kind or children forbid
(:class:`SnapshotPrecondition`).

:meth:`MetadataStore.create` and :meth:`MetadataStore.commit` accept a ``prepare`` callback
that runs inside the transaction once the row (and its id) exists: the caller makes the
snapshot's directories there, and if it raises, the row is rolled back.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LazyfsError

__all__ = [
    "MAX_LABEL_BYTES",
    "Kind",
    "MetadataStore",
    "Snapshot",
    "SnapshotError",
    "SnapshotExists",
    "SnapshotInvalid",
    "SnapshotNotFound",
    "SnapshotPrecondition",
]

#: containerd's limit on one label: its key and value together, in UTF-8 bytes.
MAX_LABEL_BYTES = 4096

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    parent_id INTEGER REFERENCES snapshots(id),
    labels TEXT NOT NULL DEFAULT '{}',
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    remote TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""


class SnapshotError(LazyfsError):
    """A snapshot request breaks one of containerd's snapshotter rules."""


class SnapshotNotFound(SnapshotError):
    """The key, name or parent does not exist."""


class SnapshotExists(SnapshotError):
    """The key or name is already used by a snapshot."""


class SnapshotInvalid(SnapshotError):
    """An argument is malformed: a parent that is not committed, an oversized label."""


class SnapshotPrecondition(SnapshotError):
    """The snapshot's kind or children forbid the operation (commit a view, remove a parent)."""


class Kind(enum.IntEnum):
    """A snapshot's kind, numbered as in containerd's API."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Snapshot:
    """One row of the store.

    ``key`` is the key of an active snapshot or view and the name of a committed one;
    ``parent`` is the parent's name (``""`` for none), ``parent_id`` its row id. Times are
    nanoseconds since the epoch. ``remote`` is ``None`` for ordinary snapshots.
    """

    id: int
    key: str
    kind: Kind
    parent: str
    parent_id: int | None
    labels: dict[str, str]
    created_ns: int
    updated_ns: int
    size: int = 0
    inodes: int = 0
    remote: dict[str, Any] | None = field(default=None)


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` as a dict, or :class:`SnapshotInvalid` if one is over containerd's limit."""
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise SnapshotInvalid(
                f"label {key[:64]!r}: key and value exceed {MAX_LABEL_BYTES} bytes"
            )
    return dict(labels)


_COLUMNS = (
    "s.id, s.key, s.kind, COALESCE(p.key, ''), s.parent_id, s.labels, s.created_ns, "
    "s.updated_ns, s.size, s.inodes, s.remote"
)
_SELECT = f"SELECT {_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id"


def _row(row: tuple) -> Snapshot:
    return Snapshot(
        id=row[0],
        key=row[1],
        kind=Kind(row[2]),
        parent=row[3],
        parent_id=row[4],
        labels=json.loads(row[5]),
        created_ns=row[6],
        updated_ns=row[7],
        size=row[8],
        inodes=row[9],
        remote=json.loads(row[10]) if row[10] else None,
    )


class MetadataStore:
    """The snapshot table in the SQLite database at ``path`` (created if missing).

    Use :meth:`close` (or the store as a context manager) to close the connection.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise LazyfsError(
                    f"{self.path}: written by a newer lazyfs (schema {version}); "
                    "upgrade lazyfs or use another --root"
                )
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the database connection. Idempotent."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), rolled back if the body raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------ reading

    def _get(self, db: sqlite3.Connection, key: str) -> Snapshot | None:
        row = db.execute(f"{_SELECT} WHERE s.key = ?", (key,)).fetchone()
        return _row(row) if row else None

    def _require(self, db: sqlite3.Connection, key: str) -> Snapshot:
        snapshot = self._get(db, key)
        if snapshot is None:
            raise SnapshotNotFound(f"snapshot {key!r}: not found")
        return snapshot

    def get(self, key: str) -> Snapshot:
        """The snapshot with this key or name; :class:`SnapshotNotFound` if there is none."""
        with self._lock:
            return self._require(self._db, key)

    def find(self, key: str) -> Snapshot | None:
        """The snapshot with this key or name, or ``None``."""
        with self._lock:
            return self._get(self._db, key)

    def list(self) -> list[Snapshot]:
        """Every snapshot, in creation order."""
        with self._lock:
            return [_row(r) for r in self._db.execute(f"{_SELECT} ORDER BY s.id")]

    def chain(self, key: str) -> list[Snapshot]:
        """The snapshot's parents, nearest first (the snapshot itself not included)."""
        with self._lock:
            snapshot = self._require(self._db, key)
            parents = []
            parent_id = snapshot.parent_id
            while parent_id is not None:
                row = self._db.execute(f"{_SELECT} WHERE s.id = ?", (parent_id,)).fetchone()
                parent = _row(row)
                parents.append(parent)
                parent_id = parent.parent_id
            return parents

    def ids(self) -> set[int]:
        """The ids of every snapshot (the directories that must be kept)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM snapshots")}

    def remote_snapshots(self) -> list[Snapshot]:
        """The committed snapshots served by the layer server, in creation order."""
        with self._lock:
            rows = self._db.execute(f"{_SELECT} WHERE s.remote IS NOT NULL ORDER BY s.id")
            return [_row(r) for r in rows]

    def counts(self) -> dict[Kind, int]:
        """How many snapshots there are of each kind."""
        with self._lock:
            counts = dict.fromkeys(Kind, 0)
            for kind, n in self._db.execute("SELECT kind, COUNT(*) FROM snapshots GROUP BY kind"):
                counts[Kind(kind)] = n
            return counts

    # ------------------------------------------------------------------ writing

    def create(
        self,
        key: str,
        kind: Kind,
        parent: str = "",
        labels: Mapping[str, str] | None = None,
        *,
        remote: Mapping[str, Any] | None = None,
        prepare: Callable[[Snapshot], None] | None = None,
    ) -> Snapshot:
        """Add a snapshot of ``kind`` named ``key`` on ``parent`` (a committed name, or "").

        Raises :class:`SnapshotExists` if the key is in use, :class:`SnapshotNotFound` if
        the parent does not exist, :class:`SnapshotInvalid` if it is not committed or a
        label is too long. ``prepare(snapshot)`` runs inside the transaction.
        """
        if not key:
            raise SnapshotInvalid("snapshot key must not be empty")
        labels = check_labels(labels or {})
        now = time.time_ns()
        with self._transaction() as db:
            if self._get(db, key) is not None:
                raise SnapshotExists(f"snapshot {key!r}: already exists")
            parent_id = None
            if parent:
                parent_snapshot = self._get(db, parent)
                if parent_snapshot is None:
                    raise SnapshotNotFound(f"parent snapshot {parent!r}: not found")
                if parent_snapshot.kind != Kind.COMMITTED:
                    raise SnapshotInvalid(f"parent {parent!r} is not a committed snapshot")
                parent_id = parent_snapshot.id
            cursor = db.execute(
                "INSERT INTO snapshots (key, kind, parent_id, labels, created_ns, updated_ns, "
                "remote) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    int(kind),
                    parent_id,
                    json.dumps(labels),
                    now,
                    now,
                    json.dumps(dict(remote)) if remote is not None else None,
                ),
            )
            snapshot = self._require(db, key)
            assert snapshot.id == cursor.lastrowid
            if prepare is not None:
                prepare(snapshot)
            return snapshot

    def commit(
        self,
        key: str,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        usage: Callable[[Snapshot], tuple[int, int]] | None = None,
    ) -> Snapshot:
        """Turn the active snapshot ``key`` into the committed snapshot ``name``.

        The snapshot keeps its id (and so its directory) and parent; its labels become
        ``labels``. ``usage(snapshot)`` measures its (size, inodes) inside the transaction.
        Raises :class:`SnapshotNotFound`, :class:`SnapshotExists` (name in use) or
        :class:`SnapshotPrecondition` (not active).
        """
        if not name:
            raise SnapshotInvalid("snapshot name must not be empty")
        labels = check_labels(labels or {})
        with self._transaction() as db:
            snapshot = self._require(db, key)
            if snapshot.kind != Kind.ACTIVE:
                raise SnapshotPrecondition(
                    f"snapshot {key!r} is {snapshot.kind.name.lower()}, not active"
                )
            if self._get(db, name) is not None:
                raise SnapshotExists(f"snapshot {name!r}: already exists")
            size, inodes = usage(snapshot) if usage is not None else (0, 0)
            db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_ns = ?, size = ?, "
                "inodes = ? WHERE id = ?",
                (
                    name,
                    int(Kind.COMMITTED),
                    json.dumps(labels),
                    time.time_ns(),
                    size,
                    inodes,
                    snapshot.id,
                ),
            )
            return self._require(db, name)

    def remove(self, key: str) -> Snapshot:
        """Delete the snapshot ``key`` and return what it was.

        Raises :class:`SnapshotNotFound`, or :class:`SnapshotPrecondition` while other
        snapshots have it as their parent.
        """
        with self._transaction() as db:
            snapshot = self._require(db, key)
            child = db.execute(
                "SELECT key FROM snapshots WHERE parent_id = ? LIMIT 1", (snapshot.id,)
            ).fetchone()
            if child is not None:
                raise SnapshotPrecondition(
                    f"cannot remove snapshot {key!r}: snapshot {child[0]!r} is its child"
                )
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot.id,))
            return snapshot

    def set_labels(self, key: str, labels: Mapping[str, str]) -> Snapshot:
        """Replace the labels of ``key`` (and bump its update time); returns the new row."""
        labels = check_labels(labels)
        with self._transaction() as db:
            snapshot = self._require(db, key)
            db.execute(
                "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
                (json.dumps(labels), time.time_ns(), snapshot.id),
            )
            return self._require(db, key)
