"""Benchmark: converting a real Debian image to zstd:chunked, and choosing the chunk size.

``python -m bench.convert`` (or ``scripts/bench convert``):

1. builds a Debian root filesystem with ``debootstrap --variant=minbase --include=python3
   bookworm`` from the machine's own apt mirror (cached in ``bench/.cache/``), drops apt's
   package cache and lists as real images do, and packs it with umoci into a one-layer OCI
   image compressed with gzip (cached too);
2. starts a local CNCF registry (:class:`tests.harness.registry.RegistryServer`) and pushes
   the image there with skopeo;
3. for every chunk size, ``RUNS`` times (interleaved: one run of each size per round):
   :func:`lazyfs.convert.convert_image` registry -> registry into a new repository; the
   wall time is split with a progress listener into fetch, gunzip (with the diff-ID check),
   ``write_zstd_chunked`` and the rest (mostly the push);
4. compares sizes with the gzip original and with plain ``zstd -3`` of the same tar;
5. reads ``READS`` random 4 KiB pieces of the biggest files (those at least as big as the
   largest chunk size) as a mount would on a cache miss: the chunk holding the piece is
   fetched with :meth:`RegistryClient.fetch_ranges` from the loopback registry and decoded
   and verified with :func:`decode_chunk`. The same (file, offset) pairs are read at every
   chunk size, the sizes taking turns read by read; one client serves all the reads (as in
   a mount, the connection stays open; the client caches nothing, so every read is a miss).
   A few reads with a new client each show what connecting adds. The biggest file is also
   read whole, neighbouring chunks merged into ranges of at most 4 MiB.

Prints markdown tables and writes them, with the raw numbers, to
``bench/results/<UTC date>-<short host>-convert.md`` and ``.json``. Medians throughout; no
assertion is made about any number. ``--profile`` instead profiles ``write_zstd_chunked``
on the cached tar with cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio
import zstandard

from bench._common import median as med
from bench._common import percentile as pct
from bench._common import save_results, say, stamp
from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.formats.annotations import (
    ZSTD_CHUNKED_MANIFEST_POSITION,
    ZSTD_CHUNKED_TARSPLIT_POSITION,
)
from lazyfs.formats.chunks import decode_chunk
from lazyfs.formats.detect import find_layer_index
from lazyfs.formats.model import EntryType
from lazyfs.formats.zstd_chunked_writer import DEFAULT_CHUNK_SIZE, write_zstd_chunked
from lazyfs.oci.blobs import RegistryBlob
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "results"

SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("python3",)
KiB, MiB, MB = 1024, 1024 * 1024, 1_000_000
CHUNK_SIZES = (256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB)
RUNS = 3
READS = 100
READ_SIZE = 4 * KiB
BIG_FILES = 10
WHOLE_READS = 5
MERGE_LIMIT = 4 * MiB  # largest merged range (FORMATS.md §9: 1-4 MiB per request)
MIN_TAR_BYTES = 100 * MB
SEED = 20250520


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- the image


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 or one-line sources)."""
    sources = Path("/etc/apt/sources.list.d")
    files = sorted(sources.glob("*.sources")) if sources.is_dir() else []
    for path in files:
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and suite in fields.get("suites", "").split()
                and fields.get("uris")
            ):
                return fields["uris"].split()[0]
    legacy = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]
    for path in legacy:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] != ["deb"]:
                continue
            words = [w for w in words[1:] if not w.startswith("[")]
            if len(words) >= 2 and words[1] == suite:
                return words[0]
    raise SystemExit(f"no apt source for {suite} on this machine to debootstrap from")


