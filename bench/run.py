"""Benchmark: cold start of ``lazyfs run`` against containerd's pull and run, in one run.

``python -m bench.run`` (or ``scripts/bench run``):

1. takes the Debian image of ``bench/convert.py`` (``debootstrap --variant=minbase
   --include=python3 bookworm``, packed by umoci into one gzip layer; built once and cached
   in ``bench/.cache/``), and starts a local CNCF registry
   (:class:`tests.harness.registry.RegistryServer`) whose storage is on tmpfs (``/dev/shm``),
   so that dropping the page cache never sends it to the disk and both sides read the same
   hot blobs over loopback;
2. pushes that image as it is, a one-layer image with the gzip layer
   (``application/vnd.oci.image.layer.v1.tar+gzip``) and its config's ``Cmd`` set to
   ``["python3"]`` (the image people have, and what containerd pulls), and converts it once
   to zstd:chunked with :func:`lazyfs.convert.convert_image` at the default chunk size (what
   lazyfs runs: convert once, run lazily everywhere);
3. finds what the command needs: the files it opens (``strace`` of it in a chroot of the
   root filesystem) and the pages of them it reads (``mincore`` after a cold run in a copy
   of the root filesystem on an ext4 loop device with read-ahead off), and what they are
   as stored in the converted layer (their chunks' frames): the least a lazy reader that
   fetches whole files, or only the chunks read, would move;
4. ``--runs`` times, the four measurements taking turns (the order rotates from run to
   run), each from empty caches and after ``sync; echo 3 > /proc/sys/vm/drop_caches``:

   * **lazyfs, zstd:chunked**: ``python -m lazyfs run --verbose --cache-dir DIR --network
     host IMAGE python3 -c 'print(1)'`` with a new empty ``DIR`` (and ``TMPDIR``, where
     ``lazyfs run`` keeps the container's writable layer) on the local disk; timed from the
     start of the command to the first line on its stdout and to its exit. The verbose
     lines on stderr give the phases (resolve, index, merge, mount, exec, run, total) and
     the bytes fetched from the registry; those bytes are the whole run's, which for
     ``print(1)`` ends right after the output: an upper bound of what was fetched before
     the first output;
   * **lazyfs via a service**: the same command with ``LAZYFS_SERVICE`` naming the socket
     of a ``lazyfs service`` the bench started before the runs (and does not count, like
     containerd's start): the ``lazyfs`` client hands the command to it and a worker forked
     from it (every module already imported) runs it on the client's stdio. The service's
     log must show the run, or the sample fails. The other lazyfs sides run with
     ``LAZYFS_SERVICE=off``;
   * **lazyfs, gzip**: the same command on the gzip image, which lazyfs cannot read lazily
     (it streams the whole layer first): the cost of not converting;
   * **containerd**: a containerd 1.6 (the Debian package, with runc) started by the bench
     (:class:`tests.harness.containerd.ContainerdServer`) with its own new config, root,
     state and socket for every run, its root and state on the local disk, runc's state on
     tmpfs (``/dev/shm``, where it usually is in ``/run``); once it answers (its start
     is not counted: a host's containerd is already running) the caches are dropped and
     ``ctr image pull --plain-http --snapshotter overlayfs IMAGE`` is timed (split into
     fetching and unpacking with the unpack time ctr prints), then ``ctr run --rm --net-host
     --snapshotter overlayfs IMAGE ID python3 -c 'print(1)'``, timed to its first output
     line and to its exit. The container, its snapshot, containerd and its root are removed
     afterwards;

5. reports medians, the ratio of lazyfs's time to the first output to containerd's pull +
   run to the first output, the bytes fetched as a share of the gzip image's compressed
   bytes (what containerd pulls) and of the converted image's, and the issue's two targets
   as PASS/MISS (nothing is asserted about timings; the command's output must be ``1``).
   The ratio is also given run by run (a burst of load hits both sides of a run alike).

In both cases python3's stdout is a pipe, not a terminal, so ``1`` is written when python3
flushes it at exit: "first output" is when the command's output reached the bench, the
same moment for both sides.

Prints markdown tables and writes them, with every sample, to
``bench/results/<UTC date>-<short host>-run.md`` and ``.json``. Needs root (``lazyfs run``,
containerd, dropping the page cache, the loop device). Nothing is left running or mounted,
errors included.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
import zstandard

from bench import convert as convert_bench
from bench._common import median as med
from bench._common import save_results, say, stamp
from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.formats.zstd_chunked_writer import DEFAULT_CHUNK_SIZE
from lazyfs.oci import mediatypes
from lazyfs.oci.digest import Digest
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.containerd import ContainerdServer, CtrError
from tests.harness.registry import RegistryServer
from tests.harness.service import LazyfsService

BENCH = Path(__file__).resolve().parent
RUN = BENCH / ".cache" / "run-run"

MB = 1_000_000
RUNS = 3
COMMAND = ("python3", "-c", "print(1)")
EXPECTED_OUTPUT = "1"
NAMESPACE = "lazyfs-bench"
CMD_TIMEOUT = 600.0
LAZYFS = [sys.executable, "-m", "lazyfs"]
TARGET_RATIO = 0.10
TARGET_SHARE = 0.05
#: Chunk sizes at which the bench sizes the chunks that hold the pages the command reads.
CHUNK_SIZES = (64 * 1024, 128 * 1024, 256 * 1024, 512 * 1024, 1024 * 1024)

#: The measured sides, in the order of the first run (later runs rotate it).
SIDES = ("lazyfs-zstd-chunked", "containerd", "lazyfs-service", "lazyfs-gzip")
#: The sides that are ``lazyfs run`` (the others: containerd).
LAZYFS_SIDES = ("lazyfs-zstd-chunked", "lazyfs-service", "lazyfs-gzip")
LABELS = {
    "lazyfs-zstd-chunked": "`lazyfs run`, zstd:chunked image",
    "lazyfs-service": "`lazyfs run` via a running `lazyfs service`, zstd:chunked image",
    "lazyfs-gzip": "`lazyfs run`, gzip image",
    "containerd": "containerd: `ctr image pull` + `ctr run` (gzip image)",
}
BREAKDOWN_LABELS = {
    "lazyfs-zstd-chunked": "zstd-chunked",
    "lazyfs-service": "zstd-chunked, via the service",
    "lazyfs-gzip": "gzip",
}
#: The phases ``lazyfs run --verbose`` prints, in order.
PHASES = ("resolve", "index", "merge", "mount", "exec", "run", "total")

_PHASE_LINE = re.compile(r"^lazyfs: (\w+)\s+([0-9.]+) ms\s*$")
_FETCHED_LINE = re.compile(r"^lazyfs: fetched\s+([0-9.]+) MB of ([0-9.]+) MB compressed image")
_UNPACK_LINE = re.compile(r"^unpacking [^\n]*\n?done: (\S+)", re.MULTILINE)
_GO_DURATION = re.compile(r"([0-9.]+)(h|ms|m|s|µs|us|ns)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


# ---------------------------------------------------------------- the images


@dataclass
class Images:
    """The two images in the registry and their sizes (bytes as stored)."""

    gzip_ref: str
    chunked_ref: str
    tar_bytes: int
    gzip_layer_bytes: int
    gzip_total_bytes: int  # layer + config + manifest: what ``ctr image pull`` downloads
    chunked_layer_bytes: int
    chunked_total_bytes: int
    convert_s: float
    working_set: dict


def _layout_image() -> tuple[Path, Path, dict, dict]:
    """From bench.convert's cache: the root filesystem, the gzip layer (path), its
    descriptor and the image config."""
    rootfs, built = convert_bench.build_rootfs()
    if built is not None:
        say(f"built the Debian root filesystem in {built:.0f} s")
    layout, tag = convert_bench.build_layout(rootfs)
    layer = convert_bench.layout_layer(layout, tag)
    index = json.loads((layout / "index.json").read_text())
    desc = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    )
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_bytes())
    config_path = layout / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
    return rootfs, layer["path"], layer, json.loads(config_path.read_bytes())


async def _push_gzip(
    client: RegistryClient,
    ref: Reference,
    blob: Path,
    layer: dict,
    config: dict,
    cmd: tuple[str, ...] = ("python3",),
) -> int:
    """The layout's layer as a one-layer image whose config's Cmd is ``cmd``.

    ``layer`` gives the blob's ``mediaType``, ``digest`` and ``size`` (gzip as the layout
    has it, or any other compression of the same tar: the config's diff IDs stay valid).
    Returns the bytes of the config and the manifest.
    """
    config = {**config, "config": {**config.get("config", {}), "Cmd": list(cmd)}}
    config_bytes = json.dumps(config, sort_keys=True).encode()
    await client.push_blob(ref, Digest(layer["digest"]), blob)
    await client.push_blob(ref, Digest.of(config_bytes), config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.OCI_MANIFEST,
        "config": {
            "mediaType": mediatypes.OCI_CONFIG,
            "digest": str(Digest.of(config_bytes)),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": layer["mediaType"],
                "digest": layer["digest"],
                "size": layer["size"],
            }
        ],
    }
    data = json.dumps(manifest).encode()
    await client.push_manifest(ref, data, mediatypes.OCI_MANIFEST)
    return len(config_bytes) + len(data)


async def _image_bytes(client: RegistryClient, ref: str) -> tuple[int, int]:
    """(layer bytes, layers + config + manifest bytes) of ``ref`` as the registry has it."""
    resolved = await open_store(ref, client).resolve()
    layers = sum(layer.size for layer in resolved.manifest.layers)
    return layers, layers + len(resolved.config_bytes) + len(resolved.manifest_bytes)


async def publish(host: str) -> Images:
    """Push the gzip image and convert it to zstd:chunked (default chunk size)."""
    rootfs, blob, layer, config = _layout_image()
    if layer["mediaType"] != mediatypes.OCI_LAYER_GZIP:
        raise SystemExit(f"the cached image's layer is {layer['mediaType']}, not gzip")
    tar = convert_bench.layer_tar(layer)
    gzip_ref = f"{host}/bench/debian:gzip"
    chunked_ref = f"{host}/bench/debian:zstd-chunked"
    async with RegistryClient() as client:
        say(f"pushing the gzip image ({layer['size'] / MB:.1f} MB) to {gzip_ref}")
        await _push_gzip(client, Reference.parse(gzip_ref), blob, layer, config)
        say("converting it to zstd:chunked")
        started = time.perf_counter()
        await convert_image(
            open_store(gzip_ref, client),
            open_store(chunked_ref, client, create=True),
            ConvertOptions(),
            NullProgress(),
        )
        convert_s = time.perf_counter() - started
        gzip_layer, gzip_total = await _image_bytes(client, gzip_ref)
        chunked_layer, chunked_total = await _image_bytes(client, chunked_ref)
        say("the files the command opens (strace in a chroot of the root filesystem)")
        needed = working_set(rootfs)
        if "files" in needed:
            converted = await convert_bench.load_converted(client, chunked_ref, DEFAULT_CHUNK_SIZE)
            needed["stored"] = stored_bytes(converted.index, needed["files"])
            needed["stored_bytes"] = sum(needed["stored"].values())
            needed["toc_bytes"] = converted.toc_zstd
            say("the pages the command reads (mincore, on a copy without read-ahead)")
            read = pages_read(rootfs, needed["files"])
            if "pages" in read:
                needed["pages_read"] = {f: len(n) for f, n in read["pages"].items()}
                needed["read_bytes"] = sum(len(n) for n in read["pages"].values()) * PAGE
                needed["read_chunk_bytes"] = chunks_of_pages(converted.index, read["pages"])
                needed["read_chunk_bytes_at"] = {
                    str(size): chunks_read_at(rootfs, read["pages"], size) for size in CHUNK_SIZES
                }
            else:
                needed["pages_error"] = read["error"]
    say(f"... {convert_s:.1f} s, zstd:chunked layer {chunked_layer / MB:.1f} MB")
    return Images(
        gzip_ref=gzip_ref,
        chunked_ref=chunked_ref,
        tar_bytes=tar.stat().st_size,
        gzip_layer_bytes=gzip_layer,
        gzip_total_bytes=gzip_total,
        chunked_layer_bytes=chunked_layer,
        chunked_total_bytes=chunked_total,
        convert_s=convert_s,
        working_set=needed,
    )


# ---------------------------------------------------------------- the command's files

_STRACE_CALL = re.compile(r'^(\d+) +(openat|execve)\((?:AT_FDCWD, )?"([^"]*)"(.*)\) += (-?\d+)')
_ELF_INTERP = re.compile(rb"(/[\w./-]*ld-linux[\w.-]*)\0")


def _inside(root: Path, path: str, depth: int = 0) -> str | None:
    """``path`` of the chroot ``root`` with its symlinks resolved, relative to ``root``."""
    parts: list[str] = []
    todo = [p for p in path.split("/") if p not in ("", ".")]
    while todo:
        part = todo.pop(0)
        if part == "..":
            parts = parts[:-1]
            continue
        here = root.joinpath(*parts, part)
        if here.is_symlink():
            if depth > 40:
                return None
            link = os.readlink(here)
            base = [] if link.startswith("/") else parts
            todo = [p for p in link.split("/") if p not in ("", ".")] + todo
            parts = list(base)
            depth += 1
            continue
        parts.append(part)
    return "/".join(parts)


def working_set(rootfs: Path) -> dict:
    """The regular files ``COMMAND`` opens, run by strace in a chroot of ``rootfs``.

    Counted from the exec of ``python3`` on: the executable, its ELF interpreter (which the
    kernel loads, so no ``openat`` shows it) and every file opened successfully. Paths are
    relative to the root, symlinks resolved. Returns ``{"files": [...]}`` or, without
    strace, ``{"error": ...}``.
    """
    strace = shutil.which("strace")
    if strace is None:
        return {"error": "strace is not installed"}
    log = RUN / "strace.txt"
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = [strace, "-f", "-qq", "-s", "4096", "-e", "trace=openat,execve", "-o", str(log)]
    argv += ["chroot", str(rootfs.resolve()), *COMMAND]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if result.returncode or result.stdout.strip() != EXPECTED_OUTPUT:
        return {"error": f"strace of the command failed: {result.stderr.strip()[-500:]}"}
    opened: list[str] = []
    started = False
    for line in log.read_text().splitlines():
        m = _STRACE_CALL.match(line)
        if not m or int(m[5]) < 0:
            continue
        call, path, rest = m[2], m[3], m[4]
        if call == "execve":
            started = started or path.rsplit("/", 1)[-1] == COMMAND[0]
            if started:
                opened.append(path)
        elif started and "O_DIRECTORY" not in rest:
            opened.append(path)
    files: list[str] = []
    for path in opened:
        rel = _inside(rootfs, path)
        if rel is None or not (rootfs / rel).is_file() or rel in files:
            continue
        files.append(rel)
        if path == opened[0]:  # the executable: add its ELF interpreter
            with open(rootfs / rel, "rb") as f:
                if (interp := _ELF_INTERP.search(f.read(4096))) is not None:
                    loader = _inside(rootfs, interp[1].decode())
                    if loader and (rootfs / loader).is_file():
                        files.append(loader)
    if not files:
        return {"error": "strace saw no file opened by the command"}
    return {"files": files, "bytes": sum((rootfs / f).stat().st_size for f in files)}


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident_pages(path: Path) -> list[int]:
    """Indexes of the pages of ``path`` in the page cache (``mincore`` of a mapping of it)."""
    size = path.stat().st_size
    if size == 0:
        return []
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path}")
        try:
            pages = -(-size // PAGE)
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path}")
            return [i for i, v in enumerate(vec) if v & 1]
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def pages_read(rootfs: Path, files: list[str]) -> dict:
    """The pages of ``files`` that ``COMMAND`` really reads, run from cold caches.

    A copy of ``rootfs`` on a new ext4 filesystem in a loop device whose read-ahead is off,
    the caches dropped, the command run in a chroot of it; then ``mincore`` says which pages
    of each file were read. (The local disk reads ahead 8 MiB, which would count whole
    files.) Returns ``{file: [page indexes]}`` under ``"pages"``, or ``{"error": ...}``.
    """
    image, mnt = RUN / "pages.ext4", RUN / "pages-mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    size = sum(f.stat().st_size for f in rootfs.rglob("*") if f.is_file() and not f.is_symlink())
    loop = None
    try:
        with open(image, "wb") as f:
            f.truncate(int(size * 1.5) + 64 * MB)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        out = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        )
        loop = out.stdout.strip()
        subprocess.run(["mount", loop, str(mnt)], check=True)
        subprocess.run(["cp", "-a", f"{rootfs}/.", str(mnt)], check=True)
        Path(f"/sys/block/{Path(loop).name}/queue/read_ahead_kb").write_text("0\n")
        drop_caches()
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        result = subprocess.run(
            ["chroot", str(mnt), *COMMAND], capture_output=True, text=True, env=env, timeout=60
        )
        if result.returncode or result.stdout.strip() != EXPECTED_OUTPUT:
            return {"error": f"the command failed in the copy: {result.stderr.strip()[-300:]}"}
        return {"pages": {f: resident_pages(mnt / f) for f in files}}
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"error": f"could not measure the pages read: {exc}"}
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)
        if loop is not None:
            subprocess.run(["losetup", "-d", loop], check=False)
        with contextlib.suppress(OSError):
            mnt.rmdir()
        image.unlink(missing_ok=True)


def chunks_of_pages(index, pages: dict[str, list[int]]) -> int:
    """Stored bytes of the chunks that hold the given pages (each frame counted once)."""
    by_path = {e.path: e for e in index.entries}
    spans: set[tuple[int, int]] = set()
    for f, numbers in pages.items():
        for c in by_path[f].chunks:
            first, last = c.file_offset // PAGE, (c.file_offset + max(c.size, 1) - 1) // PAGE
            if any(first <= n <= last for n in numbers):
                spans.add((c.blob_offset, c.blob_length))
    return sum(length for _, length in spans)


def chunks_read_at(rootfs: Path, pages: dict[str, list[int]], chunk_size: int) -> int:
    """Stored bytes of the chunks holding ``pages`` had the layer been cut at ``chunk_size``.

    Each chunk compressed as ``write_zstd_chunked`` writes it (one zstd frame, level 3 with
    a checksum), so at the converted layer's chunk size this is exactly
    :func:`chunks_of_pages` (identical chunks aside).
    """
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    total = 0
    for f, numbers in pages.items():
        chunks = sorted({n * PAGE // chunk_size for n in numbers})
        with open(rootfs / f, "rb") as fh:
            for k in chunks:
                fh.seek(k * chunk_size)
                if data := fh.read(chunk_size):
                    total += len(cctx.compress(data))
    return total


def stored_bytes(index, files: list[str]) -> dict[str, int]:
    """Bytes of each of ``files``' content frames in a zstd:chunked layer.

    A frame shared by several files (deduplicated content) counts for the first only.
    """
    by_path = {e.path: e for e in index.entries}
    seen: set[tuple[int, int]] = set()
    out = {}
    for f in files:
        spans = {(c.blob_offset, c.blob_length) for c in by_path[f].chunks} - seen
        seen |= spans
        out[f] = sum(length for _, length in spans)
    return out


# ---------------------------------------------------------------- commands


def drop_caches() -> None:
    """Write back dirty pages, then drop the page cache, dentries and inodes."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@dataclass
