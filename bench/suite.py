"""The whole benchmark suite: cold start, bytes, throughput, metadata, memory, conversion.

``python -m bench.suite`` (what ``scripts/bench`` runs without a part name) measures lazyfs
against the full pull, in one run, on shaped networks (:mod:`bench._netem`), reusing the
parts' own code (:mod:`bench.convert` builds the images and times conversions,
:mod:`bench.run` the cold starts, :mod:`bench.mount` the reads, walks and mounts):

1. **Images**, built once and cached in ``bench/.cache/`` (debootstrap, umoci): Debian
   bookworm minbase; minbase + python3; and (full mode) a big one, minbase + python3,
   build-essential, golang, clang and gfortran (over 1 GB of tar). Each is pushed to a
   loopback registry (storage on tmpfs) as a one-layer image with a gzip layer, with a
   plain zstd layer (the same tar, ``zstd -3``), and converted by
   :func:`lazyfs.convert.convert_image` (timed: the conversion throughput).
2. **Networks** (:data:`bench._netem.PROFILES`): loopback, unshaped (the registry
   itself); 1 Gbit/s with 2 ms RTT; 100 Mbit/s with 20 ms RTT (the same storage served by a
   second registry in a network namespace, behind a rate-limited veth and a delaying
   proxy). Every client reaches the registry the same way within a profile.
3. **Cold start**, per profile, image and command (``python3 -c 'print(1)'``, ``sh -c
   true``), sides taking turns, from empty caches: ``lazyfs run`` of the converted image,
   ``lazyfs run`` of the gzip image, containerd's ``ctr image pull`` + ``ctr run`` of the
   gzip image (and of the zstd image for the python3 image), and containerd with ``lazyfs
   snapshotter`` as its snapshotter (CRI ``PullImage`` of the converted image, then ``ctr
   run --snapshotter lazyfs``; :func:`snapshotter_once`); the phases of each, the bytes
   fetched, and the warm start (the same command again, caches full).
4. **Throughput**, per profile: a 512 MiB file of random bytes read sequentially cold and
   warm and 4 KiB random reads, lazyfs against the same file on the local disk, and the
   link itself (the converted blob fetched whole with curl).
5. **Metadata and memory** (loopback only: the link does not matter once the index is
   fetched): a walk of the 100,000-file image against the native tree, the mount time and
   the daemon's peak RSS for 100,000 and 1,000,000 files.

``--quick``: loopback only, one run, no big image, a 64 MiB file, 10,000 files, no
million-file image (a few minutes). Writes ``bench/results/<UTC date>-<host>.md`` and
``.json`` and the charts ``…-coldstart.png`` and ``…-throughput.png`` (``-quick`` added for
the quick mode, ``-subset`` when ``--runs``, ``--profiles`` or ``--images`` narrowed it).
Needs root. Nothing is left mounted or running and no namespace is left behind, errors and
Ctrl-C included. Medians; nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

import grpc
import trio
import zstandard

from bench import convert as convert_bench
from bench import mount as mount_bench
from bench import run as run_bench
from bench._common import RESULTS, say, stamp
from bench._common import median as med
from bench._common import percentile as pct
from bench._netem import PROFILES, ShapedNetwork
from lazyfs.errors import LazyfsError
from lazyfs.formats.zstd_chunked_writer import DEFAULT_CHUNK_SIZE
from lazyfs.oci import mediatypes
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.snapshotter.layers import LayerServer
from tests.harness.containerd import CtrError
from tests.harness.containerd_lazyfs import (
    SnapshotterProcess,
    cri_pull,
    lazyfs_containerd,
    mounts_under,
    unmount_all_under,
    write_hosts_toml,
)
from tests.harness.registry import RegistryServer
from tests.harness.service import LazyfsService

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
MB, MiB = 1_000_000, 1024 * 1024

#: The commands: key -> (argv, expected stdout).
COMMANDS = {
    "python3": (("python3", "-c", "print(1)"), "1"),
    "sh": (("sh", "-c", "true"), ""),
}
COMMAND_LABELS = {"python3": "python3 -c 'print(1)'", "sh": "sh -c true"}


@dataclass(frozen=True)
class Spec:
    """An image the suite builds: debootstrap ``include`` on minbase, its commands, sides."""

    key: str
    label: str
    include: tuple[str, ...]
    cmd: tuple[str, ...]
    commands: tuple[str, ...]
    sides: tuple[str, ...]


SPECS = {
    s.key: s
    for s in (
        Spec(
            "minbase",
            "Debian minbase",
            (),
            ("sh",),
            ("sh",),
            ("lazyfs", "lazyfs-gzip", "containerd", "snapshotter", "lazyfs-service"),
        ),
        Spec(
            "python",
            "minbase + python3",
            ("python3",),
            ("python3",),
            ("python3", "sh"),
            (
                "lazyfs",
                "lazyfs-gzip",
                "containerd",
                "containerd-zstd",
                "snapshotter",
                "lazyfs-service",
            ),
        ),
        Spec(
            "big",
            "minbase + python3, build-essential, golang, clang, gfortran",
            ("python3", "build-essential", "golang-1.19-go", "clang", "gfortran"),
            ("python3",),
            ("python3",),
            ("lazyfs", "containerd", "snapshotter", "lazyfs-service"),
        ),
    )
}
#: The cache key of each image's root filesystem (python: bench.convert's own).
ROOTFS_NAMES = {"minbase": "bookworm-minbase", "python": None, "big": "bookworm-minbase+big"}

SIDE_LABELS = {
    "lazyfs": "`lazyfs run`, converted (zstd:chunked)",
    "lazyfs-gzip": "`lazyfs run`, gzip image",
    "containerd": "containerd pull + run, gzip",
    "containerd-zstd": "containerd pull + run, zstd",
    "snapshotter": "containerd + lazyfs snapshotter",
    "lazyfs-service": "`lazyfs run` via a running `lazyfs service`, converted",
}
SHORT_LABELS = {
    "lazyfs": "lazyfs",
    "lazyfs-gzip": "lazyfs gzip",
    "containerd": "ctrd gzip",
    "containerd-zstd": "ctrd zstd",
    "snapshotter": "ctrd+lazyfs",
    "lazyfs-service": "lazyfs svc",
}
#: Chart phases (stacked bottom to top), as in the usual pull/create/run charts.
PHASES = ("fetch", "unpack / index", "create / mount", "run", "start, teardown")
#: containerd's namespace for CRI's images (where CRI PullImage puts them).
CRI_NAMESPACE = "k8s.io"


@dataclass(frozen=True)
class Mode:
    """What one run of the suite measures."""

    name: str
    runs: int
    profiles: tuple[str, ...]
    images: tuple[str, ...]
    size_mib: int
    reads: int
    files: int
    million: bool
    convert_runs: int


MODES = {
    "full": Mode(
        "full", 3, tuple(PROFILES), ("minbase", "python", "big"), 512, 100, 100_000, True, 3
    ),
    "quick": Mode("quick", 1, ("loopback",), ("minbase", "python"), 64, 20, 10_000, False, 1),
}


# ---------------------------------------------------------------- images


def _zstd_layer(tar: Path) -> dict:
    """The tar as one plain zstd -3 stream (cached next to it): path, digest, size."""
    blob = tar.with_suffix(".tar.zst")
    note = tar.with_suffix(".tar.zst.sha256")
    if not (blob.is_file() and note.is_file()):
        say(f"compressing {tar.name} with zstd -3")
        tmp = blob.with_suffix(".tmp")
        cctx = zstandard.ZstdCompressor(level=3, threads=2)
        with open(tar, "rb") as fin, open(tmp, "wb") as fout:
            cctx.copy_stream(fin, fout, read_size=MiB, write_size=MiB)
        with open(tmp, "rb") as f:
            note.write_text("sha256:" + hashlib.file_digest(f, "sha256").hexdigest() + "\n")
        tmp.rename(blob)
    return {
        "path": blob,
        "digest": note.read_text().strip(),
        "size": blob.stat().st_size,
        "mediaType": mediatypes.OCI_LAYER_ZSTD,
    }


@dataclass
class Built:
    """One image as built and cached: its gzip layer, its zstd layer, its config."""

    spec: Spec
    gzip: dict
    zstd: dict
    config: dict
    tar_bytes: int
    entries: int
    debootstrap_s: float | None


def build_image(spec: Spec) -> Built:
    rootfs, seconds = convert_bench.build_rootfs(spec.include, ROOTFS_NAMES[spec.key])
    if seconds is not None:
        say(f"built {rootfs.name} in {seconds:.0f} s")
    layout, tag = convert_bench.build_layout(rootfs, "/usr/bin/" + spec.cmd[0])
    layer = convert_bench.layout_layer(layout, tag)
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    tar = convert_bench.layer_tar(layer)
    note = tar.with_suffix(".entries")
    if not note.is_file():
        note.write_text(str(convert_bench.tar_contents(tar)["entries"]) + "\n")
    return Built(
        spec,
        {**layer, "path": layer["path"]},
        _zstd_layer(tar),
        config,
        tar.stat().st_size,
        int(note.read_text()),
        seconds,
    )


async def publish(host: str, built: list[Built], convert_runs: int) -> dict:
    """Push each image (gzip, zstd) and convert it; returns refs, sizes and conversions."""
    out: dict = {}
    async with RegistryClient() as client:
        for b in built:
            key = b.spec.key
            refs = {
                "gzip": f"{host}/bench/{key}:gzip",
                "zstd": f"{host}/bench/{key}:zstd",
                "converted": f"{host}/bench/{key}-zc-r1:latest",
            }
            say(
                f"pushing {key} (gzip {b.gzip['size'] / MB:.0f} MB, "
                f"zstd {b.zstd['size'] / MB:.0f} MB)"
            )
            # Every image goes up as gzip and as zstd (what registries serve today); the
            # zstd one is measured where the image's sides say so (containerd-zstd).
            for kind in ("gzip", "zstd"):
                layer = b.gzip if kind == "gzip" else b.zstd
                await run_bench._push_gzip(
                    client, Reference.parse(refs[kind]), layer["path"], layer, b.config, b.spec.cmd
                )
            conversions = []
            for r in range(convert_runs if key == "python" else 1):
                say(f"converting {key} to zstd:chunked ({r + 1})")
                dst = f"{host}/bench/{key}-zc-r{r + 1}:latest"
                conversions.append(
                    await convert_bench.convert_once(client, refs["gzip"], dst, DEFAULT_CHUNK_SIZE)
                )
            sizes = {}
            for kind, ref in refs.items():
                layers, total = await run_bench._image_bytes(client, ref)
                sizes[kind] = {"layer": layers, "total": total}
            out[key] = {
                "refs": refs,
                "sizes": sizes,
                "conversions": conversions,
                "tar_bytes": b.tar_bytes,
                "entries": b.entries,
                "debootstrap_s": b.debootstrap_s,
            }
    return out


def _on(host: str, ref: str) -> str:
    """``ref`` with its registry host replaced by ``host``."""
    return host + "/" + ref.split("/", 1)[1]


# ---------------------------------------------------------------- cold start


def _slim(sample: dict) -> dict:
    out = {k: v for k, v in sample.items() if k != "stderr"}
    if "warm" in out:
        out["warm"] = {k: v for k, v in out["warm"].items() if k != "stderr"}
    return out


def _ctr_stop_all(server) -> None:
    """Kill and remove every task and container of CRI's namespace (a failed run's)."""
    listed = server.ctr("containers", "ls", "-q", namespace=CRI_NAMESPACE, check=False)
    for name in listed.stdout.split():
        for args in (("tasks", "kill", "-s", "KILL", name), ("tasks", "rm", "-f", name)):
            with contextlib.suppress(CtrError):
                server.ctr(*args, namespace=CRI_NAMESPACE, check=False, timeout=60)
        with contextlib.suppress(CtrError):
            server.ctr("containers", "rm", name, namespace=CRI_NAMESPACE, check=False)


def snapshotter_once(host: str, ref: str, argv: tuple, expected: str, *, warm: bool) -> dict:
    """One cold start through containerd with ``lazyfs snapshotter`` as its snapshotter.

    A new containerd (CRI on, ``snapshotter = "lazyfs"``, a hosts directory sending
    ``host`` to ``http://host``), a new ``lazyfs snapshotter`` with a new root and chunk
    cache (it starts its own ``lazyfs layerd``); caches dropped; CRI ``PullImage`` of
    ``ref`` (the lazy layers become remote snapshots: only their indexes are fetched), then
    ``ctr run --snapshotter lazyfs --rm``. ``warm``: the same ``ctr run`` again. The bytes
    are the layer server's registry traffic (index reads and chunks) during the pull and
    the first run. containerd, the snapshotter, the layer server, the containers and every
    mount are gone afterwards, errors included.
    """
    workdir = run_bench._next("snapshotter")
    workdir.mkdir(parents=True)
    root = workdir / "lazyfs"
    hosts = workdir / "hosts"
    write_hosts_toml(hosts, host, f"http://{host}")
    snap = SnapshotterProcess(root, workdir / "snapshotter.sock", log_path=workdir / "snap.log")
    server = lazyfs_containerd(
        workdir / "containerd", snap.address, hosts, namespace=CRI_NAMESPACE, log_level="warn"
    )
    layers = LayerServer(root)
    runc_root = Path(tempfile.mkdtemp(prefix="lazyfs-bench-runc-", dir=run_bench._tmpfs_base()))
    cid = f"bench-{workdir.name}-{os.getpid()}"
    try:
        started = time.perf_counter()
        snap.start()
        server.start()
        start_s = time.perf_counter() - started
        base = ["ctr", "--address", server.address, "--namespace", CRI_NAMESPACE, "run"]
        base += ["--rm", "--net-host", "--snapshotter", "lazyfs", "--runc-root", str(runc_root)]
        before = layers.stats()["registry"]["bytes_received"]
        run_bench.drop_caches()
        started = time.perf_counter()
        try:
            cri_pull(server.address, ref, timeout=run_bench.CMD_TIMEOUT)
        except grpc.RpcError as exc:
            raise RuntimeError(f"CRI PullImage of {ref} failed: {exc.details()}") from None
        pull_s = time.perf_counter() - started
        pulled = layers.stats()["registry"]["bytes_received"] - before
        run = run_bench.timed([*base, ref, cid, *argv])
        run_bench._check_output(run, "ctr run --snapshotter lazyfs", expected)
        stats = layers.stats()
        fetched = stats["registry"]["bytes_received"] - before
        out = {
            "containerd_start": start_s,
            "pull": pull_s,
            "fetch": pull_s,
            "unpack": 0.0,
            "run": run.wall,
            "run_first_output": run.first_output,
            "first_output": pull_s + run.first_output,
            "wall": pull_s + run.wall,
            "bytes_fetched": fetched,
            "bytes_pull": pulled,
            "layers": len(layers.list_layers()),
            "registry_requests": stats["registry"].get("requests"),
        }
        if warm:
            again = run_bench.timed([*base, ref, cid + "-warm", *argv])
            run_bench._check_output(again, "ctr run --snapshotter lazyfs (warm)", expected)
            out["warm"] = {"run": again.wall, "first_output": again.first_output}
        return out
    except (LazyfsError, CtrError) as exc:
        raise RuntimeError(f"containerd + lazyfs snapshotter: {exc}") from None
    finally:
        try:
            if server.running:
                _ctr_stop_all(server)
        finally:
            server.stop()
            snap.stop()
            try:
                layers.stop()
            except LazyfsError as exc:
                say(f"stopping the layer server: {exc}")
            unmount_all_under(workdir)
            if mounts_under(workdir):
                say(f"still mounted under {workdir}: {mounts_under(workdir)}")
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(runc_root, ignore_errors=True)


def _cold_start(
    side: str, host: str, refs: dict, argv: tuple, expected: str, service: LazyfsService
) -> dict:
    if side == "snapshotter":
        return snapshotter_once(host, _on(host, refs["converted"]), argv, expected, warm=True)
    if side == "lazyfs-service":
        ref = _on(host, refs["converted"])
        return run_bench.lazyfs_once(ref, argv, expected, warm=True, service=service)
    if side.startswith("lazyfs"):
        ref = refs["converted" if side == "lazyfs" else "gzip"]
        return run_bench.lazyfs_once(_on(host, ref), argv, expected, warm=True)
    ref = refs["zstd" if side == "containerd-zstd" else "gzip"]
    return run_bench.containerd_once(_on(host, ref), argv, expected, warm=True)


def cold_starts(
    host: str, images: dict, mode: Mode, profile: str, errors: list[str] | None = None
) -> dict:
    """Every image, command and side, ``mode.runs`` times, the sides taking turns.

    A sample that fails is left out and its error appended to ``errors``."""
    errors = [] if errors is None else errors
    samples: dict = {}
    # Started before anything is timed, like containerd (and not counted).
    service = LazyfsService(run_bench.LAZYFS, run_bench._next("service")).start()
    try:
        _cold_start_runs(host, images, mode, profile, errors, samples, service)
    finally:
        service.stop()
    return samples


def _cold_start_runs(
    host: str,
    images: dict,
    mode: Mode,
    profile: str,
    errors: list[str],
    samples: dict,
    service: LazyfsService,
) -> None:
    for r in range(mode.runs):
        for key in mode.images:
            spec = SPECS[key]
            refs = images[key]["refs"]
            for ck in spec.commands:
                argv, expected = COMMANDS[ck]
                sides = spec.sides[r % len(spec.sides) :] + spec.sides[: r % len(spec.sides)]
                for side in sides:
                    say(f"{profile} run {r + 1}/{mode.runs}: {key}, {ck}, {side}")
                    try:
                        sample = _cold_start(side, host, refs, argv, expected, service)
                    except RuntimeError as exc:  # reported, and the run goes on
                        say(f"failed: {str(exc)[-300:]}")
                        errors.append(f"{profile}, {key}, {ck}, {side}: {str(exc)[-300:]}")
                        continue
                    sample["order"] = sides.index(side)
                    warm = sample["warm"]["wall" if side.startswith("lazyfs") else "run"]
                    say(f"... {sample['wall']:.2f} s (warm {warm:.2f} s)")
                    samples.setdefault(key, {}).setdefault(ck, {}).setdefault(side, []).append(
                        _slim(sample)
                    )


# ---------------------------------------------------------------- throughput


def _blob_get(host: str, ref: str) -> float:
    """Seconds to GET the (single) layer blob of ``ref`` whole with curl, to /dev/null."""

    async def layer_url() -> str:
        async with RegistryClient() as client:
            resolved = await open_store(_on(host, ref), client).resolve()
        digest = resolved.manifest.layers[0].digest
        return f"http://{host}/v2/{ref.split('/', 1)[1].rsplit(':', 1)[0]}/blobs/{digest}"

    url = trio.run(layer_url)
    started = time.perf_counter()
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - started


def throughput(host: str, img: mount_bench.Image, mode: Mode, profile: str) -> dict:
    """Sequential and random reads of the big file, lazyfs against native, and the link
    (one whole-blob GET: a property of the path, the same in every run)."""
    size = mode.size_mib * MiB
    expected = mount_bench._native_hash(img)
    remote = dataclasses.replace(img, ref=_on(host, img.ref))
    rng = random.Random(mount_bench.SEED)
    step = mount_bench.READ_SIZE
    offsets = [rng.randrange(size // step) * step for _ in range(mode.reads)]
    out: dict = {"seq": [], "seq_native": [], "rand": [], "rand_native": [], "link": []}
    say(f"{profile}: the converted blob whole with curl (the link's own speed)")
    out["link"].append(_blob_get(host, img.ref))
    for r in range(mode.runs):
        say(f"{profile} run {r + 1}/{mode.runs}: reads of {size // MiB} MiB, lazyfs and native")
        out["seq"].append(mount_bench.seq_lazyfs(remote, expected, size))
        out["seq_native"].append(mount_bench.seq_native(img))
        native, datas = mount_bench.rand_native(img, offsets)
        out["rand_native"].append(native)
        out["rand"].append(mount_bench.rand_lazyfs(remote, offsets, datas))
    out["bytes"] = size
    out["blob_bytes"] = img.blob_bytes
    return out


def metadata(files: mount_bench.Image, million: mount_bench.Image | None, mode: Mode) -> dict:
    """Walks of the many-file image against native; mounts of it and of the million."""
    out: dict = {"walk": [], "walk_native": [], "million": [], "mount_times": {}}
    for r in range(mode.runs):
        say(f"run {r + 1}/{mode.runs}: mount and walk {files.name}, lazyfs and native")
        out["walk"].append(mount_bench.walk_lazyfs(files))
        out["walk_native"].append(mount_bench.walk_native(files))
        if million is not None:
            say(f"run {r + 1}/{mode.runs}: mount {million.name}")
            out["million"].append(mount_bench.mount_only(million))
    say(f"mounts of {files.name}, lazyfs's files in the page cache and not")
    out["mount_times"] = mount_bench.mount_times(files, max(mode.runs, 5))
    return out


# ---------------------------------------------------------------- the run


def _publish_apart(host: str, img: mount_bench.Image) -> None:
    """:func:`bench.mount.publish` of ``img`` in a forked child, so that the memory the
    conversion takes goes back to the system when it ends; ``img`` gets the results."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        trio.run(mount_bench.publish, host, [img])
        queue.put({k: getattr(img, k) for k in ("ref", "tar_bytes", "blob_bytes", "convert_s")})

    proc = ctx.Process(target=child)
    proc.start()
    result = None
    try:
        while result is None:
            try:
                result = queue.get(timeout=1)
            except Empty:
                if not proc.is_alive():
                    break
    finally:
        proc.join(timeout=60)
    if result is None or proc.exitcode:
        raise RuntimeError(f"publishing {img.name} failed (exit {proc.exitcode})")
    for key, value in result.items():
        setattr(img, key, value)


def bench(mode: Mode) -> dict:
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    others = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True).stdout
    say(f"mode {mode.name}; load average {load_start[0]:.2f}")
    run_bench.RUN.mkdir(parents=True, exist_ok=True)
    mount_bench.leftover_mounts()
    run_bench._unmount_under(run_bench.RUN)
    shutil.rmtree(run_bench.RUN, ignore_errors=True)
    shutil.rmtree(mount_bench.RUN, ignore_errors=True)
    run_bench.RUN.mkdir(parents=True)
    mount_bench.RUN.mkdir(parents=True)
    mount_bench.CACHE.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    built = [build_image(SPECS[k]) for k in mode.images]
    size = mode.size_mib * MiB
    tar, native = mount_bench._big_image("random", size)
    big_file = mount_bench.Image("random", tar, native, entries=2)
    tar, native = mount_bench._many_image(mode.files, native=True)
    files = mount_bench.Image(f"files-{mode.files}", tar, native, entries=mode.files + 1000)
    million = None
    if mode.million:
        tar, _ = mount_bench._many_image(mount_bench.MILLION, native=False)
        million = mount_bench.Image(
            f"files-{mount_bench.MILLION}", tar, None, entries=mount_bench.MILLION + 1000
        )
    build_s = time.perf_counter() - started

    regdir = Path(tempfile.mkdtemp(prefix="lazyfs-bench-suite-", dir=run_bench._tmpfs_base()))
    server = RegistryServer(regdir / "registry", log_level="warn").start()
    res: dict = {"cold": {}, "throughput": {}, "qdiscs": {}}
    try:
        started = time.perf_counter()
        if million is not None:  # first, apart: converting it takes about 15 GB for a while
            _publish_apart(server.host, million)
        res["images"] = trio.run(publish, server.host, built, mode.convert_runs)
        extra = [big_file, files, *([million] if million else [])]
        trio.run(mount_bench.publish, server.host, extra[:2])
        res["publish_s"] = time.perf_counter() - started
        with ShapedNetwork(regdir / "net") as net:
            net.start_registry(server.storage_dir)
            for name in mode.profiles:
                profile = PROFILES[name]
                host = net.apply(profile) if profile.shaped else server.host
                if profile.rate_mbit is not None:
                    res["qdiscs"][name] = net.qdiscs()
                started = time.perf_counter()
                res["cold"][name] = cold_starts(
                    host, res["images"], mode, name, res.setdefault("errors", [])
                )
                res["throughput"][name] = throughput(host, big_file, mode, name)
                res.setdefault("profile_s", {})[name] = time.perf_counter() - started
        started = time.perf_counter()
        res["metadata"] = metadata(files, million, mode)
        res["metadata_s"] = time.perf_counter() - started
        res["extra_images"] = {
            i.name: {
                "tar_bytes": i.tar_bytes,
                "blob_bytes": i.blob_bytes,
                "convert_s": i.convert_s,
                "entries": i.entries,
            }
            for i in extra
        }
    finally:
        server.stop()
        shutil.rmtree(regdir, ignore_errors=True)
        mount_bench.leftover_mounts()
        run_bench._unmount_under(run_bench.RUN)
        shutil.rmtree(run_bench.RUN, ignore_errors=True)
        shutil.rmtree(mount_bench.RUN, ignore_errors=True)
    res.update(
        {
            **stamp(
                containerd=run_bench.tool_version(["containerd", "--version"]),
                runc=run_bench.tool_version(["runc", "--version"]).split(" (")[0],
            ),
            "mode": dataclasses.asdict(mode),
            "profiles": {n: dataclasses.asdict(PROFILES[n]) for n in mode.profiles},
            "build_s": build_s,
            "load_average": {"start": load_start, "end": os.getloadavg()},
            "pytest_running_at_start": bool(others.strip()),
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "seconds": time.perf_counter() - t0,
        }
    )
    res["summary"] = summarise(res)
    return res


