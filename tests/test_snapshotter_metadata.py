"""The snapshotter's SQLite metadata and its List filters, without a server.

Checks containerd's snapshot rules as the store enforces them (one namespace for keys and
names, committed parents only, no removal of parents, commit only of active snapshots), that
ids are never reused, that a failing ``prepare`` callback rolls the row back, that the
state survives reopening the database, and the filter expressions containerd sends.
"""

from __future__ import annotations

import sqlite3

import pytest

from lazyfs.snapshotter.filters import compile_filters
from lazyfs.snapshotter.metadata import (
    MAX_LABEL_BYTES,
    Kind,
    MetadataStore,
    SnapshotExists,
    SnapshotInvalid,
    SnapshotNotFound,
    SnapshotPrecondition,
)


@pytest.fixture
def store(tmp_path):
    with MetadataStore(tmp_path / "metadata.db") as store:
        yield store


def test_prepare_commit_and_chain(store):
    a = store.create("a-active", Kind.ACTIVE, labels={"x": "1"})
    committed = store.commit("a-active", "layer-a", {"y": "2"}, usage=lambda s: (4096, 3))
    assert committed.id == a.id
    assert committed.kind == Kind.COMMITTED
    assert committed.labels == {"y": "2"}
    assert (committed.size, committed.inodes) == (4096, 3)
    assert store.find("a-active") is None
    store.create("b-active", Kind.ACTIVE, "layer-a")
    store.commit("b-active", "layer-b")
    top = store.create("container", Kind.ACTIVE, "layer-b")
    assert top.parent == "layer-b"
    assert [s.key for s in store.chain("container")] == ["layer-b", "layer-a"]
    assert store.counts() == {Kind.VIEW: 0, Kind.ACTIVE: 1, Kind.COMMITTED: 2}


def test_keys_and_names_share_one_namespace(store):
    store.create("k", Kind.ACTIVE)
    with pytest.raises(SnapshotExists):
        store.create("k", Kind.VIEW)
    store.create("other", Kind.ACTIVE)
    with pytest.raises(SnapshotExists):
        store.commit("other", "k")
    store.commit("k", "name")
    with pytest.raises(SnapshotExists):
        store.create("name", Kind.ACTIVE)


def test_parent_rules(store):
    with pytest.raises(SnapshotNotFound):
        store.create("k", Kind.ACTIVE, "missing")
    store.create("active", Kind.ACTIVE)
    with pytest.raises(SnapshotInvalid, match="not a committed"):
        store.create("k", Kind.ACTIVE, "active")
    store.commit("active", "base")
    store.create("child", Kind.VIEW, "base")
    with pytest.raises(SnapshotPrecondition, match="child"):
        store.remove("base")
    store.remove("child")
    assert store.remove("base").key == "base"
    with pytest.raises(SnapshotNotFound):
        store.remove("base")


def test_only_active_snapshots_commit(store):
    store.create("view", Kind.VIEW)
    with pytest.raises(SnapshotPrecondition, match="view, not active"):
        store.commit("view", "name")
    with pytest.raises(SnapshotNotFound):
        store.commit("missing", "name")


def test_ids_are_never_reused_and_prepare_failure_rolls_back(store):
    first = store.create("a", Kind.ACTIVE)
    store.remove("a")

    def fail(snapshot):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.create("b", Kind.ACTIVE, prepare=fail)
    assert store.find("b") is None
    second = store.create("b", Kind.ACTIVE)
    assert second.id > first.id  # a removed snapshot's id is not handed out again
    assert store.ids() == {second.id}


def test_labels_limit_and_update(store):
    store.create("k", Kind.ACTIVE, labels={"a": "1"})
    with pytest.raises(SnapshotInvalid, match="4096"):
        store.set_labels("k", {"big": "x" * MAX_LABEL_BYTES})
    before = store.get("k")
    after = store.set_labels("k", {"b": "2"})
    assert after.labels == {"b": "2"}
    assert after.updated_ns >= before.updated_ns
    assert after.created_ns == before.created_ns


def test_state_survives_reopening(tmp_path):
    path = tmp_path / "metadata.db"
    with MetadataStore(path) as store:
        store.create("a", Kind.ACTIVE)
        store.commit("a", "layer")
        store.create(
            "sha256:remote",
            Kind.COMMITTED,
            "layer",
            {"containerd.io/snapshot.ref": "sha256:remote"},
            remote={"ref": "r/x:1", "digest": "sha256:ab", "path": "/l/ab"},
        )
    with MetadataStore(path) as store:
        remote = store.remote_snapshots()
        assert [(s.key, s.parent, s.remote["digest"]) for s in remote] == [
            ("sha256:remote", "layer", "sha256:ab")
        ]
        assert store.get("layer").kind == Kind.COMMITTED
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_filters(store):
    store.create("a", Kind.ACTIVE, labels={"containerd.io/snapshot.ref": "sha256:aa"})
    store.commit("a", "ns/1/sha256:aa", {"containerd.io/snapshot.ref": "sha256:aa"})
    store.create("b", Kind.ACTIVE, "ns/1/sha256:aa", labels={"team": "x"})
    snapshots = store.list()

    def names(*filters):
        match = compile_filters(list(filters))
        return [s.key for s in snapshots if match(s)]

    assert names() == ["ns/1/sha256:aa", "b"]
    # What containerd's metadata layer sends after a remote Prepare.
    assert names('labels."containerd.io/snapshot.ref"==sha256:aa,parent==""') == ["ns/1/sha256:aa"]
    assert names('labels."containerd.io/snapshot.ref"==sha256:aa,parent=="x"') == []
    assert names('parent=="ns/1/sha256:aa"') == ["b"]
    assert names("kind==committed") == ["ns/1/sha256:aa"]
    assert names("kind==Active") == ["b"]
    assert names("labels.team") == ["b"]
    assert names("labels.team!=x") == ["ns/1/sha256:aa"]
    assert names("name~=^ns/") == ["ns/1/sha256:aa"]
    assert names("name==b", "kind==committed") == ["ns/1/sha256:aa", "b"]  # any of them
    with pytest.raises(SnapshotInvalid):
        compile_filters(['name=="unterminated'])
    with pytest.raises(SnapshotInvalid):
        compile_filters(["name~=("])