class Timed:
    """A command's result: wall seconds to its first stdout line and to its exit."""

    argv: list[str]
    returncode: int
    first_output: float  # nan if it printed nothing
    wall: float
    stdout: str
    stderr: str


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM our own child, SIGKILL it 30 s later if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _Watchdog:
    """Stops ``proc`` if it is still running ``seconds`` from now."""

    def __init__(self, proc: subprocess.Popen, seconds: float) -> None:
        self.fired = False
        self._proc = proc
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        if self._proc.poll() is None:
            self.fired = True
            _stop(self._proc)

    def cancel(self) -> None:
        self._timer.cancel()


def timed(argv: list[str], *, env: dict[str, str] | None = None) -> Timed:
    """Run ``argv``; time its first stdout line and its exit (stderr goes to a file)."""
    with tempfile.TemporaryFile(dir=RUN) as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
        )
        assert proc.stdout is not None
        timer = _Watchdog(proc, CMD_TIMEOUT)  # stops a hung command, which ends the reads
        try:
            first = proc.stdout.readline()
            first_output = time.perf_counter() - started if first else float("nan")
            rest = proc.stdout.read()
            returncode = proc.wait()
            wall = time.perf_counter() - started
        finally:
            timer.cancel()
            if proc.poll() is None:
                _stop(proc)
            proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if timer.fired:
        raise RuntimeError(f"{' '.join(argv)} timed out after {CMD_TIMEOUT:.0f} s")
    return Timed(
        argv, returncode, first_output, wall, (first + rest).decode(errors="replace"), stderr
    )


