"""Reliability scenarios through a real FUSE mount, and the table of their outcomes.

Each scenario does something hostile to a real lazyfs mount and counts what came out as an
:class:`Outcome`: how many times it was tried, how many reads gave the right bytes, how many
failed cleanly (``EIO``, or a mount refused with a one-line error), how many bytes were
wrong (must be 0) and how many reads hung (must be 0).

* :func:`run_fault` (registry faults): a :class:`~tests.harness.faultproxy.FaultProxy`
  stands between the mount and the real registry and answers every blob request of one
  layer (the *victim* layer) with a fault; each try reads a fresh victim file through the
  mount (so neither the kernel's page cache nor the chunk cache answers), while a *bystander*
  file of the other layer is read at the same time and must come back right and quickly:
  the daemon keeps serving. Transient faults (fewer than the retries) must give the right
  bytes; persistent ones ``EIO`` within the mount's read timeout, and once the fault is
  gone the same file reads right (nothing wrong was cached, the daemon is still up).
* :func:`run_token_expiry`: tokens that expire between reads.

The tests (``tests/test_reliability_*.py``) run these with a few tries each;
``scripts/reliability-table`` runs them with more and prints :func:`markdown_table`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.oci.credentials import Credentials, CredentialStore
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.faultproxy import (
    Action,
    FaultProxy,
    FlipBits,
    RateLimit,
    RedirectLoop,
    RedirectToUpstream,
    RejectMultiRange,
    Reset,
    Respond,
    Stall,
    StripRange,
    Truncate,
)
from tests.harness.images import Entry, build_image, push_image
from tests.harness.mountd import Bounds, MountDaemon

__all__ = [
    "FAULTS",
    "FaultImage",
    "FaultScenario",
    "Outcome",
    "bytes_wrong",
    "make_fault_image",
    "markdown_table",
    "read_with_deadline",
    "run_fault",
    "run_token_expiry",
]

#: The bounds of the test mounts: a FUSE read gives up after 5 s.
BOUNDS = Bounds()
#: A read that has not returned this long after the mount's read timeout counts as hung.
HANG_SLACK = 10.0
#: A bystander read (no fault on its layer) must finish within this many seconds.
BYSTANDER_BOUND = 5.0
#: Chunk size of the fault image (multi-range requests need chunks > the 64 KiB merge gap).
CHUNK = 128 * 1024


@dataclass
class Outcome:
    """What happened to one kind of fault or input, over ``tried`` tries.

    ``expect`` is ``"right"`` (every try must give the right bytes) or ``"refused"`` (every
    try must fail cleanly: ``EIO``, or a clear error). ``right`` and ``refused`` count the
    tries that did; ``wrong_bytes`` and ``hangs`` must stay 0; ``worst`` is the longest try
    in seconds; ``notes`` say anything else that went wrong (a bystander read failing, a
    fault never triggered).
    """

    name: str
    expect: str
    tried: int = 0
    right: int = 0
    refused: int = 0
    wrong_bytes: int = 0
    hangs: int = 0
    worst: float = 0.0
    notes: list[str] = field(default_factory=list)
    what: str = ""

    @property
    def ok(self) -> bool:
        """Whether every try went as expected and nothing wrong or hung."""
        good = self.right if self.expect == "right" else self.refused
        return good == self.tried > 0 and not self.wrong_bytes and not self.hangs and not self.notes

    @property
    def description(self) -> str:
        """The outcome column of the table."""
        if self.what:
            text = self.what
        elif self.expect == "right":
            text = f"right bytes {self.right}/{self.tried} (slowest {self.worst:.1f} s)"
        else:
            text = f"EIO {self.refused}/{self.tried} within {self.worst:.1f} s"
        if self.notes:
            text += "; PROBLEM: " + "; ".join(self.notes[:3])
        return text

    def record(self, expected: bytes, got: bytes | OSError | None, seconds: float) -> None:
        """Count one try: ``got`` is the bytes read, the error raised, or ``None`` (hung)."""
        self.tried += 1
        self.worst = max(self.worst, seconds)
        if got is None:
            self.hangs += 1
        elif isinstance(got, OSError):
            if self.expect == "refused":
                self.refused += 1
            else:
                self.notes.append(f"read failed: {got}")
        else:
            wrong = bytes_wrong(expected, got)
            self.wrong_bytes += wrong
            if not wrong:
                if self.expect == "right":
                    self.right += 1
                else:
                    self.notes.append("a read succeeded where EIO was expected")


def bytes_wrong(expected: bytes, got: bytes) -> int:
    """Bytes of ``got`` that differ from ``expected``, plus the difference in length."""
    n = min(len(expected), len(got))
    if expected[:n] == got[:n]:
        return abs(len(expected) - len(got))
    differing = sum(1 for a, b in zip(expected[:n], got[:n], strict=True) if a != b)
    return differing + abs(len(expected) - len(got))


def markdown_table(outcomes: list[Outcome]) -> str:
    """The closing note's table: fault or input, count tried, outcome, bytes wrong, hangs."""
    lines = [
        "| fault or input | tried | outcome | bytes wrong | hangs |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for o in outcomes:
        lines.append(f"| {o.name} | {o.tried} | {o.description} | {o.wrong_bytes} | {o.hangs} |")
    return "\n".join(lines)


def read_with_deadline(path: Path, deadline: float) -> tuple[bytes | OSError | None, float]:
    """Read ``path`` whole in a thread; its bytes, the ``OSError``, or ``None`` if it hung.

    A hung read's thread is left behind (it ends when the mount goes away).
    """
    result: list[bytes | OSError] = []

    def work() -> None:
        try:
            result.append(path.read_bytes())
        except OSError as exc:
            result.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(deadline)
    return (result[0] if result else None), time.monotonic() - started


# ---------------------------------------------------------------------------- fault image


@dataclass
class FaultImage:
    """A two-layer zstd:chunked image in the registry: victim files and bystander files."""

    repository: str
    tag: str
    victim_digest: str  # hex of the victim layer's blob digest
    victims: dict[str, bytes]  # path -> content, fresh ones handed out by take_victim()
    bystanders: dict[str, bytes]
    multis: dict[str, bytes]  # 1 MiB victim files, for multi-range requests
    _used: set[str] = field(default_factory=set)

    def take(self, pool: dict[str, bytes]) -> tuple[str, bytes]:
        """A file of ``pool`` no try has read yet (fails when they run out)."""
        for path, data in pool.items():
            if path not in self._used:
                self._used.add(path)
                return path, data
        raise RuntimeError("the fault image has no unread file left; make it bigger")


def _noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def make_fault_image(registry_host: str, *, victims: int = 96, bystanders: int = 96) -> FaultImage:
    """Push the fault image to the registry at ``registry_host`` (converted to zstd:chunked)."""
    victim_files = {f"victim/v{i:03d}": _noise(3 * CHUNK - 1000 + i, i) for i in range(victims)}
    multi_files = {f"victim/m{i:02d}": _noise(8 * CHUNK, 10_000 + i) for i in range(12)}
    bystander_files = {
        f"bystander/b{i:03d}": _noise(CHUNK // 2 + i, 20_000 + i) for i in range(bystanders)
    }
    layers = [
        [Entry(p, data=d) for p, d in {**victim_files, **multi_files}.items()],
        [Entry(p, data=d) for p, d in bystander_files.items()],
    ]
    repository = f"reliability/faults-{uuid.uuid4().hex[:8]}"
    _, digests = push_chunked(registry_host, repository, layers)
    victim_digest = digests[0]
    return FaultImage(
        repository, "chunked", victim_digest, victim_files, bystander_files, multi_files
    )


def push_chunked(
    registry_host: str, repository: str, layers: list[list[Entry]], *, credentials=None
) -> tuple[Reference, list[str]]:
    """Push ``layers`` as a gzip image, convert it to zstd:chunked (tag ``chunked``) in the
    same repository; the converted reference and its layers' digests (hex)."""
    src = Reference.parse(f"{registry_host}/{repository}:src")
    dst = Reference.parse(f"{registry_host}/{repository}:chunked")

    async def main() -> list[str]:
        async with RegistryClient(credentials=credentials) as client:
            await push_image(client, src, build_image(layers))
            await convert_image(
                open_store(str(src), client),
                open_store(str(dst), client),
                ConvertOptions(chunk_size=CHUNK),
                NullProgress(),
            )
            image = await client.resolve(dst)
            return [layer.digest.hex for layer in image.manifest.layers]

    return dst, trio.run(main)


# ---------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class FaultScenario:
    """A fault on the victim layer's blob requests.

    ``times`` is how many requests it hits (``None``: all, until cleared); ``expect`` is
    ``"right"`` or ``"refused"``; ``pool`` which victim files the tries read (``"multi"``
    for the 1 MiB ones, read so that the read needs several separate ranges).
    """

    name: str
    action: Action
    times: int | None
    expect: str
    pool: str = "victims"


_STALL = BOUNDS.http_read_timeout + 1.5

#: Every registry fault the suite and the table try, in order.
FAULTS: tuple[FaultScenario, ...] = (
    FaultScenario("HTTP 500, once", Respond(500), 1, "right"),
    FaultScenario("HTTP 502, once", Respond(502), 1, "right"),
    FaultScenario("HTTP 503, twice", Respond(503), 2, "right"),
    FaultScenario("HTTP 500/502/503, forever", Respond(503), None, "refused"),
    FaultScenario("429 with Retry-After: 1, once", RateLimit("1"), 1, "right"),
    FaultScenario("429 with Retry-After: 1, forever", RateLimit("1"), None, "refused"),
    FaultScenario("connection reset before the answer, once", Reset(), 1, "right"),
    FaultScenario("connection reset mid-body (truncated), once", Truncate(1000), 1, "right"),
    FaultScenario("truncated body, forever", Truncate(1000), None, "refused"),
    FaultScenario("flipped bit in the body, once", FlipBits(200, 0x10), 1, "right"),
    FaultScenario("flipped bit in the body, forever", FlipBits(200, 0x10), None, "refused"),
    FaultScenario(f"stall {_STALL:.1f} s (> HTTP timeout), once", Stall(_STALL), 1, "right"),
    FaultScenario("stall, forever", Stall(60), None, "refused"),
    FaultScenario("redirect loop", RedirectLoop(), None, "refused"),
    FaultScenario("redirect to storage (every request)", RedirectToUpstream(), None, "right"),
    FaultScenario("Range ignored (200, whole blob)", StripRange(), None, "right"),
    FaultScenario("multi-range refused (400)", RejectMultiRange(), None, "right", pool="multi"),
)


@contextlib.contextmanager
def _mounted_through(
    proxy: FaultProxy, image: FaultImage, work: Path, warm: list[bytes] = ()
) -> Iterator[tuple[MountDaemon, Path]]:
    name = uuid.uuid4().hex[:8]
    ref = f"{proxy.host}/{image.repository}:{image.tag}"
    cache_dir = work / f"cache-{name}"
    _seed_alternate_chunks(cache_dir, warm)
    with MountDaemon(ref, work / f"mnt-{name}", cache_dir, bounds=BOUNDS) as daemon:
        yield daemon, daemon.mountpoint


def _seed_alternate_chunks(cache_dir: Path, contents: list[bytes]) -> None:
    """Put every other chunk of each of ``contents`` in the disk cache at ``cache_dir``.

    A read of such a file then misses chunks that are not neighbours in the blob: the
    fetcher asks for them as several ranges in one request.
    """
    from lazyfs.fs.cache import ChunkCache

    cache = ChunkCache(0, cache_dir, 1 << 30)
    try:
        for data in contents:
            for offset in range(CHUNK, len(data), 2 * CHUNK):
                piece = data[offset : offset + CHUNK]
                cache.put(hashlib.sha256(piece).digest(), piece, memory=False)
    finally:
        cache.close()


def run_fault(
    scenario: FaultScenario, proxy: FaultProxy, image: FaultImage, work: Path, tries: int
) -> Outcome:
    """Mount ``image`` through ``proxy``, apply ``scenario`` to the victim layer, read ``tries``
    fresh victim files (each with a bystander read alongside), and count what came out."""
    out = Outcome(scenario.name, scenario.expect)
    bound = BOUNDS.read_timeout + HANG_SLACK
    victim_path = f"/blobs/sha256:{image.victim_digest}"
    pool = image.multis if scenario.pool == "multi" else image.victims
    picked = [image.take(pool) for _ in range(tries)]
    warm = [data for _, data in picked] if scenario.pool == "multi" else []
    with _mounted_through(proxy, image, work, warm) as (daemon, mnt):
        failed: list[tuple[Path, bytes]] = []
        hits = 0
        for path, data in picked:
            proxy.add_fault(
                None, scenario.action, method="GET", path_contains=victim_path, times=scenario.times
            )
            by_path, by_data = image.take(image.bystanders)
            by_result: list[tuple[bytes | OSError | None, float]] = []
            by_thread = threading.Thread(
                target=lambda r=by_result, p=mnt / by_path: r.append(read_with_deadline(p, bound)),
                daemon=True,
            )
            by_thread.start()
            got, seconds = read_with_deadline(mnt / path, bound)
            out.record(data, got, seconds)
            by_thread.join(bound)
            by_got, by_seconds = by_result[0] if by_result else (None, bound)
            if by_got is None:
                out.hangs += 1
            elif isinstance(by_got, OSError):
                out.notes.append(f"bystander read failed: {by_got}")
            else:
                out.wrong_bytes += bytes_wrong(by_data, by_got)
                if by_seconds > BYSTANDER_BOUND:
                    out.notes.append(f"bystander read took {by_seconds:.1f} s")
            # Faults with a count are dropped once used up: count those as hit.
            hits += sum(f.hits for f in proxy.faults) + (0 if proxy.faults else 1)
            proxy.clear_faults()
            if isinstance(got, OSError):
                failed.append((mnt / path, data))
        # Hosts found to ignore ranges or refuse several are remembered, redirect targets
        # too: later tries may never meet the fault, but the first must have.
        if hits == 0:
            out.notes.append("the fault never triggered")
        # The faults are gone: what failed reads right now, from the same daemon.
        for path, data in failed:
            again, _ = read_with_deadline(path, bound)
            if again is None:
                out.hangs += 1
            elif isinstance(again, OSError):
                out.notes.append(f"no recovery after the fault: {again}")
            else:
                out.wrong_bytes += bytes_wrong(data, again)
        if daemon.process is None or daemon.process.poll() is not None:
            out.notes.append("the daemon died")
    return out


def run_token_expiry(token_registry, work: Path, tries: int) -> Outcome:
    """Reads from a mount of a token-auth registry whose tokens live 2 s, each after the
    previous token expired: every read must give the right bytes (a new token is asked)."""
    issuer = token_registry.issuer
    files = {f"f{i}": _noise(200_000 + i, 30_000 + i) for i in range(tries)}

    creds = CredentialStore(default=Credentials("bob", "builder"), config_path=work / "none.json")
    repository = f"reliability/token-{uuid.uuid4().hex[:8]}"
    layers = [[Entry(p, data=d) for p, d in files.items()]]
    ref, _ = push_chunked(token_registry.host, repository, layers, credentials=creds)
    out = Outcome("token expires mid-session", "right")
    saved_ttl = issuer.ttl
    issuer.ttl = 2
    try:
        with MountDaemon(str(ref), work / "mnt-token", work / "cache-token", bounds=BOUNDS) as d:
            before = issuer.tokens_issued
            # Last file first: a sequential read fetches ahead, never behind.
            for path, data in reversed(files.items()):
                time.sleep(issuer.ttl + 1.5)  # exp is rounded up to a whole second
                got, seconds = read_with_deadline(
                    d.mountpoint / path, BOUNDS.read_timeout + HANG_SLACK
                )
                out.record(data, got, seconds)
            if issuer.tokens_issued < before + tries:
                out.notes.append(
                    f"only {issuer.tokens_issued - before} new tokens for {tries} expiries"
                )
    finally:
        issuer.ttl = saved_ttl
    return out


# ---------------------------------------------------------------------------- hostile images


def _tar(members: list[tuple[str, bytes, bytes, str]], fmt: int = 1) -> bytes:
    """A tar of ``(name, type, data, linkname)`` members (tarfile's PAX format by default)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, errors="surrogateescape") as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, 0o755, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _hostile_cases() -> list[tuple[str, list[bytes], dict[str, bytes] | None]]:
    """(what, layers, files the mount must serve — None: the mount must be refused)."""
    reg, lnk, sym = b"0", b"1", b"2"
    deep = "/".join(["d"] * 10_000) + "/leaf"
    return [
        ("`..` in a name", [_tar([("../escape", reg, b"x", "")])], None),
        ("hardlink to a missing target", [_tar([("h", lnk, b"", "missing")])], None),
        (
            "hardlink outside (`../../etc/passwd`)",
            [_tar([("h", lnk, b"", "../../etc/passwd")])],
            None,
        ),
        ("absolute name `/etc/evil`", [_tar([("/etc/evil", reg, b"in", "")])], {"etc/evil": b"in"}),
        (
            "`a -> /etc` then `a/passwd`",
            [_tar([("a", sym, b"", "/etc"), ("a/passwd", reg, b"image", "")])],
            {"a/passwd": b"image"},
        ),
        ("duplicate names", [_tar([("f", reg, b"1", ""), ("f", reg, b"2", "")])], {"f": b"2"}),
        (
            "opaque root (`.wh..wh..opq` at the top)",
            [
                _tar([("k", reg, b"low", "")]),
                _tar([(".wh..wh..opq", reg, b"", ""), ("n", reg, b"up", "")]),
            ],
            {"n": b"up"},
        ),
        (
            "whiteout of the root (`.wh..`)",
            [_tar([("k", reg, b"low", "")]), _tar([(".wh..", reg, b"", "")])],
            None,
        ),
        ("invalid UTF-8 name", [_tar([("b\udcff", reg, b"raw", "")], fmt=0)], {"b\udcff": b"raw"}),
        ("10,000-deep directories", [_tar([(deep, reg, b"deep", "")])], {deep: b"deep"}),
    ]


def _read_deep(mnt: Path, path: str) -> bytes:
    """Read ``path`` under ``mnt`` one component at a time (paths beyond PATH_MAX)."""
    parts = path.split("/")
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open(parts[-1], os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(leaf, 1 << 20)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def run_hostile(registry_host: str, work: Path) -> list[Outcome]:
    """Each hostile image mounted with ``lazyfs mount``: refused in one line naming the layer,
    or served as documented; ``/etc/passwd`` untouched, nothing left mounted."""
    from lazyfs.control import is_mountpoint

    outcomes = []
    passwd = Path("/etc/passwd").read_bytes()
    for what, layers, expect in _hostile_cases():
        out = Outcome(what, "refused" if expect is None else "right")
        ref = Reference.parse(f"{registry_host}/reliability/hostile-{uuid.uuid4().hex[:8]}:v1")

        async def push(ref=ref, layers=layers) -> None:
            async with RegistryClient() as client:
                await push_image(client, ref, build_image(layers))

        trio.run(push)
        mnt, cache = work / f"mnt-{ref.repository[-8:]}", work / f"cache-{ref.repository[-8:]}"
        mnt.mkdir()
        argv = [sys.executable, "-m", "lazyfs", "mount", "--daemon", "--cache-dir", str(cache)]
        started = time.monotonic()
        result = subprocess.run([*argv, str(ref), str(mnt)], capture_output=True, text=True)
        try:
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                clear = len(lines) == 1 and lines[0].startswith("lazyfs: error: layer #")
                out.tried += 1
                if expect is None and clear:
                    out.refused += 1
                    out.what = "refused: " + lines[0].split(": ", 3)[-1][:70]
                else:
                    out.notes.append(result.stderr.strip()[:200])
            else:
                for path, data in (expect or {}).items():
                    got = _read_deep(mnt, path)
                    out.record(data, got, time.monotonic() - started)
                if expect is None:
                    out.tried += 1
                    out.notes.append("mounted")
                else:
                    out.what = f"mounted, served as documented ({len(expect)} file(s) checked)"
        finally:
            if is_mountpoint(mnt):
                subprocess.run([*argv[:3], "umount", str(mnt)], capture_output=True)
            if is_mountpoint(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        if Path("/etc/passwd").read_bytes() != passwd:
            out.notes.append("/etc/passwd changed")
        outcomes.append(out)
    return outcomes


# ---------------------------------------------------------------------------- load, fuzzing


def run_load(registry_host: str, work: Path, seconds: float) -> list[Outcome]:
    """64 readers through ``lazyfs mount`` for ``seconds``; then SIGKILL of a daemon filling
    the disk cache, a damaged cache, and a new mount reading every file from it."""
    from tests.test_reliability_load import (
        MEMORY_CACHE,
        READERS,
        RSS_OVERHEAD,
        _fds,
        _files,
        _load,
        _mount,
        _rss,
    )

    files = _files()
    ref, _ = push_chunked(
        registry_host, "reliability/load", [[Entry(p, data=d) for p, d in files.items()]]
    )
    load = Outcome(f"{READERS} concurrent readers, {seconds:.0f} s, every byte checked", "right")
    with _mount(
        str(ref),
        work / "mnt-load",
        work / "cache-load",
        "--no-prefetch",
        "--memory-cache",
        str(MEMORY_CACHE),
    ) as pid:
        fds = _fds(pid)
        reads, errors = _load(work / "mnt-load", files, seconds, seed=7)
        rss = _rss(pid)
        load.tried = load.right = reads
        load.wrong_bytes = sum(1 for e in errors if e.startswith("wrong"))
        load.hangs = sum(1 for e in errors if "hung" in e)
        load.notes += [e for e in errors if not e.startswith("wrong") and "hung" not in e][:3]
        time.sleep(0.5)
        load.what = (
            f"{reads} reads right; RSS {rss >> 20} MiB (bound {(MEMORY_CACHE + RSS_OVERHEAD) >> 20}"
            f" MiB); fds {fds} -> {_fds(pid)}"
        )
        if rss > MEMORY_CACHE + RSS_OVERHEAD:
            load.notes.append("RSS over the bound")
    crash = Outcome("`kill -9` while caching, damaged cache, remount", "right")
    mnt, cache = work / "mnt-crash", work / "cache-crash"
    mnt.mkdir()
    lazyfs = [sys.executable, "-m", "lazyfs"]
    result = subprocess.run(
        [
            *lazyfs,
            "mount",
            "--daemon",
            "--prefetch-all",
            "--cache-dir",
            str(cache),
            str(ref),
            str(mnt),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(result.stdout.split("daemon pid ")[1].split(",")[0])
    enotconn = None
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    try:
        os.listdir(mnt)
        crash.notes.append("the dead mount answered")
    except OSError as exc:
        enotconn = exc.errno
    subprocess.run([*lazyfs, "umount", str(mnt)], capture_output=True, check=True)
    chunks = sorted(p for p in (cache / "chunks").rglob("*") if p.is_file())
    for n, path in enumerate(chunks[::3]):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if n % 2 else bytes([data[0] ^ 0xFF]) + data[1:])
    with _mount(str(ref), mnt, cache, "--no-prefetch"):
        for path, data in files.items():
            got, seconds_taken = read_with_deadline(mnt / path, 60)
            crash.record(data, got, seconds_taken)
        total = json.loads(
            subprocess.run([*lazyfs, "stats", "--json", str(mnt)], capture_output=True).stdout
        )["fetch"]["total"]
    crash.what = (
        f"errno {enotconn} after the kill, umount cleaned; {len(chunks[::3])} of {len(chunks)} "
        f"cache files damaged; {crash.right}/{crash.tried} files right, "
        f"{total['disk_hits']} disk hits, {total['requests']} refetch requests"
    )
    return [load, crash]


def run_fuzz(examples: int) -> Outcome:
    """The parser fuzzers of ``tests/test_fuzz_parsers.py`` with ``examples`` each."""
    out = Outcome(
        "fuzzed parsers (footers x3, TOC JSON x2, tar, multipart x2, refs, auth)", "right"
    )
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_fuzz_parsers.py",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "LAZYFS_FUZZ_EXAMPLES": str(examples)},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "no output"
    fuzzers = 9
    out.tried = examples * fuzzers
    out.right = out.tried if result.returncode == 0 else 0
    out.what = f"up to {examples} inputs x {fuzzers} fuzzers: {summary}"
    out.worst = time.monotonic() - started
    if result.returncode != 0:
        out.notes.append("a fuzzer failed; see pytest tests/test_fuzz_parsers.py")
    return out


def main() -> int:
    """Run every scenario and print the markdown table (``scripts/reliability-table``)."""
    import argparse
    import tempfile

    from tests.harness import certs
    from tests.harness.registry import RegistryServer
    from tests.harness.tokenissuer import TokenIssuer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5, help="tries of each registry fault")
    parser.add_argument("--load-seconds", type=float, default=15.0)
    parser.add_argument("--fuzz-examples", type=int, default=1000)
    args = parser.parse_args()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="lazyfs-reliability-") as tmp:
        work = Path(tmp)
        keys = work / "token-keys"
        keys.mkdir()
        ca = certs.make_ca(keys, name="lazyfs reliability token CA")
        with (
            RegistryServer(work / "registry") as registry,
            TokenIssuer(
                certs.make_token_signing_cert(keys, ca),
                users={"bob": "builder"},
                anonymous_pull=True,
            ) as issuer,
            RegistryServer(work / "token-registry", token_issuer=issuer) as token_registry,
        ):
            image = make_fault_image(
                registry.host,
                victims=len(FAULTS) * args.tries + 4,
                bystanders=len(FAULTS) * args.tries + 4,
            )
            for scenario in FAULTS:
                with FaultProxy(registry.url) as proxy:
                    outcomes.append(run_fault(scenario, proxy, image, work, args.tries))
                print(f"done: {outcomes[-1].name}", file=sys.stderr)
            outcomes.append(run_token_expiry(token_registry, work, 3))
            outcomes += run_hostile(registry.host, work)
            outcomes += run_load(registry.host, work, args.load_seconds)
            outcomes.append(run_fuzz(args.fuzz_examples))
    print(
        f"Test mounts: read timeout {BOUNDS.read_timeout:g} s per FUSE read, HTTP read timeout "
        f"{BOUNDS.http_read_timeout:g} s, {BOUNDS.attempts} attempts per request.\n"
    )
    print(markdown_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