def build_rootfs(
    include: tuple[str, ...] = INCLUDE, name: str | None = None
) -> tuple[Path, float | None]:
    """The cached Debian root filesystem; builds it first if needed (returns its seconds).

    ``include``: the packages added to minbase (debootstrap resolves their dependencies);
    ``name``: the cache key (default: the suite, the variant and the packages).
    """
    key = name or f"{SUITE}-{VARIANT}" + "".join(f"+{p}" for p in include)
    root = CACHE / f"rootfs-{key}"
    if (CACHE / f"rootfs-{key}.done").is_file():
        return root, None
    mirror = apt_mirror()
    tmp = CACHE / f"rootfs-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", f"--variant={VARIANT}"]
    if include:
        cmd.append("--include=" + ",".join(include))
    cmd += [SUITE, str(tmp), mirror]
    say(f"building the Debian root filesystem: {' '.join(cmd)}")
    started = time.perf_counter()
    log = CACHE / "debootstrap.log"
    with open(log, "wb") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"debootstrap failed ({result.returncode}); see {log}")
    # As Debian's own images: no downloaded packages, no package lists.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*"):
        for path in tmp.glob(pattern):
            if path.is_file() or path.is_symlink():
                path.unlink()
    seconds = time.perf_counter() - started
    tmp.rename(root)
    (CACHE / f"rootfs-{key}.done").write_text(f"{' '.join(cmd)}\n{seconds:.1f} s\n")
    return root, seconds


def build_layout(rootfs: Path, cmd: str = "/usr/bin/python3") -> tuple[Path, str]:
    """A one-layer OCI image (gzip) of ``rootfs`` in a cached layout; returns (dir, tag).

    ``cmd``: the image config's command.
    """
    layout, tag = CACHE / f"oci-{rootfs.name.removeprefix('rootfs-')}", "debian"
    if (layout / "index.json").is_file() and (CACHE / f"{layout.name}.done").is_file():
        return layout, tag
    say(f"packing {rootfs.name} into an OCI image with umoci")
    shutil.rmtree(layout, ignore_errors=True)
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:{tag}"])
    run(["umoci", "insert", "--image", f"{layout}:{tag}", str(rootfs), "/"])
    run(
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:{tag}",
            "--config.cmd",
            cmd,
            "--config.workingdir",
            "/",
            "--config.env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]
    )
    run(["umoci", "gc", "--layout", str(layout)])
    (CACHE / f"{layout.name}.done").write_text("ok\n")
    return layout, tag