def _check_output(result: Timed, what: str, expected: str = EXPECTED_OUTPUT) -> None:
    if result.returncode != 0 or result.stdout.strip() != expected:
        raise RuntimeError(
            f"{what}: {' '.join(result.argv)} exited with {result.returncode}, stdout "
            f"{result.stdout.strip()[:200]!r}; stderr:\n{result.stderr.strip()[-3000:]}"
        )


def go_duration(text: str) -> float:
    """Seconds of a Go ``time.Duration`` string (``2.51s``, ``812.3ms``, ``1m2.5s``)."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


# ---------------------------------------------------------------- lazyfs side

_counter = 0


def _next(prefix: str) -> Path:
    global _counter
    _counter += 1
    return RUN / f"{prefix}-{_counter}"


def parse_verbose(stderr: str) -> dict:
    """The phases (seconds) and bytes ``lazyfs run --verbose`` printed on stderr."""
    phases: dict[str, float] = {}
    fetched = {}
    for line in stderr.splitlines():
        if m := _PHASE_LINE.match(line):
            phases[m[1]] = float(m[2]) / 1000
        elif m := _FETCHED_LINE.match(line):
            fetched = {"bytes_fetched": float(m[1]) * MB, "image_bytes": float(m[2]) * MB}
    if "total" not in phases or not fetched:
        raise RuntimeError(f"no phase timings or fetched bytes in lazyfs run's stderr:\n{stderr}")
    return {"phases": phases, **fetched}


def lazyfs_once(
    ref: str,
    command: tuple[str, ...] = COMMAND,
    expected: str = EXPECTED_OUTPUT,
    *,
    warm: bool = False,
    service: LazyfsService | None = None,
) -> dict:
    """One cold ``lazyfs run`` of ``command``: new cache and state directories, caches dropped.

    ``warm``: then run it again with the same cache directory, nothing dropped (the
    result's ``"warm"``: the same keys, for a start whose caches are full). ``service``:
    through that running ``lazyfs service`` (checked in its log); else with none
    (``LAZYFS_SERVICE=off``, whatever runs on the machine).
    """
    cache_dir, tmp = _next("cache"), _next("tmp")
    tmp.mkdir(parents=True)
    argv = [*LAZYFS, "run", "--verbose", "--cache-dir", str(cache_dir), "--network", "host"]
    argv += [ref, *command]
    env = {**os.environ, "TMPDIR": str(tmp), "LAZYFS_SERVICE": "off"}
    if service is not None:
        env.update(service.env())

    def once() -> dict:
        served = service.served() if service is not None else 0
        result = timed(argv, env=env)
        _check_output(result, "lazyfs run", expected)
        if service is not None and service.served() != served + 1:
            raise RuntimeError(f"lazyfs run did not go through the service (see {service.log})")
        return {
            "first_output": result.first_output,
            "wall": result.wall,
            **parse_verbose(result.stderr),
            "stderr": result.stderr,
        }

    try:
        drop_caches()
        out = once()
        if warm:
            out["warm"] = once()
        return out
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- containerd side


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever a failed run left mounted under ``root`` (deepest first)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    prefix = str(root) + "/"
    where = [line.split()[4].encode().decode("unicode_escape") for line in lines]
    for path in sorted((w for w in where if w.startswith(prefix)), key=len, reverse=True):
        say(f"unmounting {path}, left by containerd")
        subprocess.run(["umount", "-l", path], check=False)


def containerd_once(
    ref: str,
    command: tuple[str, ...] = COMMAND,
    expected: str = EXPECTED_OUTPUT,
    *,
    warm: bool = False,
) -> dict:
    """One cold pull + run with a containerd of its own (new root); everything removed after.

    ``warm``: then ``ctr run`` the command again (the image stays pulled and unpacked,
    nothing dropped): the result's ``"warm"`` (``run``, ``run_first_output``).
    """
    workdir = _next("containerd")
    cid = f"bench-{workdir.name}-{os.getpid()}"
    server = ContainerdServer(workdir, namespace=NAMESPACE, log_level="warn")
    # runc's state on tmpfs as usual (/run/containerd/runc), but a directory of our own.
    runc_root = Path(tempfile.mkdtemp(prefix="lazyfs-bench-runc-", dir=_tmpfs_base()))
    try:
        started = time.perf_counter()
        server.start()
        start_s = time.perf_counter() - started
        base = ["ctr", "--address", server.address, "--namespace", NAMESPACE]
        drop_caches()
        pull = timed([*base, "image", "pull", "--plain-http", "--snapshotter", "overlayfs", ref])
        if pull.returncode != 0:
            raise RuntimeError(f"ctr image pull failed ({pull.returncode}):\n{pull.stderr}")
        unpack = _UNPACK_LINE.findall(pull.stdout)
        if len(unpack) != 1:
            raise RuntimeError(f"ctr image pull printed no unpack time:\n{pull.stdout[-2000:]}")
        unpack_s = go_duration(unpack[0])
        options = ["--rm", "--net-host", "--snapshotter", "overlayfs"]
        options += ["--runc-root", str(runc_root)]
        run = timed([*base, "run", *options, ref, cid, *command])
        _check_output(run, "ctr run", expected)
        again = None
        if warm:
            again = timed([*base, "run", *options, ref, cid + "-warm", *command])
            _check_output(again, "ctr run (warm)", expected)
        content = server.ctr("content", "ls", "--quiet").stdout.split()
        return {
            **({"warm": {"run": again.wall, "first_output": again.first_output}} if again else {}),
            "containerd_start": start_s,
            "pull": pull.wall,
            "unpack": unpack_s,
            "fetch": pull.wall - unpack_s,
            "run_first_output": run.first_output,
            "run": run.wall,
            "first_output": pull.wall + run.first_output,
            "wall": pull.wall + run.wall,
            "blobs": len(content),
        }
    finally:
        if server.running:  # a failed run may have left its task and container
            for name in (cid, cid + "-warm"):
                for args in (("task", "rm", "--force", name), ("container", "rm", name)):
                    with contextlib.suppress(CtrError):
                        server.ctr(*args, check=False, timeout=60)
        server.stop()
        _unmount_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runc_root, ignore_errors=True)


# ---------------------------------------------------------------- the run


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def startup_seconds(*, cold: bool) -> float:
    """Wall time of ``python -m lazyfs --version``: the interpreter and the CLI's imports.

    ``cold``: after dropping the page cache, as the cold starts measured here begin.
    """
    if cold:
        drop_caches()
    started = time.perf_counter()
    subprocess.run([*LAZYFS, "--version"], check=True, capture_output=True, cwd=BENCH.parent)
    return time.perf_counter() - started


def _tmpfs_base() -> Path:
    """``/dev/shm`` (tmpfs), or the bench's own directory where there is none."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else RUN
    base.mkdir(parents=True, exist_ok=True)
    return base


def _registry_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lazyfs-bench-run-registry-", dir=_tmpfs_base()))


def _fs_of(path: Path) -> str:
    """``TYPE on DEVICE`` of the filesystem holding ``path`` (from /proc/self/mounts)."""
    best = ("", "?", "?")
    target = str(path.resolve())
    for line in Path("/proc/self/mounts").read_text().splitlines():
        dev, where, kind = line.split()[:3]
        inside = target == where or target.startswith(where.rstrip("/") + "/")
        if inside and len(where) >= len(best[0]):
            best = (where, kind, dev)
    return f"{best[1]} on {best[2]}"


def bench(args) -> dict:
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        say(f"note: load average {load_start[0]:.2f}: other work on this machine slows the timings")
    _unmount_under(RUN)
    shutil.rmtree(RUN, ignore_errors=True)
    RUN.mkdir(parents=True)
    regdir = _registry_dir()
    say(f"starting a registry with its storage in {regdir}")
    server = RegistryServer(regdir, log_level="warn").start()
    samples: dict[str, list[dict]] = {side: [] for side in SIDES}
    service = None
    try:
        if args.service:
            # Started once, before anything is timed, like containerd (and not counted).
            service = LazyfsService(LAZYFS, RUN / "service").start()
        images = trio.run(publish, server.host)
        refs = {
            "lazyfs-zstd-chunked": images.chunked_ref,
            "lazyfs-gzip": images.gzip_ref,
            "lazyfs-service": images.chunked_ref,
            "containerd": images.gzip_ref,
        }
        startup = {
            "warm": [startup_seconds(cold=False) for _ in range(args.runs)],
            "cold": [startup_seconds(cold=True) for _ in range(args.runs)],
        }
        for r in range(args.runs):
            order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
            for side in order:
                if side == "lazyfs-gzip" and not args.gzip:
                    continue
                if side == "lazyfs-service" and service is None:
                    continue
                say(f"run {r + 1}/{args.runs}: {LABELS[side]}")
                if side == "containerd":
                    sample = containerd_once(refs[side])
                else:
                    sample = lazyfs_once(
                        refs[side], service=service if side == "lazyfs-service" else None
                    )
                sample["order"] = order.index(side)
                samples[side].append(sample)
                say(f"... first output {sample['first_output']:.2f} s, exit {sample['wall']:.2f} s")
    finally:
        if service is not None:
            service.stop()
        server.stop()
        shutil.rmtree(regdir, ignore_errors=True)
        _unmount_under(RUN)
        shutil.rmtree(RUN, ignore_errors=True)
    res = {
        **stamp(
            zstandard=zstandard.__version__,
            containerd=tool_version(["containerd", "--version"]),
            runc=tool_version(["runc", "--version"]),
            local_disk=_fs_of(BENCH / ".cache"),
            registry_storage=_fs_of(regdir.parent),
        ),
        "settings": {
            "runs": args.runs,
            "command": list(COMMAND),
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "gzip": args.gzip,
            "service": args.service,
        },
        "images": asdict(images),
        "startup": startup,
        "samples": {k: v for k, v in samples.items() if v},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "seconds": time.perf_counter() - t0,
    }
    res["summary"] = summarise(res)
    return res


# ---------------------------------------------------------------- summary and report


def summarise(res: dict) -> dict:
    """Medians, ratios, shares of the image and the targets, from the samples."""
    img = res["images"]
    out: dict = {"sides": {}, "startup": {k: med(v) for k, v in res["startup"].items()}}
    for side, samples in res["samples"].items():
        row = {k: med(s[k] for s in samples) for k in ("first_output", "wall")}
        if side == "containerd":
            for k in ("containerd_start", "pull", "fetch", "unpack", "run_first_output", "run"):
                row[k] = med(s[k] for s in samples)
            row["bytes_fetched"] = img["gzip_total_bytes"]
        else:
            for phase in PHASES:
                row[phase] = med(s["phases"].get(phase, float("nan")) for s in samples)
            row["outside"] = med(s["wall"] - s["phases"]["total"] for s in samples)
            row["other"] = med(
                s["phases"]["total"] - sum(s["phases"].get(p, 0.0) for p in PHASES[:-1])
                for s in samples
            )
            row["after_output"] = med(s["wall"] - s["first_output"] for s in samples)
            row["bytes_fetched"] = med(s["bytes_fetched"] for s in samples)
            row["lazyfs_image_bytes"] = samples[0]["image_bytes"]
        row["share_gzip"] = row["bytes_fetched"] / img["gzip_layer_bytes"]
        row["share_chunked"] = row["bytes_fetched"] / img["chunked_layer_bytes"]
        out["sides"][side] = row
    ctrd = out["sides"]["containerd"]
    for row in out["sides"].values():
        row["ratio_first_output"] = row["first_output"] / ctrd["first_output"]
        row["ratio_wall"] = row["wall"] / ctrd["wall"]
    lz = out["sides"]["lazyfs-zstd-chunked"]
    # The same run's samples side by side: a burst of load that hits one run hits both.
    paired = [
        a["first_output"] / b["first_output"]
        for a, b in zip(
            res["samples"]["lazyfs-zstd-chunked"], res["samples"]["containerd"], strict=True
        )
    ]
    out["paired_ratios"] = paired
    if "lazyfs-service" in res["samples"]:
        out["paired_ratios_service"] = [
            a["first_output"] / b["first_output"]
            for a, b in zip(
                res["samples"]["lazyfs-service"], res["samples"]["containerd"], strict=True
            )
        ]
    out["targets"] = {
        "ratio": {
            "label": f"`lazyfs run` from empty caches <= {TARGET_RATIO:.2f}x containerd's pull + "
            "run (time to the first output)",
            "pass": lz["ratio_first_output"] <= TARGET_RATIO,
            "shown": f"{lz['ratio_first_output']:.3f}x ({lz['first_output']:.2f} s against "
            f"{ctrd['first_output']:.2f} s; run by run: "
            + ", ".join(f"{x:.3f}" for x in paired)
            + ")",
        },
        **(
            {
                "ratio_service": {
                    "label": f"the same with a running `lazyfs service` (its start not counted, "
                    f"like containerd's) <= {TARGET_RATIO:.2f}x",
                    "pass": out["sides"]["lazyfs-service"]["ratio_first_output"] <= TARGET_RATIO,
                    "shown": f"{out['sides']['lazyfs-service']['ratio_first_output']:.3f}x "
                    f"({out['sides']['lazyfs-service']['first_output']:.2f} s; run by run: "
                    + ", ".join(f"{x:.3f}" for x in out["paired_ratios_service"])
                    + ")",
                }
            }
            if "lazyfs-service" in out["sides"]
            else {}
        ),
        "share": {
            "label": f"fetches <= {TARGET_SHARE:.0%} of the image's compressed bytes before the "
            "first output",
            "pass": lz["share_gzip"] <= TARGET_SHARE,
            "shown": f"{lz['bytes_fetched'] / MB:.2f} MB = {lz['share_gzip']:.1%} of the gzip "
            f"image's {img['gzip_layer_bytes'] / MB:.1f} MB ({lz['share_chunked']:.1%} of the "
            f"converted image's {img['chunked_layer_bytes'] / MB:.1f} MB; whole run, an upper "
            "bound)",
        },
    }
    return out


def render(res: dict) -> str:
    s, m, st, img = res["summary"], res["machine"], res["settings"], res["images"]
    out = io.StringIO()

    def w(line: str = "") -> None:
        print(line, file=out)

    def sec(x: float) -> str:
        return f"{x:.3f}"

    def ms(x: float) -> str:
        return f"{x * 1000:.0f}"

    load = res["load_average"]
    runs = st["runs"]
    w(f"# run benchmark (cold start), {res['time']} on {res['host']}")
    w()
    w(
        f"Machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB, kernel {m['kernel']}; "
        f"Python {m['python']}; {m['containerd']}; {m['runc'].split(' (')[0]}. Registry: "
        f"loopback, storage {m['registry_storage']} (hot for both sides). lazyfs's cache and "
        f"state, containerd's root: {m['local_disk']} (the local disk). Load average (1 min) "
        f"{load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end."
    )
    w()
    w(
        f"Image: Debian bookworm minbase + python3 (debootstrap), one layer: "
        f"{img['tar_bytes'] / MB:.1f} MB of tar; gzip layer {img['gzip_layer_bytes'] / MB:.1f} "
        f"MB (what containerd pulls: {img['gzip_total_bytes'] / MB:.2f} MB with config and "
        f"manifest); converted once to zstd:chunked ({st['chunk_size'] // 1024} KiB chunks, "
        f"{img['convert_s']:.1f} s registry to registry): "
        f"{img['chunked_layer_bytes'] / MB:.1f} MB."
    )
    w()
    w(
        f"Command: `{' '.join(COMMAND[:2])} '{COMMAND[2]}'`. Every sample from empty caches "
        f"(a new `--cache-dir`; a new containerd root) after `sync; echo 3 > "
        f"/proc/sys/vm/drop_caches`; medians of {runs} runs, the sides taking turns. MB = 10^6 "
        "bytes."
    )
    w()
    w("## Targets")
    w()
    for t in s["targets"].values():
        w(f"- **{'PASS' if t['pass'] else 'MISS'}** {t['label']}: {t['shown']}")
    w()
    w("## Cold start")
    w()
    w(
        "| | to first output s | to exit s | ratio to containerd (first output) | "
        "ratio (exit) | MB fetched | % of the gzip image | % of the zstd:chunked image |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    for side in SIDES:
        if side not in s["sides"]:
            continue
        r = s["sides"][side]
        w(
            f"| {LABELS[side]} | {sec(r['first_output'])} | {sec(r['wall'])} | "
            f"{r['ratio_first_output']:.3f} | {r['ratio_wall']:.3f} | "
            f"{r['bytes_fetched'] / MB:.2f} | {r['share_gzip']:.1%} | {r['share_chunked']:.1%} |"
        )
    w()
    w(
        "First output: from starting the command (for containerd, `ctr image pull`) to the "
        "line `1` on its stdout; python3 writes it when it exits (its stdout is a pipe on both "
        "sides). lazyfs's bytes are what its registry client received during the whole run "
        "(manifest, config, index and file contents), as `--verbose` reports them: the run ends "
        "right after the output, so this bounds what was fetched before it. containerd's are "
        "the image's blobs (it pulls all of them)."
    )
    w()
    ws = img["working_set"]
    if "files" in ws:
        lz = s["sides"]["lazyfs-zstd-chunked"]
        w(
            f"What the command needs: `{' '.join(COMMAND[:2])} '{COMMAND[2]}'` opens "
            f"{len(ws['files'])} files of {ws['bytes'] / MB:.2f} MB (strace in a chroot of the "
            "same root filesystem, from the exec of python3 on, its ELF interpreter included); "
            f"their content frames in the zstd:chunked layer are {ws['stored_bytes'] / MB:.2f} "
            f"MB = {ws['stored_bytes'] / img['gzip_layer_bytes']:.1%} of the gzip image, and "
            f"with the TOC ({ws['toc_bytes'] / MB:.2f} MB) "
            f"{(ws['stored_bytes'] + ws['toc_bytes']) / MB:.2f} MB = "
            f"{(ws['stored_bytes'] + ws['toc_bytes']) / img['gzip_layer_bytes']:.1%}: what a "
            f"reader that fetches every file it opens whole moves (lazyfs: "
            f"{lz['bytes_fetched'] / MB:.2f} MB). The files, with their bytes in the layer: "
            + ", ".join(
                f"`{f}` {n / 1000:.0f} KB"
                for f, n in sorted(ws["stored"].items(), key=lambda kv: -kv[1])
            )
            + "."
        )
        w()
        gz = img["gzip_layer_bytes"]
        if "read_chunk_bytes" in ws:
            least = ws["read_chunk_bytes"] + ws["toc_bytes"]
            w(
                f"Of those files it reads {ws['read_bytes'] / MB:.2f} MB of pages (`mincore` "
                "after a cold run in a chroot of a copy on an ext4 loop device with read-ahead "
                "off; `usr/bin/python3.11` "
                f"{ws['pages_read'].get('usr/bin/python3.11', 0) * 4096 / MB:.2f} MB). The "
                f"{st['chunk_size'] // 1024} KiB chunks that hold them are "
                f"{ws['read_chunk_bytes'] / MB:.2f} MB as stored, with the TOC {least / MB:.2f} "
                f"MB = {least / gz:.1%} of the gzip image: what a reader that fetches only the "
                "chunks the command reads, and no read-ahead, would move. At other chunk "
                "sizes (the same pages; each chunk compressed as the converter writes it; the "
                "TOC as at the default size):"
            )
            w()
            w("| chunk size | chunks holding the pages read, MB | with the TOC, MB | % of gzip |")
            w("|---:|---:|---:|---:|")
            for size, n in ws["read_chunk_bytes_at"].items():
                size_kib = int(size) // 1024
                w(
                    f"| {size_kib} KiB | {n / MB:.2f} | {(n + ws['toc_bytes']) / MB:.2f} | "
                    f"{(n + ws['toc_bytes']) / gz:.1%} |"
                )
        else:
            w(f"The pages it reads: not measured ({ws.get('pages_error', '?')}).")
    else:
        w(f"What the command needs: not measured ({ws['error']}).")
    w()
    w("## Breakdown: `lazyfs run` (ms)")
    w()
    w(
        "| image | resolve | index | merge | mount | exec | run | total (lazyfs) | "
        "… of which the rest | python start, imports, exit | to exit (wall) | "
        "of which after the output |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for side in LAZYFS_SIDES:
        if side not in s["sides"]:
            continue
        r = s["sides"][side]
        cells = " | ".join(ms(r[p]) for p in PHASES)
        w(
            f"| {BREAKDOWN_LABELS[side]} | {cells} | {ms(r['other'])} | "
            f"{ms(r['outside'])} | {ms(r['wall'])} | {ms(r['after_output'])} |"
        )
    w()
    w(
        "The phases as `lazyfs run --verbose` prints them (medians of each, so they need not "
        "add up): resolve the manifest and config; index (fetch and read the layers' indexes; "
        "for a gzip layer, stream and index the whole layer); merge the layers' trees; mount "
        "(FUSE and the overlay over it); exec (from starting the container's init to the "
        "command's exec); run (the command, to its exit); total: from the CLI's start to the "
        "end of the teardown, and *the rest* of it what no phase covers (the command's own "
        "imports and set-up before resolving, the teardown after the command). The wall time "
        "outside *total* is the Python interpreter's start and the CLI's imports before it, "
        f"and the exit (`python -m lazyfs --version` alone: {s['startup']['cold']:.2f} s cold, "
        f"after dropping the page cache, {s['startup']['warm']:.2f} s warm); via the service, "
        "the client's start (a Python that imports only the standard library), handing the "
        "command over and the worker's fork. *After the output*: from the line `1` to "
        "lazyfs's exit (the command's exit, the teardown)."
    )
    w()
    w("## Breakdown: containerd (s)")
    w()
    w(
        "| `ctr image pull` | … fetch (resolve, download, verify) | … unpack | "
        "`ctr run` to first output | `ctr run` to exit | pull + run to first output | "
        "containerd start (not counted) |"
    )
    w("|---:|---:|---:|---:|---:|---:|---:|")
    c = s["sides"]["containerd"]
    w(
        f"| {sec(c['pull'])} | {sec(c['fetch'])} | {sec(c['unpack'])} | "
        f"{sec(c['run_first_output'])} | {sec(c['run'])} | {sec(c['first_output'])} | "
        f"{sec(c['containerd_start'])} |"
    )
    w()
    w(
        "unpack: the time `ctr image pull` prints for unpacking the layer into an overlayfs "
        "snapshot; fetch: the rest of the pull (ctr's start, resolving, downloading and "
        "verifying the blobs). `ctr run` creates the container (a snapshot of the image), "
        "starts it with the runc shim, and removes it (`--rm`). containerd itself is started "
        "before the caches are dropped and is not counted, as on a host where it runs already."
    )
    w()
    w(f"Whole bench: {res['seconds']:.0f} s.")
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="cold starts of each side")
    parser.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run lazyfs on the gzip image (default: yes)",
    )
    parser.add_argument(
        "--service",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run lazyfs through a running `lazyfs service` (default: yes)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.run needs root (lazyfs run, containerd, drop_caches)")
    res = bench(args)
    text = render(res)
    print(text)
    if not args.no_save:
        say(f"saved {save_results('run', res, text)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