# ---------------------------------------------------------------- summary


def _lazyfs_phases(s: dict) -> dict:
    p = s["phases"]
    parts = {
        "fetch": p.get("resolve", 0.0),
        "unpack / index": p.get("index", 0.0),
        "create / mount": p.get("merge", 0.0) + p.get("mount", 0.0),
        "run": p.get("exec", 0.0) + p.get("run", 0.0),
    }
    parts["start, teardown"] = s["wall"] - sum(parts.values())
    return parts


def _containerd_phases(s: dict) -> dict:
    return {
        "fetch": s["fetch"],
        "unpack / index": s["unpack"],
        "create / mount": 0.0,
        "run": s["run"],
        "start, teardown": 0.0,
    }


def summarise(res: dict) -> dict:
    """Medians, ratios against containerd (gzip) and against native, per profile."""
    out: dict = {"cold": {}, "throughput": {}, "ratios": []}
    for profile, per_image in res["cold"].items():
        for key, per_cmd in per_image.items():
            img = res["images"][key]
            gz = img["sizes"]["gzip"]["layer"]
            for ck, per_side in per_cmd.items():
                rows = {}
                for side, samples in per_side.items():
                    lazy = side.startswith("lazyfs")
                    phases_of = _lazyfs_phases if lazy else _containerd_phases
                    row = {
                        "wall": med(s["wall"] for s in samples),
                        "first_output": med(s["first_output"] for s in samples),
                        "warm": med(s["warm"]["wall" if lazy else "run"] for s in samples),
                        "phases": {ph: med(phases_of(s)[ph] for s in samples) for ph in PHASES},
                        "runs": len(samples),
                    }
                    if "bytes_fetched" in samples[0]:  # measured: lazyfs run, the snapshotter
                        row["bytes"] = med(s["bytes_fetched"] for s in samples)
                    else:
                        kind = "zstd" if side == "containerd-zstd" else "gzip"
                        row["bytes"] = img["sizes"][kind]["total"]
                    row["share_gzip"] = row["bytes"] / gz
                    rows[side] = row
                ref = rows.get("containerd")
                for side, row in rows.items():
                    if ref:
                        row["ratio"] = row["wall"] / ref["wall"]
                        row["warm_ratio"] = row["warm"] / ref["warm"]
                        paired = [
                            a["wall"] / b["wall"]
                            for a, b in zip(per_side[side], per_side["containerd"], strict=False)
                        ]
                        row["paired_ratios"] = paired
                out["cold"].setdefault(profile, {}).setdefault(key, {})[ck] = rows
                if "lazyfs" in rows and ref:
                    lz = rows["lazyfs"]
                    what = f"{profile}, {key}, {COMMAND_LABELS[ck]}"
                    out["ratios"].append(
                        (f"cold start vs containerd pull + run ({what})", lz["ratio"])
                    )
                    out["ratios"].append(
                        (f"warm start vs containerd warm `ctr run` ({what})", lz["warm_ratio"])
                    )
                if "snapshotter" in rows and ref:
                    sn = rows["snapshotter"]
                    what = f"{profile}, {key}, {COMMAND_LABELS[ck]}"
                    out["ratios"].append(
                        (
                            f"containerd + lazyfs snapshotter cold vs containerd ({what})",
                            sn["ratio"],
                        )
                    )
                    out["ratios"].append(
                        (
                            f"containerd + lazyfs snapshotter warm vs containerd ({what})",
                            sn["warm_ratio"],
                        )
                    )
    for profile, t in res["throughput"].items():
        size = t["bytes"]
        row = {
            "link_mbs": med(size / MB / x for x in t["link"]) if t["link"] else float("nan"),
            "cold_mbs": med(size / MB / s["cold"] for s in t["seq"]),
            "warm_mbs": med(size / MB / s["warm"] for s in t["seq"]),
            "cached_mbs": med(size / MB / s["cached"] for s in t["seq"]),
            "native_cold_mbs": med(size / MB / s["cold"] for s in t["seq_native"]),
            "native_warm_mbs": med(size / MB / s["warm"] for s in t["seq_native"]),
            "cpu_cold": med(s["cpu_cold"] for s in t["seq"]),
            "requests": med(s["requests"] for s in t["seq"]),
            "vmhwm": med(s["vmhwm"] for s in t["seq"]),
        }
        # The link's whole blob is the converted one (same bytes the cold read fetches).
        row["link_mbs"] = med(t["blob_bytes"] / MB / x for x in t["link"])
        for side, key in (("lazyfs", "rand"), ("native", "rand_native")):
            for when in ("cold", "warm"):
                values = [v for s in t[key] for v in s[when]]
                row[f"rand_{side}_{when}_p50"] = med(values)
                row[f"rand_{side}_{when}_p90"] = pct(values, 0.9)
        out["throughput"][profile] = row
        out["ratios"] += [
            (
                f"cold sequential read vs native disk ({profile})",
                row["native_cold_mbs"] / row["cold_mbs"],
            ),
            (
                f"cold sequential read vs the link's whole-blob GET ({profile})",
                row["link_mbs"] / row["cold_mbs"],
            ),
            (f"warm re-read vs native ({profile})", row["native_warm_mbs"] / row["warm_mbs"]),
            (
                f"cold random 4 KiB read vs native (p50, {profile})",
                row["rand_lazyfs_cold_p50"] / row["rand_native_cold_p50"],
            ),
        ]  # fmt: skip
    md = res["metadata"]
    walk = {k: med(w[k] for w in md["walk"]) for k in ("cold", "warm", "stat_pass")} | {
        f"native_{k}": med(w[k] for w in md["walk_native"]) for k in ("cold", "warm", "stat_pass")
    }
    walk["entries"] = md["walk"][0]["entries"]
    mounts = {}
    for name, samples in (
        (f"files-{res['mode']['files']}", [w["mount"] for w in md["walk"]]),
        ("files-1000000", [m for m in md["million"] if "error" not in m]),
    ):
        if samples:
            mounts[name] = {
                "wall": med(s["wall"] for s in samples),
                "index": med(s["timings"].get("index", float("nan")) for s in samples),
                "merge": med(s["timings"].get("merge", float("nan")) for s in samples),
                "vmhwm": med(s["vmhwm"] for s in samples),
                "rss": med(s["rss"] for s in samples),
            }
    times = md.get("mount_times") or {}
    out["mount_times"] = {k: med(v) for k, v in times.items()} | {
        f"{k}_runs": len(v) for k, v in times.items()
    }
    out["walk"], out["mounts"] = walk, mounts
    out["ratios"] += [
        ("cold walk vs native", walk["cold"] / walk["native_cold"]),
        ("warm walk vs native", walk["warm"] / walk["native_warm"]),
        ("kernel-cached lstat vs native", walk["stat_pass"] / walk["native_stat_pass"]),
    ]
    conv = res["images"].get("python") or next(iter(res["images"].values()))
    out["convert"] = {
        key: {
            "wall": med(c["wall"] for c in img["conversions"]),
            "mbs": img["tar_bytes"] / MB / med(c["wall"] for c in img["conversions"]),
            "runs": len(img["conversions"]),
            **{
                k: med(c[k] for c in img["conversions"])
                for k in ("fetch", "gunzip", "write", "other")
            },
        }
        for key, img in res["images"].items()
    }
    del conv
    out["ratios"].sort(key=lambda kv: -kv[1])
    return out


