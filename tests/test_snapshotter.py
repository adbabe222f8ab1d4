"""``lazyfs snapshotter``: containerd's snapshot API over gRPC, for real.

The first tests talk to a :class:`SnapshotterServer` through a gRPC channel on a unix
socket, as containerd does, and mount what it answers with the kernel (bind mounts and
overlayfs): prepare, write, commit, stack, view, update labels, list with filters, usage,
remove, cleanup, and the status codes containerd maps back to its errors.

The end-to-end tests start a private containerd 1.6 (Debian package) whose only
snapshotter for CRI is the ``lazyfs`` proxy plugin (``tests/harness/containerd_lazyfs``),
with the snapshotter and its layer server as separate processes, as in production: a
zstd:chunked image pulled through CRI's ``PullImage`` becomes remote snapshots (nothing
downloaded but the layer indexes), ``ctr run`` starts a container on them, and the bytes
fetched before it printed are a small share of the image; the snapshotter is killed and
restarted and its committed snapshots and their mounts work again; a plain gzip image goes
through ordinary snapshots. Nothing stays mounted or running afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trio
from google.protobuf import field_mask_pb2

from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from lazyfs.snapshotter.layers import LayerServer
from lazyfs.snapshotter.proto import snapshots_pb2 as pb
from lazyfs.snapshotter.proto import snapshots_pb2_grpc
from lazyfs.snapshotter.server import SnapshotterServer
from tests.harness.containerd import ContainerdServer, CtrError
from tests.harness.containerd_lazyfs import (
    SnapshotterProcess,
    cri_pull,
    lazyfs_containerd,
    mounts_under,
    unmount_all_under,
    write_hosts_toml,
)
from tests.harness.images import Entry, build_image, push_image
from tests.harness.rootfs import busybox_entries

if os.geteuid() != 0:
    pytest.fail("the snapshotter tests mount filesystems: run them as root", pytrace=False)


def _mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(path))]


@contextlib.contextmanager
def mounted(mounts, target: Path) -> Iterator[Path]:
    """Mount the snapshot mounts ``mounts`` (a gRPC answer) at ``target``, as containerd would."""
    target.mkdir(parents=True, exist_ok=True)
    assert len(mounts) == 1, mounts
    mount = mounts[0]
    options = list(mount.options)
    if mount.type == "bind":
        flags = ["--rbind"] if "rbind" in options else ["--bind"]
        subprocess.run(["mount", *flags, mount.source, str(target)], check=True)
        if "ro" in options:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
    else:
        opts = ",".join(options)
        subprocess.run(
            ["mount", "-t", mount.type, "-o", opts, mount.source, str(target)], check=True
        )
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[SnapshotterServer, snapshots_pb2_grpc.SnapshotsStub]]:
    root = tmp_path / "root"
    server = SnapshotterServer(root, tmp_path / "snapshotter.sock", metrics_address="127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"unix:{server.address}")
    try:
        yield server, snapshots_pb2_grpc.SnapshotsStub(channel)
    finally:
        channel.close()
        server.stop()
        assert _mounts_under(tmp_path) == [], "a test left a mount behind"


def _code(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        answer = call(*args, **kwargs)
        if hasattr(answer, "__next__"):  # a server stream fails when it is read
            list(answer)
    return info.value.code()


def test_ordinary_snapshots_stack_as_overlays(served, tmp_path):
    server, stub = served
    base = stub.Prepare(pb.PrepareSnapshotRequest(key="extract-1", labels={"a": "1"}))
    assert [(m.type, list(m.options)) for m in base.mounts] == [("bind", ["rw", "rbind"])]
    with mounted(base.mounts, tmp_path / "m1") as m:
        (m / "etc").mkdir()
        (m / "etc" / "hello").write_text("from the base layer\n")
        (m / "gone").write_text("deleted above\n")
    stub.Commit(pb.CommitSnapshotRequest(key="extract-1", name="layer-1"))

    upper = stub.Prepare(pb.PrepareSnapshotRequest(key="extract-2", parent="layer-1"))
    (mount,) = upper.mounts
    assert mount.type == "overlay"
    assert any(o.startswith("upperdir=") for o in mount.options)
    with mounted(upper.mounts, tmp_path / "m2") as m:
        assert (m / "etc" / "hello").read_text() == "from the base layer\n"
        (m / "gone").unlink()
        (m / "etc" / "new").write_text("second layer\n")
    stub.Commit(pb.CommitSnapshotRequest(key="extract-2", name="layer-2"))

    container = stub.Prepare(pb.PrepareSnapshotRequest(key="container", parent="layer-2"))
    assert list(stub.Mounts(pb.MountsRequest(key="container")).mounts) == list(container.mounts)
    lowerdir = next(o for o in container.mounts[0].options if o.startswith("lowerdir="))
    assert lowerdir.count(":") == 1  # two parents, nearest first
    assert lowerdir.split("=", 1)[1].split(":")[0].startswith(str(server.root / "snapshots"))
    with mounted(container.mounts, tmp_path / "m3") as m:
        assert sorted(os.listdir(m / "etc")) == ["hello", "new"]
        assert not (m / "gone").exists()
        (m / "scratch").write_text("x" * 10000)
    assert stub.Usage(pb.UsageRequest(key="container")).size >= 10000

    # A view of one parent is a read-only bind mount of it; of two, a read-only overlay.
    view = stub.View(pb.ViewSnapshotRequest(key="view-1", parent="layer-1"))
    assert [(m.type, sorted(m.options)) for m in view.mounts] == [("bind", ["rbind", "ro"])]
    with mounted(view.mounts, tmp_path / "v1") as m:
        assert (m / "gone").exists()
        with pytest.raises(OSError):
            (m / "new").write_text("no")
    view2 = stub.View(pb.ViewSnapshotRequest(key="view-2", parent="layer-2"))
    assert view2.mounts[0].type == "overlay"
    assert not any(o.startswith("upperdir=") for o in view2.mounts[0].options)
    with mounted(view2.mounts, tmp_path / "v2") as m:
        assert (m / "etc" / "new").read_text() == "second layer\n"

    info = stub.Stat(pb.StatSnapshotRequest(key="layer-2")).info
    assert (info.name, info.parent, info.kind) == ("layer-2", "layer-1", pb.COMMITTED)
    assert info.created_at.seconds > 0
    usage = stub.Usage(pb.UsageRequest(key="layer-1"))
    assert usage.size > 0 and usage.inodes == 4  # fs, etc, etc/hello, gone

    for key in ("container", "view-1", "view-2", "layer-2", "layer-1"):
        stub.Remove(pb.RemoveSnapshotRequest(key=key))
    assert list(stub.List(pb.ListSnapshotsRequest())) == []
    assert os.listdir(server.root / "snapshots") == []


def test_errors_containerd_expects(served):
    _, stub = served
    stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
    assert _code(stub.Prepare, pb.PrepareSnapshotRequest(key="a")) == grpc.StatusCode.ALREADY_EXISTS
    assert (
        _code(stub.Prepare, pb.PrepareSnapshotRequest(key="b", parent="nope"))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        _code(stub.Prepare, pb.PrepareSnapshotRequest(key="b", parent="a"))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert _code(stub.Stat, pb.StatSnapshotRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    assert _code(stub.Mounts, pb.MountsRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    assert _code(stub.Remove, pb.RemoveSnapshotRequest(key="nope")) == grpc.StatusCode.NOT_FOUND
    assert (
        _code(stub.Commit, pb.CommitSnapshotRequest(key="nope", name="n"))
        == grpc.StatusCode.NOT_FOUND
    )
    stub.Commit(pb.CommitSnapshotRequest(key="a", name="committed"))
    assert (
        _code(stub.Mounts, pb.MountsRequest(key="committed")) == grpc.StatusCode.FAILED_PRECONDITION
    )
    stub.View(pb.ViewSnapshotRequest(key="v", parent="committed"))
    assert (
        _code(stub.Commit, pb.CommitSnapshotRequest(key="v", name="x"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        _code(stub.Remove, pb.RemoveSnapshotRequest(key="committed"))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    stub.Prepare(pb.PrepareSnapshotRequest(key="c", parent="committed"))
    assert (
        _code(stub.Commit, pb.CommitSnapshotRequest(key="c", name="committed"))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    big = {"k": "v" * 5000}
    assert (
        _code(stub.Prepare, pb.PrepareSnapshotRequest(key="d", labels=big))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (
        _code(stub.List, pb.ListSnapshotsRequest(filters=['name=="x']))
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_update_list_cleanup_and_metrics(served):
    server, stub = served
    stub.Prepare(pb.PrepareSnapshotRequest(key="a", labels={"keep": "1", "drop": "2"}))
    stub.Commit(pb.CommitSnapshotRequest(key="a", name="base", labels={"keep": "1", "drop": "2"}))
    stub.Prepare(pb.PrepareSnapshotRequest(key="top", parent="base"))

    def update(name, labels, *paths):
        info = pb.Info(name=name, labels=labels)
        mask = field_mask_pb2.FieldMask(paths=list(paths))
        return stub.Update(pb.UpdateSnapshotRequest(info=info, update_mask=mask)).info

    # labels.KEY sets or deletes one label; no mask replaces them all.
    info = update("base", {"new": "3"}, "labels.new", "labels.drop")
    assert dict(info.labels) == {"keep": "1", "new": "3"}
    assert dict(update("base", {"only": "this"}).labels) == {"only": "this"}
    assert _code(update, "base", {}, "parent") == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(update, "nope", {}) == grpc.StatusCode.NOT_FOUND
    assert dict(stub.Stat(pb.StatSnapshotRequest(key="base")).info.labels) == {"only": "this"}

    def listed(*filters):
        return [i.name for r in stub.List(pb.ListSnapshotsRequest(filters=filters)) for i in r.info]

    assert listed() == ["base", "top"]
    assert listed("kind==active") == ["top"]
    assert listed('parent=="base"') == ["top"]
    assert listed("labels.only==this", "name==top") == ["base", "top"]

    # Cleanup removes directories the metadata does not know (e.g. left by a crash).
    stray = server.root / "snapshots" / "999"
    (stray / "fs").mkdir(parents=True)
    stub.Cleanup(pb.CleanupRequest())
    assert not stray.exists()
    assert len(os.listdir(server.root / "snapshots")) == 2

    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as response:
        text = response.read().decode()
    assert 'lazyfs_snapshotter_snapshots{kind="active"} 1' in text
    assert 'lazyfs_snapshotter_grpc_requests_total{method="Update",code="OK"} 2' in text
    assert 'lazyfs_snapshotter_grpc_errors_total{method="Update",code="INVALID_ARGUMENT"} 1' in text


def test_state_survives_a_restart(tmp_path):
    root = tmp_path / "root"
    sock = tmp_path / "s.sock"
    with SnapshotterServer(root, sock), grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        mounts = stub.Prepare(pb.PrepareSnapshotRequest(key="a")).mounts
        with mounted(mounts, tmp_path / "m") as m:
            (m / "file").write_text("kept\n")
        stub.Commit(pb.CommitSnapshotRequest(key="a", name="base"))
        stub.Prepare(pb.PrepareSnapshotRequest(key="top", parent="base"))
    assert not sock.exists()
    with SnapshotterServer(root, sock), grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = snapshots_pb2_grpc.SnapshotsStub(channel)
        mounts = stub.Mounts(pb.MountsRequest(key="top")).mounts
        with mounted(mounts, tmp_path / "m") as m:
            assert (m / "file").read_text() == "kept\n"
    assert _mounts_under(tmp_path) == []


# ---------------------------------------------------------------------------- end to end

K8S = "k8s.io"  # the namespace CRI pulls into
BULK = 6 * 1024 * 1024  # incompressible bytes the containers never read


@dataclass
class Stack:
    work: Path
    root: Path
    snapshotter: SnapshotterProcess
    containerd: ContainerdServer
    layers: LayerServer
    chunked: str
    plain: str

    def stub(self) -> snapshots_pb2_grpc.SnapshotsStub:
        channel = grpc.insecure_channel(f"unix:{self.snapshotter.address}")
        return snapshots_pb2_grpc.SnapshotsStub(channel)

    def run(self, image: str, *command: str) -> str:
        name = f"c-{uuid.uuid4().hex[:10]}"
        result = self.containerd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            "lazyfs",
            image,
            name,
            *command,
            namespace=K8S,
            timeout=60,
        )
        return result.stdout

    def metrics(self) -> str:
        log = self.snapshotter.log_path.read_text()
        address = re.findall(r"event=serving .* metrics=(\S+)", log)[-1]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            return response.read().decode()

    def fetched(self) -> int:
        return self.layers.stats()["registry"]["bytes_received"]


def _push_images(registry) -> tuple[str, str]:
    """Two busybox images with a big file nobody reads, sharing no layer: the first
    converted to zstd:chunked, the second plain gzip. Returns their references."""
    bulk = [Entry("srv/bulk.bin", data=os.urandom(BULK))]
    lazy = build_image(
        [busybox_entries(), bulk, [Entry("etc/motd", data=b"hello from a lazy layer\n")]]
    )
    plain = build_image(
        [
            [*busybox_entries(), Entry("etc/flavour", data=b"plain\n")],
            bulk,
            [Entry("etc/motd", data=b"hello from an ordinary layer\n")],
        ]
    )
    name = f"{registry.host}/snapshotter/busybox-{uuid.uuid4().hex[:8]}"
    gzip_ref = Reference.parse(f"{name}:gzip")
    plain_ref = Reference.parse(f"{name}:plain")
    chunked = f"{name}:zstd-chunked"

    async def main():
        async with RegistryClient() as client:
            await push_image(client, gzip_ref, lazy)
            await push_image(client, plain_ref, plain)
            await convert_image(
                open_store(str(gzip_ref), client),
                open_store(chunked, client),
                ConvertOptions(chunk_size=64 * 1024),
                NullProgress(),
            )

    trio.run(main)
    return chunked, str(plain_ref)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, registry) -> Iterator[Stack]:
    for binary in ("/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing (Debian packages containerd, runc)", pytrace=False)
    work = tmp_path_factory.mktemp("lazyfs-ctrd")
    root = work / "lazyfs"
    hosts = work / "hosts"
    write_hosts_toml(hosts, registry.host, registry.url)
    snapshotter = SnapshotterProcess(
        root,
        work / "snapshotter.sock",
        log_path=work / "snapshotter.log",
        args=("--metrics-address", "127.0.0.1:0"),
    )
    containerd = lazyfs_containerd(work / "containerd", snapshotter.address, hosts)
    layers = LayerServer(root)
    chunked, plain = _push_images(registry)
    try:
        snapshotter.start()
        containerd.start()
        yield Stack(work, root, snapshotter, containerd, layers, chunked, plain)
    finally:
        try:
            if containerd.running:
                listed = containerd.ctr("containers", "ls", "-q", namespace=K8S, check=False)
                for name in listed.stdout.split():
                    containerd.ctr("tasks", "kill", "-s", "KILL", name, namespace=K8S, check=False)
                    containerd.ctr("containers", "rm", name, namespace=K8S, check=False)
        finally:
            containerd.stop()
            snapshotter.stop()
            layers.stop()
            unmount_all_under(work)
    assert mounts_under(work) == [], "the end-to-end tests left mounts behind"


def _committed(stack: Stack) -> list:
    infos = [i for r in stack.stub().List(pb.ListSnapshotsRequest()) for i in r.info]
    return [i for i in infos if i.kind == pb.COMMITTED]


def test_cri_pull_runs_a_container_on_lazy_layers(stack, registry):
    before = stack.fetched() if stack.layers.ping() else 0
    image_ref = cri_pull(stack.containerd.address, stack.chunked)
    assert image_ref.startswith("sha256:")
    # Every layer became a remote snapshot: committed in lazyfs, served by the layer server.
    store_view = {i.name: i for i in _committed(stack)}
    served = {Path(layer["path"]).name for layer in stack.layers.list_layers()}
    assert len(served) == 3, stack.layers.list_layers()
    assert len(store_view) == 3
    for info in store_view.values():
        assert info.labels["containerd.io/snapshot.ref"] == info.name
        assert info.labels["containerd.io/snapshot/cri.layer-digest"].split(":")[1] in served
    # containerd did not download them: its content store has no layer blobs.
    content = stack.containerd.ctr("content", "ls", "-q", namespace=K8S).stdout.split()
    digests = {i.labels["containerd.io/snapshot/cri.layer-digest"] for i in store_view.values()}
    assert not digests & set(content), "containerd downloaded a lazily served layer"

    output = stack.run(stack.chunked, "sh", "-c", "cat /etc/motd; ls /srv")
    assert output == "hello from a lazy layer\nbulk.bin\n"
    fetched = stack.fetched() - before
    blob_bytes = sum(layer["size"] for layer in stack.layers.list_layers() if "size" in layer)
    print(f"fetched {fetched} bytes of {blob_bytes} before the container printed")
    assert blob_bytes > BULK
    assert 0 < fetched < 0.25 * blob_bytes, stack.layers.stats()["registry"]
    # The snapshotter's metrics include the layer server's numbers.
    metrics = stack.metrics()
    assert re.search(r"^lazyfs_fetched_bytes_total [1-9]", metrics, re.M), metrics
    assert 'lazyfs_snapshotter_snapshots{kind="committed"} 3' in metrics
    assert 'grpc_requests_total{method="Prepare",code="ALREADY_EXISTS"} 3' in metrics


def _run_after_restart(stack: Stack, *command: str) -> str:
    """Run a container, retrying while containerd reconnects to the new snapshotter."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return stack.run(stack.chunked, *command)
        except CtrError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_snapshotter_restart_keeps_committed_snapshots(stack):
    cri_pull(stack.containerd.address, stack.chunked)
    before = sorted(i.name for i in _committed(stack))
    assert len(before) == 3
    layerd_pid = stack.layers.ping()["pid"]

    # A crash of the snapshotter alone: the layer server and its mounts stay.
    stack.snapshotter.kill()
    stack.snapshotter.start()
    assert stack.layers.ping()["pid"] == layerd_pid
    assert sorted(i.name for i in _committed(stack)) == before
    assert _run_after_restart(stack, "cat", "/etc/motd") == "hello from a lazy layer\n"

    # Both gone (a reboot): the new snapshotter starts a layer server and mounts the
    # committed remote layers again before it answers containerd.
    stack.snapshotter.kill()
    stack.layers.stop()
    assert not stack.layers.ping()
    stack.snapshotter.start()
    assert stack.layers.ping()["pid"] != layerd_pid
    assert len(stack.layers.list_layers()) == 3
    assert sorted(i.name for i in _committed(stack)) == before
    output = _run_after_restart(stack, "sh", "-c", "cat /etc/motd; head -c 4 /srv/bulk.bin | wc -c")
    assert output == "hello from a lazy layer\n4\n"
    log = stack.snapshotter.log_path.read_text()
    assert log.count("event=restore restored=3 failed=0") == 2, log[-2000:]


def test_plain_image_goes_through_ordinary_snapshots(stack):
    cri_pull(stack.containerd.address, stack.plain)
    output = stack.run(stack.plain, "sh", "-c", "cat /etc/motd; wc -c < /srv/bulk.bin")
    assert output == f"hello from an ordinary layer\n{BULK}\n"
    # containerd unpacked each layer into an ordinary snapshot and committed it under its
    # own namespaced name (remote ones are named by the bare chain ID).
    committed = _committed(stack)
    ordinary = [i for i in committed if i.name.startswith(K8S + "/")]
    assert len(ordinary) == 3, [i.name for i in committed]
    assert all("containerd.io/snapshot/cri.layer-digest" in i.labels for i in ordinary)
    assert "event=remote-fallback" in stack.snapshotter.log_path.read_text()


def test_removed_images_release_their_snapshots_and_layers(stack):
    """containerd's garbage collector removes the snapshots; remote layers are let go."""
    images = stack.containerd.ctr("images", "ls", "-q", namespace=K8S).stdout.split()
    assert images
    stack.containerd.ctr("images", "rm", "--sync", *images, namespace=K8S)
    assert _committed(stack) == []
    assert stack.layers.list_layers() == []
    assert os.listdir(stack.root / "snapshots") == []
