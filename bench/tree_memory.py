"""Merged tree: build time, memory per entry and query cost for big synthetic images.

What it measures: :meth:`lazyfs.fs.tree.MergedTree.build` on one synthetic layer of
``dirs`` directories of 1000 one-chunk regular files each (``usr/share/dir-NNNNN/
file-NNNNNN.dat``: 15-byte names, realistic sizes and times, a sha256 digest per chunk),
built as :class:`~lazyfs.formats.model.LayerIndex` objects directly (no tar).

Per size, in a fresh process each (so peak RSS is that size's alone):

* build seconds, and the process's RSS with the layer index alone, at its peak (index +
  build) and after the index is dropped;
* the tree's own estimate, ``memory_bytes()``, and what tracemalloc sees the build leave
  allocated once the index is gone (in a second process: tracing slows the build down, so
  its time is not reported), both per entry;
* the cost of the queries FUSE makes: ``lookup`` of a random name, ``attr`` of an inode,
  ``children`` of a directory of 1000 read whole (microseconds, medians of 5 rounds).

Prints markdown tables and, unless ``--no-save``, writes them with the raw numbers to
``bench/results/<UTC date>-<short host>-tree_memory.md`` and ``.json``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from bench._common import save_results, say
from lazyfs.formats.model import CODEC_NONE, Chunk, Entry, EntryType, LayerIndex
from lazyfs.fs.tree import ROOT_INODE, MergedTree
from lazyfs.oci.digest import Digest

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
FILES_PER_DIR = 1000
SIZES = (100_000, 1_000_000)
T0_NS = 1_700_000_000 * 1_000_000_000
QUERIES = 100_000
ROUNDS = 5
MB = 1_000_000


def synthetic_layer(entries: int) -> LayerIndex:
    """About ``entries`` entries: directories of FILES_PER_DIR one-chunk files."""
    dirs = max(1, entries // FILES_PER_DIR)
    rng = random.Random(entries)
    out = []
    offset = 0
    for d in range(dirs):
        directory = f"usr/share/dir-{d:05d}"
        out.append(Entry(directory, EntryType.DIR, mode=0o755, mtime_ns=T0_NS))
        for f in range(FILES_PER_DIR):
            size = rng.randrange(1, 1 << 20)
            digest = Digest("sha256:" + rng.randbytes(32).hex())
            chunk = Chunk(0, size, offset, size, 0, CODEC_NONE, digest)
            out.append(
                Entry(
                    f"{directory}/file-{f:06d}.dat",
                    EntryType.REG,
                    size=size,
                    mtime_ns=T0_NS + rng.randrange(10**12),
                    chunks=[chunk],
                )
            )
            offset += 512 + size
    return LayerIndex("tar", Digest.of(b"synthetic"), offset, out)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def query_costs(tree: MergedTree) -> dict:
    """Median microseconds of lookup, attr and a whole readdir of 1000."""
    share = tree.lookup(tree.lookup(ROOT_INODE, b"usr"), b"share")
    dirs = list(tree.children(share))
    rng = random.Random(1)
    picks = []
    for _ in range(QUERIES):
        _, ino = rng.choice(dirs)
        picks.append((ino, f"file-{rng.randrange(FILES_PER_DIR):06d}.dat".encode()))
    inos = [rng.randrange(1, len(tree) + 1) for _ in range(QUERIES)]
    out: dict[str, list[float]] = {"lookup_us": [], "attr_us": [], "readdir_1000_us": []}
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for parent, name in picks:
            tree.lookup(parent, name)
        out["lookup_us"].append((time.perf_counter() - started) / QUERIES * 1e6)
        started = time.perf_counter()
        for ino in inos:
            tree.attr(ino)
        out["attr_us"].append((time.perf_counter() - started) / QUERIES * 1e6)
        sample = dirs[:: max(1, len(dirs) // 100)]
        started = time.perf_counter()
        for _, ino in sample:
            list(tree.children(ino))
        out["readdir_1000_us"].append((time.perf_counter() - started) / len(sample) * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def measure_timed(entries: int) -> dict:
    """Build once untraced: seconds, RSS, memory_bytes, query costs."""
    layer = synthetic_layer(entries)
    n = len(layer.entries)
    gc.collect()
    index_rss = rss_mb()
    started = time.perf_counter()
    tree = MergedTree.build([layer])
    build_s = time.perf_counter() - started
    del layer
    gc.collect()
    return {
        "entries": n,
        "inodes": len(tree),
        "chunks": sum(len(t) for t in tree.tables),
        "build_s": build_s,
        "index_rss_mb": index_rss,
        "peak_rss_mb": rss_mb("VmHWM"),
        "rss_after_mb": rss_mb(),
        "memory_bytes": tree.memory_bytes(),
        "tree_only_bytes": tree.memory_bytes() - sum(t.nbytes() for t in tree.tables),
        **query_costs(tree),
    }


def measure_traced(entries: int) -> dict:
    """Build under tracemalloc: what the build leaves allocated once the index is gone."""
    layer = synthetic_layer(entries)
    gc.collect()
    tracemalloc.start()
    tree = MergedTree.build([layer])
    del layer
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"traced_bytes": retained, "traced_peak_bytes": peak, "inodes": len(tree)}


def one(entries: int, mode: str) -> dict:
    """Measure in a fresh interpreter (this script, ``--one``)."""
    cmd = [sys.executable, "-m", "bench.tree_memory", "--one", str(entries), "--mode", mode]
    result = subprocess.run(
        cmd, check=True, capture_output=True, text=True, cwd=BENCH.parent, env=os.environ
    )
    return json.loads(result.stdout)


def bench(args) -> dict:
    load_start = os.getloadavg()
    rows = []
    for entries in args.sizes:
        say(f"{entries:,} entries: timed build")
        row = one(entries, "timed")
        if not args.no_tracemalloc:
            say(f"{entries:,} entries: traced build")
            row.update(one(entries, "traced"))
        rows.append(row)
    now = datetime.datetime.now(datetime.UTC)
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname().split(".")[0],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "rows": rows,
    }


def render(res: dict) -> str:
    out = io.StringIO()

    def w(line: str = "") -> None:
        print(line, file=out)

    w(f"# tree_memory benchmark, {res['time']} on {res['host']}")
    w()
    w(
        f"Python {res['python']}, {res['cpus']} CPUs, load average "
        f"{res['load_start'][0]:.2f} at the start, {res['load_end'][0]:.2f} at the end. "
        f"One layer of directories of {FILES_PER_DIR} one-chunk files (15-byte names)."
    )
    w()
    w(
        "| entries | build s | bytes/entry (memory_bytes) | of which tree | "
        "bytes/entry (tracemalloc) | RSS index MB | peak RSS MB | RSS after MB |"
    )
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        n = r["entries"]
        traced = f"{r['traced_bytes'] / n:.0f}" if "traced_bytes" in r else "-"
        w(
            f"| {n:,} | {r['build_s']:.2f} | {r['memory_bytes'] / n:.0f} | "
            f"{r['tree_only_bytes'] / n:.0f} | {traced} | {r['index_rss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_after_mb']:.0f} |"
        )
    w()
    w("| entries | lookup µs | attr µs | readdir of 1000 µs |")
    w("|---:|---:|---:|---:|")
    for r in res["rows"]:
        w(
            f"| {r['entries']:,} | {r['lookup_us']:.2f} | {r['attr_us']:.2f} | "
            f"{r['readdir_1000_us']:.0f} |"
        )
    w()
    w(
        "bytes/entry: per layer entry, chunk tables included (about 74 bytes a chunk); "
        "'of which tree': without them. tracemalloc: what the build leaves allocated once "
        "the index is dropped (array over-allocation included). RSS index: the layer index "
        "alone, before the build; peak: index and build together; after: the tree, once "
        "the index is dropped (Python keeps freed memory, so this overstates the tree)."
    )
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tree_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="entry counts, comma separated",
    )
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced builds")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("timed", "traced"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        measure = measure_timed if args.mode == "timed" else measure_traced
        print(json.dumps(measure(args.one)))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    res = bench(args)
    text = render(res)
    print(text)
    if not args.no_save:
        say(f"saved {save_results('tree_memory', res, text)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