def layout_layer(layout: Path, tag: str) -> dict:
    """The (only) layer descriptor of the image ``tag`` in ``layout``, with its blob path."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )

    def blob(digest: str) -> Path:
        algo, hexd = digest.split(":")
        return layout / "blobs" / algo / hexd

    manifest = json.loads(blob(desc["digest"]).read_text())
    layers = manifest["layers"]
    if len(layers) != 1:
        raise SystemExit(f"expected one layer in {layout}:{tag}, found {len(layers)}")
    return {**layers[0], "path": blob(layers[0]["digest"])}


def layer_tar(layer: dict) -> Path:
    """The layer's uncompressed tar, cached (for plain zstd and profiling)."""
    tar = CACHE / f"layer-{layer['digest'].split(':')[1][:16]}.tar"
    if not tar.is_file():
        tmp = tar.with_suffix(".tmp")
        with gzip.open(layer["path"], "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, MiB)
        tmp.rename(tar)
    return tar


def tar_contents(tar: Path) -> dict:
    """Counts of the tar's entries and its biggest regular files."""
    import tarfile

    counts: dict[str, int] = {}
    files = []
    with tarfile.open(tar, "r:") as tf:
        for info in tf:
            kind = "file" if info.isreg() else "dir" if info.isdir() else "other"
            counts[kind] = counts.get(kind, 0) + 1
            if info.isreg():
                files.append((info.size, info.name))
    files.sort(reverse=True)
    return {
        "entries": sum(counts.values()),
        "regular_files": counts.get("file", 0),
        "directories": counts.get("dir", 0),
        "file_bytes": sum(s for s, _ in files),
        "biggest": [{"path": n, "size": s} for s, n in files[:BIG_FILES]],
    }


def plain_zstd(tar: Path, level: int = 3) -> dict:
    """Size and time of compressing the whole tar as one zstd stream (one thread)."""
    cctx = zstandard.ZstdCompressor(level=level)
    out = CACHE / "plain.tar.zst.tmp"
    started = time.perf_counter()
    with open(tar, "rb") as fin, open(out, "wb") as fout:
        cctx.copy_stream(fin, fout, read_size=MiB, write_size=MiB)
    seconds = time.perf_counter() - started
    size = out.stat().st_size
    out.unlink()
    return {"bytes": size, "seconds": seconds}


# ---------------------------------------------------------------- conversion


class TimingProgress:
    """A :class:`lazyfs.progress.Progress` that notes when each task starts and finishes."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    def add(self, description: str, total: int) -> int:
        self.tasks.append({"what": description, "start": time.perf_counter(), "end": None})
        return len(self.tasks) - 1

    def advance(self, task: int, n: int) -> None:
        pass

    def finish(self, task: int) -> None:
        self.tasks[task]["end"] = time.perf_counter()

    def task(self, prefix: str) -> dict:
        found = [t for t in self.tasks if t["what"].startswith(prefix)]
        if len(found) != 1:
            raise RuntimeError(f"expected one {prefix!r} task, saw {self.tasks}")
        return found[0]


async def convert_once(client: RegistryClient, src: str, dst: str, chunk_size: int) -> dict:
    progress = TimingProgress()
    started = time.perf_counter()
    report = await convert_image(
        open_store(src, client),
        open_store(dst, client),
        ConvertOptions(chunk_size=chunk_size, level=3),
        progress,
    )
    wall = time.perf_counter() - started
    fetch, write = progress.task("fetch"), progress.task("convert")
    (layer,) = report.layers
    if report.uploads.get("uploaded", 0) < 1:
        raise RuntimeError(f"the converted layer was not uploaded: {report.uploads}")
    return {
        "wall": wall,
        "fetch": fetch["end"] - fetch["start"],
        "gunzip": write["start"] - fetch["end"],
        "write": write["end"] - write["start"],
        "other": wall - (write["end"] - fetch["start"]),
        "tar_bytes": layer.tar_bytes,
        "blob_bytes": layer.blob_bytes,
        "source_bytes": layer.source_bytes,
        "blob_digest": layer.digest,
    }


# ---------------------------------------------------------------- reads


class Converted:
    """A converted image in the registry: its layer, the layer's index, blob parts."""

    def __init__(self, chunk_size: int, ref: Reference, desc, index) -> None:
        self.chunk_size, self.ref, self.desc, self.index = chunk_size, ref, desc, index
        self.by_path = {e.path: e for e in index.entries}
        self.toc_zstd = int(desc.annotations[ZSTD_CHUNKED_MANIFEST_POSITION].split(":")[1])
        self.tarsplit_zstd = int(desc.annotations[ZSTD_CHUNKED_TARSPLIT_POSITION].split(":")[1])
        spans = {(c.blob_offset, c.blob_length) for e in index.entries for c in e.chunks}
        self.content_bytes = sum(n for _, n in spans)


async def load_converted(client: RegistryClient, image: str, chunk_size: int) -> Converted:
    resolved = await open_store(image, client).resolve()
    (desc,) = resolved.manifest.layers
    ref = Reference.parse(image)
    blob = RegistryBlob(client, ref, desc.digest, desc.size)
    index = await find_layer_index(blob, media_type=desc.media_type, annotations=desc.annotations)
    if index is None:
        raise RuntimeError(f"{image}: the converted layer has no index")
    return Converted(chunk_size, ref, desc, index)


def big_files(index, at_least: int) -> list:
    """Regular files of at least ``at_least`` bytes (the top ``BIG_FILES`` if fewer than 2)."""
    files = sorted(
        (e for e in index.entries if e.type == EntryType.REG and e.size >= 2 * READ_SIZE),
        key=lambda e: e.size,
        reverse=True,
    )
    chosen = [e for e in files if e.size >= at_least]
    return chosen if len(chosen) >= 2 else files[:BIG_FILES]


def pick_reads(files, n: int, seed: int = SEED) -> list[tuple[str, int]]:
    """``n`` distinct random 4 KiB-aligned (path, offset) pieces, uniform over the files' bytes."""
    rng = random.Random(seed)
    weights = [e.size for e in files]
    picks: dict[tuple[str, int], None] = {}
    while len(picks) < n:
        (e,) = rng.choices(files, weights)
        picks[(e.path, rng.randrange(0, e.size - READ_SIZE + 1) // READ_SIZE * READ_SIZE)] = None
    return list(picks)


async def read_piece(client: RegistryClient, img: Converted, path: str, offset: int) -> dict:
    """A 4 KiB read on a cache miss: fetch the chunk(s) holding it, decode, verify."""
    entry = img.by_path[path]
    end = offset + READ_SIZE
    chunks = [c for c in entry.chunks if c.file_offset < end and offset < c.file_offset + c.size]
    started = time.perf_counter()
    data = await client.fetch_ranges(
        img.ref,
        img.desc.digest,
        [(c.blob_offset, c.blob_length) for c in chunks],
        blob_size=img.desc.size,
    )
    fetched = time.perf_counter()
    piece = b"".join(
        decode_chunk(c, d, what=path)[max(0, offset - c.file_offset) : end - c.file_offset]
        for c, d in zip(chunks, data, strict=True)
    )
    done = time.perf_counter()
    if len(piece) != READ_SIZE:
        raise RuntimeError(f"{path}@{offset}: read {len(piece)} bytes")
    return {
        "path": path,
        "offset": offset,
        "chunks": len(chunks),
        "bytes": sum(c.blob_length for c in chunks),
        "fetch": fetched - started,
        "decode": done - fetched,
        "total": done - started,
        "sha256": hashlib.sha256(piece).hexdigest()[:16],
    }


async def read_whole(client: RegistryClient, img: Converted, path: str) -> dict:
    """A whole file on a cache miss, neighbouring chunks merged into ranges of <= 4 MiB."""
    chunks = [c for c in img.by_path[path].chunks if c.blob_length]
    ranges: list[list[int]] = []
    for c in chunks:
        if (
            ranges
            and ranges[-1][0] + ranges[-1][1] == c.blob_offset
            and (ranges[-1][1] + c.blob_length <= MERGE_LIMIT)
        ):
            ranges[-1][1] += c.blob_length
        else:
            ranges.append([c.blob_offset, c.blob_length])
    started = time.perf_counter()
    data = await client.fetch_ranges(
        img.ref, img.desc.digest, [(o, n) for o, n in ranges], blob_size=img.desc.size
    )
    fetched = time.perf_counter()
    whole = memoryview(b"".join(data))
    base = ranges[0][0]
    out = hashlib.sha256()
    for c in chunks:  # contiguous in the blob, so offsets into the joined ranges hold
        out.update(decode_chunk(c, whole[c.blob_offset - base : c.blob_end - base], what=path))
    done = time.perf_counter()
    return {
        "requests": len(ranges) if len(ranges) == 1 else -(-len(ranges) // 64),
        "bytes": sum(n for _, n in ranges),
        "fetch": fetched - started,
        "decode": done - fetched,
        "total": done - started,
        "sha256": out.hexdigest()[:16],
    }


async def fresh_client_reads(img: Converted, picks) -> list[float]:
    """The same 4 KiB reads, each from a new client (connection set-up included)."""
    times = []
    for path, offset in picks:
        started = time.perf_counter()
        async with RegistryClient() as client:
            await read_piece(client, img, path, offset)
        times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------- the run


def human_size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


async def bench(args) -> dict:
    from tests.harness.registry import RegistryServer

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        say(f"note: load average {load_start[0]:.2f}: other work on this machine slows the timings")
    rootfs, debootstrap_s = build_rootfs()
    layout, tag = build_layout(rootfs)
    layer = layout_layer(layout, tag)
    tar = layer_tar(layer)
    contents = tar_contents(tar)
    tar_bytes = tar.stat().st_size
    if tar_bytes < MIN_TAR_BYTES:
        say(f"warning: the image is only {tar_bytes / MB:.0f} MB uncompressed")
    say(
        f"image: {tar_bytes / MB:.1f} MB tar, {contents['entries']} entries, gzip layer "
        f"{layer['size'] / MB:.1f} MB ({time.perf_counter() - t0:.0f} s to prepare)"
    )

    say("plain zstd -3 of the same tar")
    zstd3 = plain_zstd(tar)

    regdir = CACHE / "registry-run"
    shutil.rmtree(regdir, ignore_errors=True)
    server = RegistryServer(regdir, log_level="warn").start()
    try:
        src = f"{server.host}/bench/debian:gzip"
        say(f"pushing the image to {src} with skopeo")
        run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"oci:{layout}:{tag}",
                f"docker://{src}",
            ]
        )
        conversions: dict[int, list[dict]] = {cs: [] for cs in args.sizes}
        async with RegistryClient() as client:
            for r in range(args.runs):
                for cs in args.sizes:
                    dst = f"{server.host}/bench/debian-zc{cs // KiB}k-r{r + 1}:latest"
                    say(f"round {r + 1}/{args.runs}: convert with {human_size(cs)} chunks")
                    conversions[cs].append(await convert_once(client, src, dst, cs))
            images = {
                cs: await load_converted(
                    client, f"{server.host}/bench/debian-zc{cs // KiB}k-r1:latest", cs
                )
                for cs in args.sizes
            }
            files = big_files(next(iter(images.values())).index, max(args.sizes))
            picks = pick_reads(files, args.reads)
            for img in images.values():  # connect, and read each index's first byte once
                await client.fetch_ranges(img.ref, img.desc.digest, [(0, 1)])
            say(
                f"{len(picks)} random {READ_SIZE // KiB} KiB reads in {len(files)} files, "
                f"at each chunk size in turn"
            )
            reads: dict[int, list[dict]] = {cs: [] for cs in args.sizes}
            for path, offset in picks:
                for cs, img in images.items():
                    reads[cs].append(await read_piece(client, img, path, offset))
            say(f"reading {files[0].path} whole, {WHOLE_READS} times at each chunk size")
            wholes: dict[int, list[dict]] = {cs: [] for cs in args.sizes}
            for _ in range(WHOLE_READS):
                for cs, img in images.items():
                    wholes[cs].append(await read_whole(client, img, files[0].path))
            fresh = []
            if args.fresh and DEFAULT_CHUNK_SIZE in images:
                say(f"{args.fresh} reads with a new client each")
                fresh = await fresh_client_reads(images[DEFAULT_CHUNK_SIZE], picks[: args.fresh])
    finally:
        server.stop()
        shutil.rmtree(regdir, ignore_errors=True)
    load_end = os.getloadavg()

    # Every chunk size must read the same bytes.
    for cs in args.sizes:
        for a, b in zip(reads[cs], reads[args.sizes[0]], strict=True):
            if a["sha256"] != b["sha256"]:
                raise RuntimeError(f"{human_size(cs)} chunks: {a['path']}@{a['offset']} differs")
        if {w["sha256"] for w in wholes[cs]} != {wholes[args.sizes[0]][0]["sha256"]}:
            raise RuntimeError(f"{human_size(cs)} chunks: the whole-file reads differ")

    rows = []
    for cs in args.sizes:
        runs_, samples, img = conversions[cs], reads[cs], images[cs]
        sizes = {c["blob_bytes"] for c in runs_}
        if len(sizes) != 1:
            raise RuntimeError(f"chunk size {cs}: blob sizes differ between runs: {sizes}")
        if sizes != {img.desc.size}:
            raise RuntimeError(f"chunk size {cs}: the report and the manifest disagree")
        rows.append(
            {
                "chunk_size": cs,
                "blob_bytes": img.desc.size,
                "chunks": img.index.chunk_count,
                "toc_bytes": img.index.index_size,
                "toc_zstd_bytes": img.toc_zstd,
                "tarsplit_zstd_bytes": img.tarsplit_zstd,
                "content_frame_bytes": img.content_bytes,
                "read_files_bytes": sum(
                    c.blob_length for f in files for c in img.by_path[f.path].chunks
                ),
                "convert": {
                    k: med([c[k] for c in runs_])
                    for k in ("wall", "fetch", "gunzip", "write", "other")
                },
                "convert_runs": runs_,
                "read_total_median": med([s["total"] for s in samples]),
                "read_total_p90": pct([s["total"] for s in samples], 0.9),
                "read_fetch_median": med([s["fetch"] for s in samples]),
                "read_decode_median": med([s["decode"] for s in samples]),
                "read_bytes_median": med([s["bytes"] for s in samples]),
                "read_bytes_mean": statistics.fmean([s["bytes"] for s in samples]),
                "whole_file": {
                    k: med([w[k] for w in wholes[cs]])
                    for k in ("total", "fetch", "decode", "bytes", "requests")
                },
                "read_samples": samples,
            }
        )
    return {
        **stamp(
            zstandard=zstandard.__version__,
            libzstd=".".join(map(str, zstandard.ZSTD_VERSION)),
            registry=tool_version(["docker-registry", "--version"]),
            umoci=tool_version(["umoci", "--version"]),
        ),
        "image": {
            "debootstrap": f"--variant={VARIANT} --include={','.join(INCLUDE)} {SUITE}",
            "debootstrap_seconds": debootstrap_s,
            "tar_bytes": tar_bytes,
            "gzip_bytes": layer["size"],
            "media_type": layer["mediaType"],
            **contents,
        },
        "zstd3": zstd3,
        "settings": {
            "runs": args.runs,
            "reads": args.reads,
            "read_size": READ_SIZE,
            "whole_reads": WHOLE_READS,
            "merge_limit": MERGE_LIMIT,
            "seed": SEED,
            "level": 3,
        },
        "read_files": [{"path": e.path, "size": e.size} for e in files],
        "fresh_client_reads": fresh,
        "load_average": {"start": load_start, "end": load_end},
        "default_chunk_size": DEFAULT_CHUNK_SIZE,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------- report


def render(res: dict) -> str:
    img, z3 = res["image"], res["zstd3"]
    tar = img["tar_bytes"]
    rows = {r["chunk_size"]: r for r in res["rows"]}
    default = rows.get(res["default_chunk_size"]) or res["rows"][0]
    m = res["machine"]

    def ms(s: float) -> str:
        return f"{s * 1000:.1f}"

    def mb(n: float) -> str:
        return f"{n / MB:.1f}"

    out = io.StringIO()

    def w(s: str = "") -> None:
        print(s, file=out)

    w(f"# convert benchmark, {res['time']} on {res['host']}")
    w()
    load = res["load_average"]
    w(
        f"Machine: {m['cpus']} x {m['cpu']}; Python {m['python']}, zstandard {m['zstandard']} "
        f"(libzstd {m['libzstd']}), {m['registry']}, {m['umoci']}. Load average (1 min) "
        f"{load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end."
    )
    w()
    w(
        f"Image: `debootstrap {img['debootstrap']}` (apt caches dropped), one layer "
        f"({img['media_type']}): tar {mb(tar)} MB, {img['entries']} entries "
        f"({img['regular_files']} regular files, {mb(img['file_bytes'])} MB of file content). "
        "Biggest files: "
        + ", ".join(f"{Path(b['path']).name} {b['size'] / MiB:.1f} MiB" for b in img["biggest"][:5])
        + "."
    )
    w()
    st = res["settings"]
    w(
        f"Medians of {st['runs']} conversions per chunk size and of {st['reads']} random 4 KiB "
        f"reads; zstd level {st['level']}."
    )
    w()
    c = default["convert"]
    w(f"## Conversion registry → registry ({human_size(default['chunk_size'])} chunks)")
    w()
    w("| | seconds | MB/s of tar |")
    w("|---|---:|---:|")
    w(f"| whole `convert_image` (wall) | {c['wall']:.2f} | {tar / MB / c['wall']:.1f} |")
    for key, label in (
        ("fetch", "… fetch the gzip blob (verified)"),
        ("gunzip", "… gunzip to a tar + diff-ID check"),
        ("write", "… `write_zstd_chunked`"),
        ("other", "… the rest (push blob, config, manifest)"),
    ):
        w(f"| {label} | {c[key]:.2f} | {tar / MB / c[key]:.1f} |")
    w(
        f"| for comparison: plain `zstd -3` of the tar, one thread | {z3['seconds']:.2f} | "
        f"{tar / MB / z3['seconds']:.1f} |"
    )
    w()
    w("## Sizes")
    w()
    w("| | bytes | MB | vs tar | vs gzip | vs zstd -3 |")
    w("|---|---:|---:|---:|---:|---:|")
    g = img["gzip_bytes"]
    d = default
    for label, n in (
        ("tar (uncompressed)", tar),
        ("gzip layer (umoci)", g),
        ("plain zstd -3 (one frame)", z3["bytes"]),
        (f"zstd:chunked, {human_size(d['chunk_size'])} chunks", d["blob_bytes"]),
        ("… file content frames", d["content_frame_bytes"]),
        ("… TOC (zstd)", d["toc_zstd_bytes"]),
        ("… tar-split (zstd)", d["tarsplit_zstd_bytes"]),
        (
            "… tar headers and padding frames, footer",
            d["blob_bytes"]
            - d["content_frame_bytes"]
            - d["toc_zstd_bytes"]
            - d["tarsplit_zstd_bytes"],
        ),
    ):
        w(f"| {label} | {n} | {mb(n)} | {n / tar:.3f} | {n / g:.3f} | {n / z3['bytes']:.3f} |")
    w()
    w("## Chunk size")
    w()
    files = res["read_files"]
    whole = files[0]
    w(
        "| chunk | blob MB | vs zstd -3 | chunks | TOC KB (zstd) | convert s | MB/s | "
        "4 KiB read ms | p90 | fetch | decode | KiB fetched per 4 KiB | "
        f"whole {Path(whole['path']).name} ms | read files KB |"
    )
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        mark = " (default)" if r["chunk_size"] == res["default_chunk_size"] else ""
        w(
            f"| {human_size(r['chunk_size'])}{mark} | {mb(r['blob_bytes'])} | "
            f"{(r['blob_bytes'] / z3['bytes'] - 1) * 100:+.1f} % | {r['chunks']} | "
            f"{r['toc_zstd_bytes'] / 1000:.0f} | {r['convert']['wall']:.2f} | "
            f"{tar / MB / r['convert']['wall']:.1f} | {ms(r['read_total_median'])} | "
            f"{ms(r['read_total_p90'])} | {ms(r['read_fetch_median'])} | "
            f"{ms(r['read_decode_median'])} | {r['read_bytes_median'] / KiB:.0f} | "
            f"{ms(r['whole_file']['total'])} | {r['read_files_bytes'] / 1000:.0f} |"
        )
    w()
    w(
        "4 KiB reads: uniform over the bytes of "
        + ", ".join(f"`{f['path']}` ({f['size'] / MiB:.1f} MiB)" for f in files)
        + f" (the files of at least {human_size(max(rows))}); each read fetches the chunk "
        "holding the piece in one range request and decodes and verifies it (fetch + decode = "
        "the read), from one long-lived client over a kept-alive loopback connection (the "
        "client caches nothing, so every read is a miss; the registry's files are in the page "
        "cache). The chunk sizes take turns, read by read. "
        f"Whole file: `{whole['path']}` read {st['whole_reads']} times, neighbouring chunks "
        f"merged into ranges of at most {human_size(st['merge_limit'])} (one request here), "
        'every chunk decoded and verified. "vs zstd -3": the blob\'s size over plain '
        '`zstd -3` of the same tar. "read files KB": the read files as stored (their '
        "chunks' frames): what cutting big files costs in compression."
    )
    if res["fresh_client_reads"]:
        w()
        w(
            f"With a new client for each read ({human_size(res['default_chunk_size'])} chunks, "
            f"{len(res['fresh_client_reads'])} reads): {ms(med(res['fresh_client_reads']))} ms "
            "median, connection set-up included."
        )
    w()
    w(
        f"Whole bench: {res['seconds']:.0f} s"
        + (
            f" (debootstrap {img['debootstrap_seconds']:.0f} s of it)"
            if img["debootstrap_seconds"]
            else ", root filesystem from the cache"
        )
        + "."
    )
    return out.getvalue()


def profile(top: int) -> None:
    """cProfile of ``write_zstd_chunked`` on the cached tar, default chunk size."""
    rootfs, _ = build_rootfs()
    layout, tag = build_layout(rootfs)
    tar = layer_tar(layout_layer(layout, tag))
    out = CACHE / "profile.zst.tmp"
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    result = write_zstd_chunked(tar, out, chunk_size=DEFAULT_CHUNK_SIZE, level=3)
    prof.disable()
    seconds = time.perf_counter() - started
    out.unlink()
    print(
        f"write_zstd_chunked: {result.tar_size / MB:.1f} MB tar in {seconds:.2f} s "
        f"under cProfile ({result.entries} entries, {result.chunks} chunks)"
    )
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.convert", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="conversions per chunk size")
    parser.add_argument(
        "--reads", type=int, default=READS, help="random 4 KiB reads per chunk size"
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s // KiB) for s in CHUNK_SIZES),
        help="chunk sizes in KiB, comma separated",
    )
    parser.add_argument(
        "--fresh",
        type=int,
        default=10,
        help="reads with a new client each, at the default chunk size (0: none)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile write_zstd_chunked on the cached tar instead",
    )
    args = parser.parse_args(argv)
    if args.profile:
        profile(25)
        return 0
    args.sizes = [int(s) * KiB for s in args.sizes.split(",")]
    res = trio.run(bench, args)
    text = render(res)
    print(text)
    if not args.no_save:
        say(f"saved {save_results('convert', res, text)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