# ---------------------------------------------------------------- report


def render(res: dict) -> str:
    s, m = res["summary"], res["machine"]
    out = io.StringIO()

    def w(line: str = "") -> None:
        print(line, file=out)

    load = res["load_average"]
    mode = res["mode"]
    w(f"# lazyfs benchmark suite ({mode['name']}), {res['time']} on {res['host']}")
    w()
    w(
        f"Machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, kernel {m['kernel']}; "
        f"Python {m['python']}; {m['containerd']}; {m['runc']}. Load average (1 min) "
        f"{load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end"
        + (
            "; a pytest run by someone else was going on at the start"
            if res["pytest_running_at_start"]
            else ""
        )
        + f". Whole suite {res['seconds'] / 60:.1f} min (building images and files not cached "
        f"before: {res['build_s']:.0f} s; pushing and converting: {res['publish_s']:.0f} s)."
    )
    w()
    w(
        f"Medians of {mode['runs']} run(s); within a run the sides take turns (the order "
        "rotates), each from empty caches (`sync; echo 3 > /proc/sys/vm/drop_caches`, a new "
        "lazyfs cache directory, a new containerd root). Ratios: lazyfs over the reference "
        "(containerd's gzip pull + run; the native file), < 1 is lazyfs faster. MB = 10^6 bytes."
    )
    w()
    w("Networks: " + "; ".join(
        f"**{n}**: {p['label']}" for n, p in res["profiles"].items()
    ) + " (tbf on a veth between two namespaces, a proxy adding RTT/2 each way; loopback "
        "is the registry itself).")  # fmt: skip
    w()
    py = s["convert"].get("python", {})
    w("## Images")
    w()
    w("| image | entries | tar MB | gzip MB | zstd MB | converted MB | convert s | MB/s of tar |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, img in res["images"].items():
        sz, c = img["sizes"], s["convert"][key]
        w(
            f"| {SPECS[key].label} | {img['entries']:,} | {img['tar_bytes'] / MB:.0f} | "
            f"{sz['gzip']['layer'] / MB:.1f} | "
            + (f"{sz['zstd']['layer'] / MB:.1f}" if "zstd" in sz else "-")
            + " | "
            f"{sz['converted']['layer'] / MB:.1f} | {c['wall']:.2f} | {c['mbs']:.0f} |"
        )
    w()
    w(
        "convert: `lazyfs.convert.convert_image` registry → registry on loopback at "
        f"{res['chunk_size'] // 1024} KiB chunks (median of "
        + ", ".join(f"{SPECS[k].key} {c['runs']}" for k, c in s["convert"].items())
        + " runs); split for the python3 image: "
        + ", ".join(
            f"{k} {py.get(k, float('nan')):.2f} s" for k in ("fetch", "gunzip", "write", "other")
        )
        + "."
    )
    w()
    w("## Cold start")
    w()
    w(
        "| network | image | command | system | to exit s | first output s | ratio | "
        "run by run | MB fetched | % of gzip | warm s | warm ratio | fetch | unpack / index | "
        "create / mount | run | start, teardown |"
    )
    w("|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for profile, per_image in s["cold"].items():
        for key, per_cmd in per_image.items():
            for ck, rows in per_cmd.items():
                for side, r in rows.items():
                    fo = (
                        "" if r["first_output"] != r["first_output"] else f"{r['first_output']:.2f}"
                    )
                    ph = " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
                    w(
                        f"| {profile} | {key} | `{COMMAND_LABELS[ck]}` | {SIDE_LABELS[side]} | "
                        f"{r['wall']:.2f} | {fo} | {r.get('ratio', float('nan')):.2f} | "
                        + ", ".join(f"{x:.2f}" for x in r.get("paired_ratios", []))
                        + f" | {r['bytes'] / MB:.1f} | {r['share_gzip']:.1%} | {r['warm']:.2f} | "
                        f"{r.get('warm_ratio', float('nan')):.2f} | {ph} |"
                    )
    w()
    w(
        "to exit: from starting the command (containerd: `ctr image pull`) to its exit; first "
        "output: to the line `1` (python3 only). ratio: to exit over containerd's gzip pull + "
        "run, of the medians, then run by run. MB fetched: lazyfs's registry client's bytes "
        "(`lazyfs run --verbose`), containerd's the image's blobs; % of the gzip layer. warm: "
        "the same command again right after, caches full (lazyfs: a second `lazyfs run` with "
        "the same cache directory; containerd: a second `ctr run`, the image already "
        "unpacked), ratio against containerd's warm `ctr run`. Phases (s, medians): lazyfs's "
        "`--verbose` resolve (fetch), index (for gzip: streaming and indexing the whole "
        "layer), merge + mount, exec + run, and the rest (interpreter start, imports, "
        "teardown); containerd's pull (fetch), the unpack time `ctr` prints, and `ctr run` "
        "(create, start, run, remove). containerd + lazyfs snapshotter: a new containerd "
        '(CRI, `snapshotter = "lazyfs"`) and a new `lazyfs snapshotter` (new root and '
        "chunk cache, its own `lazyfs layerd`) per run; to exit = CRI `PullImage` of the "
        "converted image (fetch: the layers become remote snapshots, only their indexes "
        "are read) + `ctr run --snapshotter lazyfs --rm` (run); MB fetched: the layer "
        "server's registry traffic (`LayerServer.stats()`) over both (the manifest and "
        "config containerd fetches itself, a few kB, not counted); warm: a second `ctr run`."
    )
    w()
    w("## Throughput")
    w()
    w(
        "| network | link MB/s (whole blob GET) | lazyfs cold MB/s | native cold MB/s | "
        "lazyfs warm MB/s | native warm MB/s | lazyfs chunk cache MB/s | daemon CPU s (cold) | "
        "requests | 4 KiB cold p50 ms | p90 | native cold p50 ms | 4 KiB warm p50 µs | "
        "native warm p50 µs |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for profile, r in s["throughput"].items():
        w(
            f"| {profile} | {r['link_mbs']:.0f} | {r['cold_mbs']:.0f} | "
            f"{r['native_cold_mbs']:.0f} | {r['warm_mbs']:.0f} | {r['native_warm_mbs']:.0f} | "
            f"{r['cached_mbs']:.0f} | {r['cpu_cold']:.2f} | {r['requests']:.0f} | "
            f"{r['rand_lazyfs_cold_p50'] * 1e3:.2f} | {r['rand_lazyfs_cold_p90'] * 1e3:.2f} | "
            f"{r['rand_native_cold_p50'] * 1e3:.2f} | {r['rand_lazyfs_warm_p50'] * 1e6:.1f} | "
            f"{r['rand_native_warm_p50'] * 1e6:.1f} |"
        )
    w()
    w(
        f"A {mode['size_mib']} MiB file of random bytes (incompressible), read with 1 MiB "
        "`readinto` calls on a fresh `lazyfs mount --daemon --no-prefetch` (bench/mount.py); "
        "native: the same file on the local disk (ext4). link: curl of the converted blob "
        "whole through the same path, the most any reader gets from the link. warm: again in "
        "the same mount (page cache); chunk cache: after dropping the page cache. "
        f"{mode['reads']} random 4 KiB `pread`s per run, the same offsets on both sides."
    )
    w()
    wk = s["walk"]
    w("## Metadata and memory (loopback)")
    w()
    w("| | lazyfs s | native s | ratio |")
    w("|---|---:|---:|---:|")
    for k, label in (
        ("cold", f"walk of {wk['entries']:,} entries, cold (`os.walk` + `lstat`)"),
        ("warm", "walk again, warm"),
        ("stat_pass", "`lstat` of every path, kernel-cached"),
    ):
        w(f"| {label} | {wk[k]:.3f} | {wk['native_' + k]:.3f} | {wk[k] / wk['native_' + k]:.2f} |")
    w()
    w(
        "| image | `lazyfs mount --daemon` s | index s | merge s | daemon peak RSS MB | "
        "RSS after mount MB |"
    )
    w("|---|---:|---:|---:|---:|---:|")
    for name, r in s["mounts"].items():
        w(
            f"| {name} | {r['wall']:.2f} | {r['index']:.2f} | {r['merge']:.2f} | "
            f"{r['vmhwm'] / MB:.0f} | {r['rss'] / MB:.0f} |"
        )
    w()
    w(
        "The mounts above come right after the page cache was dropped (for the walks, or "
        "before the million-entry mount)."
    )
    times = s.get("mount_times") or {}
    if "cold" in times:
        w(
            f"`lazyfs mount --daemon` of the {s['walk']['entries']:,}-entry image alone, "
            f"medians of {times['cold_runs']}: {times['warm']:.2f} s with lazyfs's own files "
            f"(Python, its modules) in the page cache, {times['cold']:.2f} s right after "
            "dropping it."
        )
    w()
    if res.get("errors"):
        w("## Failed samples (left out)")
        w()
        for line in res["errors"]:
            w(f"- {line}")
        w()
    w("## Ratios, worst first")
    w()
    w("lazyfs's time over the reference's (> 1: lazyfs slower).")
    w()
    for label, value in s["ratios"]:
        w(f"- {value:.2f}: {label}")
    return out.getvalue()


def render_compact(res: dict) -> str:
    """The headline numbers only: one line per network, image and command, then reads."""
    s = res["summary"]
    out = io.StringIO()

    def w(line: str = "") -> None:
        print(line, file=out)

    w(
        "| network | image | command | lazyfs s | lazyfs gzip s | containerd gzip s | ratio "
        "| lazyfs MB (% of gzip) | warm lazyfs / containerd s | containerd + lazyfs "
        "snapshotter s (ratio, MB, warm s) | via `lazyfs service` s (ratio) |"
    )
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for profile, per_image in s["cold"].items():
        for key, per_cmd in per_image.items():
            for ck, rows in per_cmd.items():
                if "lazyfs" not in rows or "containerd" not in rows:
                    continue
                lz, ct, gz = rows["lazyfs"], rows["containerd"], rows.get("lazyfs-gzip")
                sn = rows.get("snapshotter")
                sv = rows.get("lazyfs-service")
                w(
                    f"| {profile} | {key} | `{COMMAND_LABELS[ck]}` | {lz['wall']:.2f} | "
                    + (f"{gz['wall']:.2f}" if gz else "-")
                    + f" | {ct['wall']:.2f} | {lz['ratio']:.2f} | {lz['bytes'] / MB:.1f} "
                    f"({lz['share_gzip']:.1%}) | {lz['warm']:.2f} / {ct['warm']:.2f} | "
                    + (
                        f"{sn['wall']:.2f} ({sn['ratio']:.2f}, {sn['bytes'] / MB:.1f} MB, "
                        f"{sn['warm']:.2f}) |"
                        if sn
                        else "- |"
                    )
                    + (f" {sv['wall']:.2f} ({sv['ratio']:.2f}) |" if sv else " - |")
                )
    w()
    w(
        "| network | link MB/s | seq cold MB/s lazyfs / native | warm MB/s lazyfs / native | "
        "4 KiB cold ms lazyfs / native |"
    )
    w("|---|---:|---:|---:|---:|")
    for profile, r in s["throughput"].items():
        w(
            f"| {profile} | {r['link_mbs']:.0f} | {r['cold_mbs']:.0f} / "
            f"{r['native_cold_mbs']:.0f} | {r['warm_mbs']:.0f} / {r['native_warm_mbs']:.0f} | "
            f"{r['rand_lazyfs_cold_p50'] * 1e3:.2f} / {r['rand_native_cold_p50'] * 1e3:.2f} |"
        )
    w()
    wk = s["walk"]
    w(
        f"Walk of {wk['entries']:,} entries: cold {wk['cold']:.2f} s "
        f"({wk['cold'] / wk['native_cold']:.2f}x native), warm {wk['warm']:.2f} s "
        f"({wk['warm'] / wk['native_warm']:.2f}x). Mounts: "
        + "; ".join(
            f"{name} {r['wall']:.2f} s, peak RSS {r['vmhwm'] / MB:.0f} MB"
            for name, r in s["mounts"].items()
        )
        + ". Conversion: "
        + ", ".join(f"{k} {c['mbs']:.0f} MB/s of tar" for k, c in s["convert"].items())
        + "."
    )
    return out.getvalue()


# ---------------------------------------------------------------- charts


def charts(res: dict, base: Path) -> list[Path]:
    """The cold-start phases (stacked bars) and the throughput bars, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    paths = []
    profiles = list(s["cold"])
    fig, axes = plt.subplots(len(profiles), 1, figsize=(13, 4.2 * len(profiles)), squeeze=False)
    colors = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8c8c8c")
    for ax, profile in zip(axes[:, 0], profiles, strict=True):
        labels, bottoms, x = [], [], 0
        for key, per_cmd in s["cold"][profile].items():
            for ck, rows in per_cmd.items():
                for side, r in rows.items():
                    bottom = 0.0
                    for i, ph in enumerate(PHASES):
                        v = max(r["phases"][ph], 0.0)
                        ax.bar(x, v, bottom=bottom, color=colors[i], label=ph if x == 0 else None)
                        bottom += v
                    ax.text(x, bottom, f"{r['wall']:.1f}", ha="center", va="bottom", fontsize=7)
                    labels.append(f"{key}\n{ck}\n{SHORT_LABELS[side]}")
                    bottoms.append(bottom)
                    x += 1
                x += 0.5
        ticks = []
        x = 0
        for per_cmd in s["cold"][profile].values():
            for rows in per_cmd.values():
                ticks += [x + i for i in range(len(rows))]
                x += len(rows) + 0.5
        ax.set_xticks(ticks, labels, fontsize=7)
        ax.set_ylabel("seconds to exit")
        ax.set_title(f"Cold start, {PROFILES[profile].label}")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = base.with_name(base.name + "-coldstart.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    t = s["throughput"]
    names = list(t)
    series = (
        ("link", "link_mbs"),
        ("lazyfs cold", "cold_mbs"),
        ("native cold", "native_cold_mbs"),
        ("lazyfs warm", "warm_mbs"),
        ("native warm", "native_warm_mbs"),
    )
    width = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        xs = [j + i * width for j in range(len(names))]
        ys = [t[n][key] for n in names]
        ax1.bar(xs, ys, width, label=label, color=colors[i % len(colors)])
        for xv, yv in zip(xs, ys, strict=True):
            ax1.text(xv, yv, f"{yv:.0f}", ha="center", va="bottom", fontsize=6)
    ax1.set_yscale("log")
    ax1.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax1.set_ylabel("MB/s (log)")
    ax1.set_title(f"Sequential read, {res['mode']['size_mib']} MiB random file")
    ax1.legend(fontsize=8)
    for i, (label, key) in enumerate(
        (("lazyfs cold", "rand_lazyfs_cold_p50"), ("native cold", "rand_native_cold_p50"))
    ):
        xs = [j + i * 0.4 for j in range(len(names))]
        ys = [t[n][key] * 1e3 for n in names]
        ax2.bar(xs, ys, 0.4, label=label, color=colors[i + 1])
        for xv, yv in zip(xs, ys, strict=True):
            ax2.text(xv, yv, f"{yv:.2f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks([j + 0.2 for j in range(len(names))], names)
    ax2.set_ylabel("ms (median)")
    ax2.set_title("Random 4 KiB read, cold")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path = base.with_name(base.name + "-throughput.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
    return paths


def save(res: dict, text: str) -> list[Path]:
    """``bench/results/<date>-<host>.md``, ``.json`` and the charts (the quick mode's with
    ``-quick`` added, so it never replaces a full run's)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if res["mode"]["name"] == "full" else "-" + res["mode"]["name"]
    base = RESULTS / f"{res['date']}-{res['host']}{suffix}"
    written = []
    for ext, data in ((".md", text), (".json", json.dumps(res, indent=1, default=str) + "\n")):
        path = base.with_name(base.name + ext)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(data)
        tmp.rename(path)
        written.append(path)
    return written + charts(res, base)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.suite", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="loopback only, one run, small files")
    parser.add_argument("--runs", type=int, help="runs of every measure (default: 3, quick 1)")
    parser.add_argument("--profiles", help="networks, comma separated: " + ",".join(PROFILES))
    parser.add_argument("--images", help="images, comma separated: " + ",".join(SPECS))
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--render", metavar="JSON", help="only render the report and charts of a saved run"
    )
    parser.add_argument(
        "--compact", action="store_true", help="with --render: the headline table only"
    )
    args = parser.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["summary"] = summarise(res)
        if args.compact:
            print(render_compact(res))
            return 0
        text = render(res)
        print(text)
        if not args.no_save:
            say("wrote " + ", ".join(str(p) for p in save(res, text)))
        return 0
    if os.geteuid() != 0:
        raise SystemExit("bench.suite needs root (namespaces, lazyfs run, containerd, drop_caches)")
    mode = MODES["quick" if args.quick else "full"]
    if args.runs:
        mode = dataclasses.replace(mode, runs=args.runs)
    if args.profiles:
        names = tuple(args.profiles.split(","))
        unknown = [n for n in names if n not in PROFILES]
        if unknown:
            raise SystemExit(f"unknown network profiles {unknown}; known: {list(PROFILES)}")
        mode = dataclasses.replace(mode, profiles=names)
    if args.images:
        names = tuple(args.images.split(","))
        if unknown := [n for n in names if n not in SPECS]:
            raise SystemExit(f"unknown images {unknown}; known: {list(SPECS)}")
        mode = dataclasses.replace(mode, images=names)
    if args.runs or args.profiles or args.images:  # saved apart from the mode's own results
        mode = dataclasses.replace(mode, name=mode.name + "-subset")
    signal.signal(signal.SIGTERM, _interrupted)
    res = bench(mode)
    text = render(res)
    print(text)
    if not args.no_save:
        say("wrote " + ", ".join(str(p) for p in save(res, text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
