"""File content on demand: chunks fetched from layer blobs, verified, cached, served.

:class:`ChunkFetcher` answers "bytes ``[offset, offset+size)`` of this file" for the FUSE
layer. A file is a run of chunks in its layer's :class:`~lazyfs.fs.chunktable.ChunkTable`;
a read maps its range to chunks and gets each chunk's content from, in order:

1. nothing at all: ``zeros`` chunks;
2. the local copy of a plain layer (``LayerSource.local_path``): codec ``none`` chunks are
   read straight from that file. They carry no digest: the copy was verified as a whole
   against the layer's digests when it was made;
3. the :class:`~lazyfs.fs.cache.ChunkCache` (memory, then disk, verified on load);
4. a fetch that is already running for the same chunk (*single flight*, keyed by the chunk
   digest, so identical chunks of different files or layers are fetched once);
5. a new fetch from the layer blob.

Fetching is built around what a cold start costs (FORMATS.md §9): the number of requests,
not bytes, dominates, and the distribution registry reads 4 MiB from its storage for every
GET however small the range. So the missing chunks of a read (plus, for sequential reads,
the chunks that follow, up to ``readahead_bytes``) are sorted by blob offset and merged into
spans: neighbouring chunks, and chunks separated by less than ``merge_gap`` bytes (chunks
already cached, tar headers), become one range, a range being at most
``max_request_bytes``. Ranges are grouped into :meth:`BlobReader.read_ranges_into` calls of at
most ``max_request_bytes`` in total (one multi-range GET each where the server allows it);
at most ``concurrency`` calls run at once.

The merge gap is 64 KiB. Peers use ~1 KiB, but a gap only costs its transfer time: 64 KiB
take ~0.4 ms at the 160 MB/s of a 4 MiB range on loopback, against 5-7 ms for a request of
its own on a server that refuses multi-range requests, and fewer parts per multi-range
request. Far beyond that, the extra bytes start to cost more than they save.

Every fetched chunk goes through :func:`~lazyfs.formats.chunks.decode_chunk`, which checks
its digest, before any byte of it is served or cached. A chunk that fails is fetched again
up to ``chunk_retries`` times (a flipped bit in transit, a proxy serving garbage), then the
read fails with :class:`~lazyfs.errors.ChunkError`. Every read runs under
``trio.fail_after(read_timeout)``; every failure is a :class:`~lazyfs.errors.LazyfsError`
(registry errors after the client's own bounded retries, :class:`ReadTimeout`,
:class:`FetchError` for local I/O), so the FUSE layer can answer ``EIO``. A read never
hangs and never returns unverified bytes.

Sequential readers get read-ahead. While :meth:`ChunkFetcher.run` runs (the mount runs it
for as long as it is mounted), a read marked sequential makes sure that the chunks after it,
up to ``readahead_bytes`` of blob, are cached or being fetched: the missing ones are fetched
in the background, in batches that fill a request each, at most ``READAHEAD_FLIGHTS``
batches at a time, and the read itself waits only for its own chunks. The batch holding the
read's own chunks is one ``max_request_bytes`` request; the others, which nobody waits for
yet, are ``READAHEAD_REQUEST_FACTOR`` times bigger: the registry's cost is mostly per request
(measured on loopback: ~3.3 ms of its CPU per GET plus ~0.45 ms per MiB), so 8 MiB requests
cost it a third less than 4 MiB ones for the same bytes.
So a reader that keeps up finds its next chunks fetched, or on the way, and the registry
sees 4 MiB requests however the kernel splits and reorders the reads. Read-ahead fetches are
ordinary flights: other readers wait on them, their chunks are verified and cached like any
other, a failure fails only the readers waiting for its chunks, and they are cancelled with
:meth:`~ChunkFetcher.run`. Chunks of the window that are only in the disk cache are
loaded into memory (and verified) in the background too, so a re-read from the disk cache
overlaps reading files with answering the kernel. Without :meth:`~ChunkFetcher.run`
(tests), a sequential read's own fetch is extended to one full request instead.

Response bodies are streamed into buffers the fetcher reuses (as big as a read-ahead
request), and decoded from there. A new multi-MiB buffer costs a page fault per 4 KiB page the
first time it is written: on the 2-core VM of the benchmarks that is ~1 ms per MiB, more
than receiving and verifying the bytes. Decoding (zstd and sha256, which release the GIL)
runs in worker threads (at most ``DECODE_THREADS`` at once) unless the batch is tiny, so it
overlaps receiving the next response and answering the kernel in the event loop.
:func:`~lazyfs.formats.chunks.decode_chunk` returns new objects, never views of the
buffer, so a buffer is reused only once the decoding is over.

:meth:`ChunkFetcher.prefetch` warms the cache in the background: first, for every layer,
the chunks before the layer's prefetch boundary (the files a converter put first), then,
if asked, everything else. It keeps at most two requests in flight and starts none while
an on-demand fetch is running, so it never delays a read by more than the requests it has
already started.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import takewhile

import trio

from ..errors import ChunkError, FetchError, LazyfsError, ReadTimeout, leaf_exceptions
from ..formats.chunks import decode_chunk
from ..formats.model import CODEC_NONE, CODEC_ZEROS, Chunk
from ..oci.blobs import BlobReader
from .cache import ChunkCache
from .chunktable import ChunkTable

__all__ = ["ChunkFetcher", "FetcherStats", "LayerSource", "LayerStats"]

log = logging.getLogger("lazyfs.fetcher")

MiB = 1024 * 1024
#: Largest range, and largest read_ranges call, in bytes (the registry reads 4 MiB per GET).
DEFAULT_MAX_REQUEST_BYTES = 4 * MiB
#: Misses closer than this in the blob are fetched as one range (see the module docs).
DEFAULT_MERGE_GAP = 64 * 1024
#: Concurrent read_ranges calls (FORMATS.md §9: 4-8 help, 32 only add latency).
DEFAULT_CONCURRENCY = 8
#: How far past a sequential read to fetch, in blob bytes (see the module docs).
DEFAULT_READAHEAD_BYTES = 16 * MiB
#: Read-ahead batches (requests) in flight at once, beyond those a read is waiting for.
READAHEAD_FLIGHTS = 3
#: Read-ahead batches that no read waits for yet are requests of up to this many times
#: ``max_request_bytes`` (see the module docs).
READAHEAD_REQUEST_FACTOR = 2
#: Read-ahead covers at most this many times ``readahead_bytes`` of file content, and at
#: most a quarter of the memory cache.
READAHEAD_FILE_FACTOR = 8
#: Files whose sequential position is remembered for read-ahead (then the memory is reset).
READAHEAD_STREAMS = 4096
#: Prefetch requests in flight at once.
PREFETCH_REQUESTS = 2
#: Most blob bytes :meth:`ChunkFetcher.prefetch_file` fetches of one file (its beginning).
OPEN_PREFETCH_BYTES = 8 * MiB
#: Batches decoding to more than this go to a worker thread.
DECODE_INLINE_BYTES = 64 * 1024
#: Worker threads decoding at once (zstd and sha256 release the GIL: they run in parallel).
DECODE_THREADS = 2
#: Response buffers kept for reuse, each of READAHEAD_REQUEST_FACTOR * max_request_bytes.
SPARE_BUFFERS = 4
#: Local (plain layer) reads bigger than this go to a worker thread.
LOCAL_INLINE_BYTES = 256 * 1024
#: Fetches whose disk writes may wait for the write-behind task (each up to
#: max_request_bytes of content, held in memory until written: 64 MiB at the defaults).
WRITE_BEHIND_QUEUE = 16
#: Seconds the write-behind task may spend finishing queued writes when it is cancelled.
WRITE_BEHIND_DRAIN = 30.0
#: Ranges per read_ranges call, at most.
MAX_RANGES_PER_CALL = 32


@dataclass
class LayerSource:
    """One layer as the fetcher sees it.

    ``table``: the layer's chunks. ``blob``: where remote chunks are fetched from (None for
    plain layers). ``local_path``: the verified local copy plain layers' codec ``none``
    chunks point into (their ``blob_offset`` is an offset in it). ``prefetch_offset``:
    chunks starting before this blob offset are prefetched first. ``no_prefetch``: the
    layer asks not to be prefetched.
    """

    name: str
    table: ChunkTable
    blob: BlobReader | None = None
    local_path: str | None = None
    prefetch_offset: int | None = None
    no_prefetch: bool = False


@dataclass(slots=True)
class LayerStats:
    """What the fetcher did for one layer. Counters only grow, except the prefetch figures."""

    name: str = ""
    #: Bytes received from the blob (the ranges asked for, gaps included).
    bytes_fetched: int = 0
    #: :meth:`BlobReader.read_ranges_into` calls (one HTTP request each, usually).
    requests: int = 0
    #: Chunks decoded and verified from fetched bytes.
    chunks_fetched: int = 0
    #: Chunks a read found in the memory or disk cache.
    memory_hits: int = 0
    disk_hits: int = 0
    #: Chunks a read got from a fetch another task was already running.
    shared_fetches: int = 0
    #: Chunks read from a plain layer's local copy, and zero chunks served without I/O.
    local_chunks: int = 0
    zero_chunks: int = 0
    #: Fetched chunks that failed decoding or their digest (each one is fetched again).
    verify_failures: int = 0
    #: Reads that failed.
    errors: int = 0
    #: Read-ahead requests started, and those that failed (logged; readers waiting for
    #: their chunks get the error).
    readahead_requests: int = 0
    readahead_errors: int = 0
    prefetch_done: int = 0
    prefetch_total: int = 0
    prefetch_errors: int = 0
    prefetch_bytes: int = 0
    #: Files whose chunks :meth:`ChunkFetcher.prefetch_file` started fetching whole.
    file_prefetches: int = 0


@dataclass
class FetcherStats:
    """Per-layer :class:`LayerStats`."""

    layers: list[LayerStats] = field(default_factory=list)

    def snapshot(self) -> dict:
        """``{"layers": [...], "total": {...}}`` as plain dicts."""
        layers = [asdict(s) for s in self.layers]
        total: dict = {}
        for s in layers:
            for k, v in s.items():
                if isinstance(v, int):
                    total[k] = total.get(k, 0) + v
        return {"layers": layers, "total": total}


class _Flight:
    """One running fetch of a batch of chunks, for the readers that wait on it.

    When ``done`` is set: ``results`` holds the verified content of the chunks that made it,
    ``failed`` the error of each chunk that kept failing verification, ``error`` a failure
    of the whole batch; ``abandoned`` means the fetching task was cancelled and a waiter
    should try again itself.
    """

    __slots__ = ("abandoned", "done", "error", "failed", "results")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.results: dict[bytes, bytes] = {}
        self.failed: dict[bytes, LazyfsError] = {}
        self.error: LazyfsError | None = None
        self.abandoned = False


@dataclass(slots=True)
class _Span:
    """A byte range of a blob and the chunks that lie in it."""

    start: int
    end: int
    chunks: list[tuple[bytes, Chunk]]


def _lazyfs_error(exc: BaseException, what: str) -> LazyfsError:
    """``exc`` as a LazyfsError (the first one inside an exception group)."""
    if isinstance(exc, LazyfsError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for leaf in leaf_exceptions(exc):
            if isinstance(leaf, LazyfsError):
                return leaf
    err = FetchError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _decode_items(
    items: list[tuple[bytes, Chunk, memoryview]], layer: str
) -> tuple[dict[bytes, bytes], dict[bytes, ChunkError]]:
    """Decode and verify each item: ``(content by key, error by key)``. Any thread."""
    ok: dict[bytes, bytes] = {}
    bad: dict[bytes, ChunkError] = {}
    for key, chunk, data in items:
        what = f"layer {layer}: chunk at blob offset {chunk.blob_offset}"
        try:
            ok[key] = decode_chunk(chunk, data, what=what)
        except ChunkError as exc:
            bad[key] = exc
    return ok, bad


class _Buffers:
    """Response buffers of ``size`` bytes, kept for reuse (see the module docs).

    :meth:`take` gives a buffer of at least ``n`` bytes: a spare one if ``n`` fits, else a
    new one (of ``size`` bytes, to be kept, unless ``n`` is under a quarter of that: a new
    buffer is zeroed and its pages faulted in, 3 ms for 8 MiB here, which a start-up's first
    small requests should not each pay); :meth:`give` takes a ``size`` one back (at most
    ``keep`` are kept). Event loop only.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._spare: list[bytearray] = []

    def take(self, n: int) -> bytearray:
        if n > self.size:
            return bytearray(n)
        if self._spare:
            return self._spare.pop()
        if n < self.size // 4:
            return bytearray(n)
        return bytearray(self.size)

    def give(self, buffer: bytearray) -> None:
        if len(buffer) == self.size and len(self._spare) < self.keep:
            self._spare.append(buffer)


def _pread_all(path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Each ``(offset, length)`` of the file at ``path``, exactly."""
    out = []
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for offset, length in ranges:
            data = os.pread(fd, length, offset)
            while len(data) < length:
                more = os.pread(fd, length - len(data), offset + len(data))
                if not more:
                    raise OSError(f"{path}: ends before byte {offset + length}")
                data += more
            out.append(data)
    finally:
        os.close(fd)
    return out


def _blob_key(src: LayerSource, i: int) -> bytes | None:
    """Chunk ``i``'s digest (its cache key) if its content comes from the blob: not for
    zeros, nor for chunks read from a plain layer's local copy, nor without a digest."""
    codec = src.table.codec(i)
    if codec == CODEC_ZEROS or (src.local_path is not None and codec == CODEC_NONE):
        return None
    return src.table.digest_bytes(i)


def _prefetch_order(
    table: ChunkTable, boundary: int | None, everything: bool
) -> tuple[list[int], list[int]]:
    """Chunks to prefetch, in blob order: those before ``boundary``, then (if asked) the rest.

    Zero chunks, chunks without a digest and repeated digests are left out.
    """
    first: list[tuple[int, int]] = []
    rest: list[tuple[int, int]] = []
    seen: set[bytes] = set()
    for i in range(len(table)):
        if table.codec(i) == CODEC_ZEROS:
            continue
        key = table.digest_bytes(i)
        if key is None or key in seen:
            continue
        seen.add(key)
        offset, _ = table.blob_range(i)
        if boundary is not None and offset < boundary:
            first.append((offset, i))
        elif everything:
            rest.append((offset, i))
    first.sort()
    rest.sort()
    return [i for _, i in first], [i for _, i in rest]


class ChunkFetcher:
    """Serves file content from the layers' chunks; see the module docs.

    ``layers``: the image's layers (``read``'s ``layer`` indexes them). ``cache``: where
    verified chunk content is kept. ``max_request_bytes``: largest range and largest
    read_ranges call. ``merge_gap``: misses closer than this are fetched as one range.
    ``concurrency``: read_ranges calls in flight at once. ``readahead_bytes``: how far past
    a sequential read to fetch, in blob bytes. ``read_timeout``: seconds a :meth:`read` may
    take in all. ``chunk_retries``: fetches of a chunk that failed verification before
    giving up. Call :meth:`run` in a nursery for write-behind and read-ahead.
    """

    def __init__(
        self,
        layers: Sequence[LayerSource],
        cache: ChunkCache,
        *,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        merge_gap: int = DEFAULT_MERGE_GAP,
        concurrency: int = DEFAULT_CONCURRENCY,
        readahead_bytes: int = DEFAULT_READAHEAD_BYTES,
        read_timeout: float,
        chunk_retries: int = 2,
    ) -> None:
        if max_request_bytes <= 0 or merge_gap < 0 or concurrency < 1 or readahead_bytes < 0:
            raise ValueError("invalid fetcher limits")
        if read_timeout <= 0 or chunk_retries < 0:
            raise ValueError("read_timeout must be positive and chunk_retries not negative")
        self.layers = list(layers)
        self.cache = cache
        self.max_request_bytes = max_request_bytes
        self.merge_gap = merge_gap
        self.readahead_bytes = readahead_bytes
        self.read_timeout = read_timeout
        self.chunk_retries = chunk_retries
        self.stats = FetcherStats([LayerStats(name=src.name) for src in self.layers])
        self._limiter = trio.CapacityLimiter(concurrency)
        self._decode_limiter = trio.CapacityLimiter(DECODE_THREADS)
        self._buffers = _Buffers(READAHEAD_REQUEST_FACTOR * max_request_bytes, SPARE_BUFFERS)
        self._flights: dict[bytes, _Flight] = {}
        self._write_queue: trio.MemorySendChannel | None = None  # while write_behind runs
        self._background: trio.Nursery | None = None  # while run() runs
        self._readahead_running = 0  # read-ahead flights running
        # (layer, first chunk of the file) -> [first chunk of its last sequential read,
        # chunk up to which read-ahead has looked]
        self._streams: dict[tuple[int, int], list[int]] = {}
        self._on_demand = 0  # on-demand fetches running
        self._idle = trio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ reads

    async def read(
        self,
        layer: int,
        first: int,
        count: int,
        offset: int,
        size: int,
        *,
        sequential_hint: bool = False,
    ) -> bytes:
        """Bytes ``[offset, offset+size)`` of the file whose chunks are ``[first, first+count)``.

        Short at the end of the file. ``sequential_hint``: the file is being read in order,
        so the chunks after the range (up to ``readahead_bytes``) are fetched along.
        Raises a :class:`~lazyfs.errors.LazyfsError` on any failure, within
        ``read_timeout`` seconds.
        """
        src = self.layers[layer]
        if size <= 0 or count <= 0 or offset < 0:
            return b""
        last_offset, last_size = src.table.file_span(first + count - 1)
        end = min(offset + size, last_offset + last_size)
        if offset >= end:
            return b""
        stats = self.stats.layers[layer]
        try:
            with trio.fail_after(self.read_timeout):
                return await self._read(layer, first, count, offset, end, sequential_hint)
        except trio.TooSlowError:
            stats.errors += 1
            raise ReadTimeout(
                f"layer {src.name}: reading {end - offset} bytes at {offset} took longer "
                f"than {self.read_timeout:g} s"
            ) from None
        except LazyfsError:
            stats.errors += 1
            raise

    async def _read(
        self, layer: int, first: int, count: int, offset: int, end: int, sequential: bool
    ) -> bytes:
        src = self.layers[layer]
        table = src.table
        stats = self.stats.layers[layer]
        i0 = table.find(first, count, offset)
        i1 = table.find(first, count, end - 1)

        local: dict[int, tuple[int, int]] = {}  # chunk -> (offset in local file, length)
        remote: dict[int, bytes] = {}  # chunk -> key
        for i in range(i0, i1 + 1):
            codec = table.codec(i)
            if codec == CODEC_ZEROS:
                stats.zero_chunks += 1
                continue
            if src.local_path is not None and codec == CODEC_NONE:
                chunk_offset, chunk_size = table.file_span(i)
                lo = max(offset, chunk_offset) - chunk_offset
                hi = min(end, chunk_offset + chunk_size) - chunk_offset
                local[i] = (table.blob_range(i)[0] + lo, hi - lo)
                continue
            key = table.digest_bytes(i)
            if key is None:
                raise ChunkError(
                    f"layer {src.name}: chunk at blob offset {table.blob_range(i)[0]} has no "
                    "digest, so its content cannot be verified"
                )
            remote[i] = key

        if sequential:
            self._read_ahead(layer, first, count, i0, i1)
        contents: dict[bytes, bytes] = {}
        if remote:
            await self._get_chunks(layer, first, count, i1, remote, contents, sequential)
        local_data: dict[int, bytes] = {}
        if local:
            local_data = await self._read_local(src, local)
            stats.local_chunks += len(local)

        parts: list[bytes | memoryview] = []
        position = offset
        for i in range(i0, i1 + 1):
            chunk_offset, chunk_size = table.file_span(i)
            lo = max(offset, chunk_offset)
            hi = min(end, chunk_offset + chunk_size)
            if hi <= lo:
                continue
            if lo != position:
                raise ChunkError(f"layer {src.name}: the file's chunks leave a hole at {position}")
            if i in local:
                parts.append(local_data[i])
            elif i in remote:
                parts.append(memoryview(contents[remote[i]])[lo - chunk_offset : hi - chunk_offset])
            else:
                parts.append(bytes(hi - lo))
            position = hi
        if position != end:
            raise ChunkError(f"layer {src.name}: the file's chunks end at {position}, not {end}")
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    async def _read_local(
        self, src: LayerSource, ranges: dict[int, tuple[int, int]]
    ) -> dict[int, bytes]:
        """The local-copy bytes of each chunk (only the part the read needs)."""
        assert src.local_path is not None
        path = src.local_path
        order = list(ranges)
        wanted = [ranges[i] for i in order]
        try:
            if sum(n for _, n in wanted) <= LOCAL_INLINE_BYTES:
                got = _pread_all(path, wanted)
            else:
                got = await trio.to_thread.run_sync(_pread_all, path, wanted)
        except OSError as exc:
            raise FetchError(f"layer {src.name}: cannot read the local copy: {exc}") from None
        return dict(zip(order, got, strict=True))

    async def _get_chunks(
        self,
        layer: int,
        first: int,
        count: int,
        last: int,
        needed: dict[int, bytes],
        contents: dict[bytes, bytes],
        sequential: bool,
    ) -> None:
        """Fill ``contents`` with the verified content of every key in ``needed``."""
        stats = self.stats.layers[layer]
        table = self.layers[layer].table
        keys = set(needed.values())
        index_of = {key: i for i, key in needed.items()}
        for key in keys:
            data = self.cache.get_memory(key)
            if data is not None:
                contents[key] = data
                stats.memory_hits += 1
        rest = [k for k in keys if k not in contents and k not in self._flights]
        if rest:
            found = await self.cache.get_many_async(rest)
            contents.update(found)
            stats.disk_hits += len(found)

        while True:
            missing = [k for k in keys if k not in contents]
            if not missing:
                return
            # From here to starting the fetch there is no await: the flights we register
            # are seen by every task that looks after us.
            waits: list[tuple[bytes, _Flight]] = []
            own: dict[bytes, Chunk] = {}
            for key in missing:
                flight = self._flights.get(key)
                if flight is not None:
                    waits.append((key, flight))
                    continue
                data = self.cache.get_memory(key)  # a flight may have finished meanwhile
                if data is not None:
                    contents[key] = data
                    stats.memory_hits += 1
                    continue
                if key not in own:
                    own[key] = table.chunk(index_of[key])
            if own:
                if sequential:
                    self._add_readahead(layer, first, count, last, own)
                flight = await self._fetch_owned(layer, own, on_demand=True)
                self._take(flight, own, keys, contents)
            for key, flight in waits:
                await flight.done.wait()
                if flight.abandoned:
                    continue  # its owner was cancelled: the next round fetches it
                stats.shared_fetches += 1
                self._take(flight, {key: None}, keys, contents)

    @staticmethod
    def _take(
        flight: _Flight, fetched: dict, keys: set[bytes], contents: dict[bytes, bytes]
    ) -> None:
        """Copy what a finished flight has for ``keys`` into ``contents``, or raise."""
        for key in fetched:
            if key not in keys:
                continue  # read ahead, not needed by this read
            data = flight.results.get(key)
            if data is not None:
                contents[key] = data
                continue
            err = flight.failed.get(key) or flight.error
            if err is None:
                err = FetchError("a chunk fetch ended without a result")
            raise copy.copy(err)

    def _add_readahead(
        self, layer: int, first: int, count: int, last: int, own: dict[bytes, Chunk]
    ) -> None:
        """Add to ``own`` the chunks after ``last``, up to ``readahead_bytes`` of the file.

        Read-ahead stops early where the fetch would need more than one request of
        ``max_request_bytes``: a second request would cost as much as fetching those
        chunks when they are read.
        """
        src = self.layers[layer]
        table = src.table
        chunk_offset, chunk_size = table.file_span(last)
        limit = chunk_offset + chunk_size + self.readahead_bytes
        budget = self.max_request_bytes - sum(c.blob_length for c in own.values())
        window = takewhile(lambda i: table.file_span(i)[0] < limit, range(last + 1, first + count))
        for key, i, _ in self._missing(src, window, own, budget):
            own[key] = table.chunk(i)

    def _missing(
        self, src: LayerSource, indices: Iterable[int], taken: Container[bytes], budget: int
    ) -> Iterator[tuple[bytes, int, int]]:
        """``(key, chunk, blob length)`` of the chunks among ``indices`` to fetch: from the
        blob, not in ``taken`` (read as it goes: the caller may add to it), not in flight, not
        cached; until their blob bytes would pass ``budget``."""
        for i in indices:
            key = _blob_key(src, i)
            if key is None or key in taken or key in self._flights or self.cache.contains(key):
                continue
            _, length = src.table.blob_range(i)
            budget -= length
            if budget < 0:
                return
            yield key, i, length

    # ------------------------------------------------------------------ fetching

    async def _fetch_owned(
        self, layer: int, chunks: dict[bytes, Chunk], *, on_demand: bool
    ) -> _Flight:
        """Fetch ``chunks`` (none of them in flight) as one flight others can wait on.

        Returns the finished flight (its ``failed`` may name chunks that kept failing
        verification); raises if the whole batch failed. The content goes to the cache:
        memory and disk for on-demand fetches, disk only for prefetches when there is a
        disk level (prefetched data must not push the working set out of memory).
        """
        return await self._run_flight(layer, chunks, self._register(chunks, on_demand), on_demand)

    def _register(self, chunks: dict[bytes, Chunk], on_demand: bool) -> _Flight:
        """A new flight for ``chunks``, registered so that readers wait for it."""
        flight = _Flight()
        for key in chunks:
            self._flights[key] = flight
        if on_demand:
            self._on_demand += 1
            if self._on_demand == 1:
                self._idle = trio.Event()
        return flight

    async def _run_flight(
        self,
        layer: int,
        chunks: dict[bytes, Chunk],
        flight: _Flight,
        on_demand: bool,
        request_bytes: int | None = None,
    ) -> _Flight:
        """Fetch the chunks of a flight :meth:`_register` made; see :meth:`_fetch_owned`.

        ``request_bytes``: the largest request (default ``max_request_bytes``).
        """
        keys = list(chunks)
        handed_over = False
        try:
            try:
                flight.results, flight.failed = await self._fetch_and_decode(
                    layer, chunks, request_bytes or self.max_request_bytes
                )
            except BaseException as exc:
                cancelled, rest = _split_cancelled(exc)
                if rest is None:
                    flight.abandoned = True
                    raise
                flight.error = _lazyfs_error(rest, f"layer {self.layers[layer].name}")
                if cancelled is None:
                    raise flight.error from None
                raise
            finally:
                flight.done.set()
                if on_demand:
                    self._on_demand -= 1
                    if self._on_demand == 0:
                        self._idle.set()
            # Waiters have their data. The keys stay registered until the cache has them,
            # so nobody starts a second fetch in between.
            handed_over = await self._cache_results(flight, keys, on_demand=on_demand)
        finally:
            if not handed_over:
                self._unregister(flight, keys)
        return flight

    def _unregister(self, flight: _Flight, keys: list[bytes]) -> None:
        for key in keys:
            if self._flights.get(key) is flight:
                del self._flights[key]

    async def _cache_results(self, flight: _Flight, keys: list[bytes], *, on_demand: bool) -> bool:
        """Put a finished flight's chunks in the cache; True if the write-behind task took them.

        The memory level is filled at once (on-demand fetches; prefetches only without a
        disk level, so they do not push the working set out of memory). The disk write goes
        to :meth:`write_behind` when it runs and has room, else it happens here.
        """
        items = list(flight.results.items())
        memory = on_demand or not self.cache.has_disk
        queue = self._write_queue
        if queue is not None and items:
            if memory:
                for key, data in items:
                    self.cache.put_memory(key, data)
            try:
                queue.send_nowait((flight, keys, items))
                return True
            except trio.WouldBlock:
                pass  # the writer is behind: write here, which slows fetching down
        if items:
            # decode_chunk checked every item against its digest, which is its key.
            await self.cache.put_many_async(items, memory=memory, verified=True)
        return False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the fetcher's background work until cancelled: write-behind and read-ahead.

        Run it in the mount's nursery (``await nursery.start(fetcher.run)``). While it runs,
        disk writes happen in :meth:`write_behind` and sequential reads get read-ahead (see
        the module docs). When cancelled, read-ahead fetches are cancelled (readers waiting
        for them fetch their chunks themselves) and the queued disk writes are finished.
        """
        async with trio.open_nursery() as nursery:
            await nursery.start(self.write_behind)
            self._background = nursery
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._background = None

    def _read_ahead(self, layer: int, first: int, count: int, start: int, last: int) -> None:
        """Start background fetches for a sequential read of chunks ``[start, last]``.

        Looks at the file's chunks from ``start`` on, up to ``readahead_bytes`` of blob past
        ``last``, and starts a flight for each batch of missing chunks that fills a request
        (or ends the file, or holds chunks of this read), at most ``READAHEAD_FLIGHTS`` of
        those that hold none. A partial batch at the end of the window waits for a later
        read, so that requests stay full. Chunks found in the disk cache only are loaded
        into memory in the background (one task for those of this read's window). Where the
        previous read of the file left off is remembered, so a read in order looks only at
        the chunks that came into its window. No await: the flights are registered before
        any other task runs.
        """
        nursery = self._background
        if nursery is None:
            return
        src = self.layers[layer]
        table = src.table
        stream = (layer, first)
        known = self._streams.get(stream)
        i = start
        if known is not None and known[0] <= start:
            i = max(start, known[1])  # in order: what is before known[1] was seen to
        end = first + count
        offset, size = table.file_span(last)
        file_limit = (
            offset
            + size
            + min(READAHEAD_FILE_FACTOR * self.readahead_bytes, self.cache.memory_limit // 4)
        )
        blob_left = self.readahead_bytes
        batch: dict[bytes, Chunk] = {}
        batch_bytes = 0
        batch_start = i
        limit = self._batch_limit(needed=i <= last)
        load: dict[bytes, None] = {}  # on disk, not in memory: loaded in the background
        while i < end:
            _, length = table.blob_range(i)
            if i > last:
                offset, _ = table.file_span(i)
                if offset >= file_limit or blob_left <= 0:
                    break
                if table.codec(i) != CODEC_ZEROS:
                    blob_left -= length
            key = _blob_key(src, i)
            if key is None or key in batch or key in self._flights:
                i += 1
                continue
            if self.cache.contains(key):
                if not self.cache.in_memory(key):
                    load[key] = None
                i += 1
                continue
            if batch and batch_bytes + length > limit:
                if not self._start_read_ahead(layer, batch, needed=batch_start <= last):
                    # As many in flight as allowed: a later read goes on from here.
                    batch, i = {}, batch_start
                    break
                batch, batch_bytes, batch_start = {}, 0, i
                limit = self._batch_limit(needed=i <= last)
            batch[key] = table.chunk(i)
            batch_bytes += length
            i += 1
        if batch:
            if i >= end or batch_start <= last:
                if not self._start_read_ahead(layer, batch, needed=batch_start <= last):
                    i = batch_start
            else:
                i = batch_start  # a partial batch: left for a later read
        if load:
            self._start_load_ahead(list(load))
        if len(self._streams) >= READAHEAD_STREAMS:
            self._streams.clear()
        self._streams[stream] = [start, i]

    def prefetch_file(
        self, layer: int, first: int, count: int, *, max_bytes: int = OPEN_PREFETCH_BYTES
    ) -> bool:
        """Start fetching the file of chunks ``[first, first+count)`` in the background.

        For files that are about to be read in many places at once, like an executable or a
        shared library that was just opened (the kernel maps it and faults its pages in,
        each fault a read that waits for its chunks): one request instead of a round trip
        per fault. Fetches the missing chunks of the file's first ``max_bytes`` of blob, in
        batches of one request each; chunks already cached or being fetched are left out.
        They are ordinary read-ahead flights: reads wait for them instead of fetching, and
        their chunks are verified and cached like any other. Needs :meth:`run`; returns
        whether anything was started. No await.
        """
        src = self.layers[layer]
        if self._background is None or src.blob is None or count <= 0:
            return False
        table = src.table
        batch: dict[bytes, Chunk] = {}
        batch_bytes = 0
        started = False
        taken: set[bytes] = set()  # in this file's batches (a batch is handed over whole)
        for key, i, length in self._missing(src, range(first, first + count), taken, max_bytes):
            taken.add(key)
            if batch and batch_bytes + length > self.max_request_bytes:
                started |= self._start_read_ahead(layer, batch, needed=True)
                batch, batch_bytes = {}, 0
            batch[key] = table.chunk(i)
            batch_bytes += length
        if batch:
            started |= self._start_read_ahead(layer, batch, needed=True)
        if started:
            self.stats.layers[layer].file_prefetches += 1
        return started

    def _start_load_ahead(self, keys: list[bytes]) -> None:
        """Load ``keys`` from the disk cache into memory in the background.

        The keys are registered as a flight, so readers wait for the load instead of
        loading them a second time; the flight always ends *abandoned*: its waiters look in
        memory again, and fetch what the load did not bring (a file gone or corrupt).
        """
        nursery = self._background
        if nursery is None:
            return
        flight = _Flight()
        for key in keys:
            self._flights[key] = flight
        nursery.start_soon(self._load_ahead, keys, flight)

    async def _load_ahead(self, keys: list[bytes], flight: _Flight) -> None:
        try:
            await self.cache.get_many_async(keys)  # verified, then kept in memory
        finally:
            flight.abandoned = True
            flight.done.set()
            self._unregister(flight, keys)

    def _batch_limit(self, *, needed: bool) -> int:
        """Blob bytes in a read-ahead batch: a read waits for it (``needed``) or not yet.

        One a read waits for is one ordinary request. The others are bigger, but at most
        half the read-ahead window: a batch is started once full, and it must be able to
        fill while still ahead of the reader.
        """
        if needed:
            return self.max_request_bytes
        return max(
            1, min(READAHEAD_REQUEST_FACTOR * self.max_request_bytes, self.readahead_bytes // 2)
        )

    def _start_read_ahead(self, layer: int, batch: dict[bytes, Chunk], *, needed: bool) -> bool:
        """Start a background flight for ``batch``; False if the limit does not allow it.

        ``needed``: a read is about to wait for some of these chunks (no limit then: it
        would fetch them itself otherwise).
        """
        nursery = self._background
        if nursery is None or (not needed and self._readahead_running >= READAHEAD_FLIGHTS):
            return False
        flight = self._register(batch, True)
        self._readahead_running += 1
        self.stats.layers[layer].readahead_requests += 1
        limit = self._batch_limit(needed=needed)
        nursery.start_soon(self._read_ahead_flight, layer, batch, flight, limit)
        return True

    async def _read_ahead_flight(
        self, layer: int, batch: dict[bytes, Chunk], flight: _Flight, request_bytes: int
    ) -> None:
        stats = self.stats.layers[layer]
        try:
            with trio.fail_after(self.read_timeout):
                await self._run_flight(layer, batch, flight, True, request_bytes)
            if flight.failed:
                stats.readahead_errors += 1
        except (LazyfsError, trio.TooSlowError) as exc:
            stats.readahead_errors += 1
            log.warning(
                "layer %s: read-ahead of %d chunk(s) failed: %s",
                self.layers[layer].name,
                len(batch),
                exc or type(exc).__name__,
            )
        finally:
            self._readahead_running -= 1

    async def write_behind(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write fetched chunks to the disk cache in the background, until cancelled.

        Run it in the mount's nursery: while it runs, a read returns as soon as its chunks
        are verified and in memory, and the disk writes happen here instead of on the read
        path. When cancelled, the writes already queued are finished first (shielded, for
        at most ``WRITE_BEHIND_DRAIN`` seconds), so a clean unmount leaves them on disk.
        """
        send, receive = trio.open_memory_channel(WRITE_BEHIND_QUEUE)
        self._write_queue = send
        task_status.started()
        try:
            async for flight, keys, items in receive:
                # One write, a few MB in a thread, always runs to its end: cancelled midway
                # (to_thread checks before starting) it would be lost.
                with trio.CancelScope(shield=True):
                    await self._write_and_unregister(flight, keys, items)
        finally:
            self._write_queue = None
            with trio.CancelScope(shield=True), trio.move_on_after(WRITE_BEHIND_DRAIN):
                while True:
                    try:
                        flight, keys, items = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    await self._write_and_unregister(flight, keys, items)

    async def _write_and_unregister(
        self, flight: _Flight, keys: list[bytes], items: list[tuple[bytes, bytes]]
    ) -> None:
        try:
            await self.cache.put_many_async(items, memory=False, verified=True)
        finally:
            self._unregister(flight, keys)

    async def _fetch_and_decode(
        self, layer: int, chunks: dict[bytes, Chunk], request_bytes: int
    ) -> tuple[dict[bytes, bytes], dict[bytes, LazyfsError]]:
        """Fetch and verify ``chunks``, refetching those that fail up to ``chunk_retries`` times."""
        stats = self.stats.layers[layer]
        src = self.layers[layer]
        if src.blob is None:
            raise FetchError(f"layer {src.name}: has no blob to fetch chunks from")
        results: dict[bytes, bytes] = {}
        pending = dict(chunks)
        for attempt in range(self.chunk_retries + 1):
            spans = self._plan(pending, request_bytes)
            buffers: list[bytearray] = []
            try:
                datas = await self._fetch_spans(layer, spans, buffers, request_bytes)
                items: list[tuple[bytes, Chunk, memoryview]] = []
                for span, data in zip(spans, datas, strict=True):
                    for key, chunk in span.chunks:
                        start = chunk.blob_offset - span.start
                        items.append((key, chunk, data[start : start + chunk.blob_length]))
                ok, bad = await self._decode(items, src.name)
            finally:
                # The decoding is over (or never started): nothing refers to the buffers.
                for buffer in buffers:
                    self._buffers.give(buffer)
            results.update(ok)
            stats.chunks_fetched += len(ok)
            if not bad:
                return results, {}
            stats.verify_failures += len(bad)
            log.warning(
                "layer %s: %d chunk(s) failed verification (attempt %d of %d): %s",
                src.name,
                len(bad),
                attempt + 1,
                self.chunk_retries + 1,
                next(iter(bad.values())),
            )
            pending = {key: chunks[key] for key in bad}
        failed: dict[bytes, LazyfsError] = {
            key: ChunkError(f"{err} (still failing after {self.chunk_retries + 1} fetches)")
            for key, err in bad.items()
        }
        return results, failed

    def _plan(self, chunks: dict[bytes, Chunk], request_bytes: int) -> list[_Span]:
        """``chunks`` merged into spans of the blob of up to ``request_bytes`` (module docs)."""
        spans: list[_Span] = []
        for key, chunk in sorted(chunks.items(), key=lambda kc: kc[1].blob_offset):
            start, end = chunk.blob_offset, chunk.blob_end
            if spans:
                span = spans[-1]
                if (
                    start <= span.end + self.merge_gap
                    and max(end, span.end) - span.start <= request_bytes
                ):
                    span.end = max(span.end, end)
                    span.chunks.append((key, chunk))
                    continue
            spans.append(_Span(start, end, [(key, chunk)]))
        return spans

    async def _fetch_spans(
        self, layer: int, spans: list[_Span], buffers: list[bytearray], request_bytes: int
    ) -> list[memoryview]:
        """The bytes of every span, in read_ranges_into calls of up to ``request_bytes`` each.

        The blob is read into buffers taken from the spares: they are appended to
        ``buffers`` (also when this fails), for the caller to give back when done.
        """
        src = self.layers[layer]
        stats = self.stats.layers[layer]
        assert src.blob is not None
        blob = src.blob
        calls: list[list[int]] = []
        size = 0
        for n, span in enumerate(spans):
            length = span.end - span.start
            if not calls or size + length > request_bytes or len(calls[-1]) >= MAX_RANGES_PER_CALL:
                calls.append([])
                size = 0
            calls[-1].append(n)
            size += length
        out: list[memoryview] = [memoryview(b"")] * len(spans)
        errors: list[LazyfsError] = []

        async def call(members: list[int]) -> None:
            ranges = [(spans[n].start, spans[n].end - spans[n].start) for n in members]
            async with self._limiter:
                buffer = self._buffers.take(sum(length for _, length in ranges))
                buffers.append(buffer)
                stats.requests += 1
                try:
                    got = await blob.read_ranges_into(ranges, buffer)
                except Exception as exc:
                    errors.append(_lazyfs_error(exc, f"layer {src.name}"))
                    return
                except BaseExceptionGroup as group:
                    cancelled, rest = _split_cancelled(group)
                    if rest is not None:
                        errors.append(_lazyfs_error(rest, f"layer {src.name}"))
                    if cancelled is not None:
                        raise cancelled from None
                    return
            for n, data in zip(members, got, strict=True):
                out[n] = data
                stats.bytes_fetched += len(data)

        if len(calls) == 1:
            await call(calls[0])
        else:
            async with trio.open_nursery() as nursery:
                for members in calls:
                    nursery.start_soon(call, members)
        if errors:
            raise errors[0]
        return out

    async def _decode(
        self, items: list[tuple[bytes, Chunk, memoryview]], layer: str
    ) -> tuple[dict[bytes, bytes], dict[bytes, ChunkError]]:
        """Decode and verify ``items``: in the event loop if small, else in a thread."""
        size = sum(chunk.inner_offset + chunk.size for _, chunk, _ in items)
        if size <= DECODE_INLINE_BYTES:
            return _decode_items(items, layer)
        return await trio.to_thread.run_sync(
            _decode_items, items, layer, limiter=self._decode_limiter
        )

    # ------------------------------------------------------------------ prefetch

    async def prefetch(
        self, *, everything: bool = False, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Warm the cache: every layer's chunks before its prefetch boundary, then the rest.

        ``everything``: after the prioritised chunks, fetch all the other chunks too.
        Layers marked ``no_prefetch`` and local (plain) layers are skipped. At most
        :data:`PREFETCH_REQUESTS` requests run at once, each of up to
        ``max_request_bytes``; no new one starts while an on-demand fetch is running.
        Failures are logged and counted (``prefetch_errors``), never raised. Returns when
        done; run it in a nursery (``task_status.started()`` is called once the plan is
        made, so ``await nursery.start(fetcher.prefetch)`` works).
        """
        phases: list[list[tuple[int, list[int]]]] = [[], []]
        for layer, src in enumerate(self.layers):
            if src.no_prefetch or src.blob is None:
                continue
            if src.prefetch_offset is None and not everything:
                continue
            head, tail = await trio.to_thread.run_sync(
                _prefetch_order, src.table, src.prefetch_offset, everything
            )
            self.stats.layers[layer].prefetch_total = len(head) + len(tail)
            phases[0].append((layer, head))
            phases[1].append((layer, tail))
        task_status.started()

        slots = trio.Semaphore(PREFETCH_REQUESTS)
        async with trio.open_nursery() as nursery:
            for phase in phases:
                for layer, order in phase:
                    for batch in self._prefetch_batches(layer, order):
                        while self._on_demand:
                            await self._idle.wait()
                        await slots.acquire()
                        # The wait may have let reads fetch some of these meanwhile.
                        batch = self._still_missing(layer, batch)
                        if not batch:
                            slots.release()
                            continue
                        nursery.start_soon(self._prefetch_batch, layer, batch, slots)

    def _still_missing(self, layer: int, batch: dict[bytes, Chunk]) -> dict[bytes, Chunk]:
        stats = self.stats.layers[layer]
        out = {}
        for key, chunk in batch.items():
            if self.cache.contains(key) or key in self._flights:
                stats.prefetch_done += 1
            else:
                out[key] = chunk
        return out

    def _prefetch_batches(self, layer: int, order: list[int]) -> Iterator[dict[bytes, Chunk]]:
        """Chunks of ``order`` not yet cached, in batches of up to ``max_request_bytes``."""
        table = self.layers[layer].table
        stats = self.stats.layers[layer]
        batch: dict[bytes, Chunk] = {}
        size = 0
        for i in order:
            key = table.digest_bytes(i)
            assert key is not None
            if self.cache.contains(key) or key in self._flights or key in batch:
                stats.prefetch_done += 1
                continue
            chunk = table.chunk(i)
            if batch and size + chunk.blob_length > self.max_request_bytes:
                yield batch
                batch, size = {}, 0
            batch[key] = chunk
            size += chunk.blob_length
        if batch:
            yield batch

    async def _prefetch_batch(
        self, layer: int, batch: dict[bytes, Chunk], slots: trio.Semaphore
    ) -> None:
        stats = self.stats.layers[layer]
        src = self.layers[layer]
        try:
            with trio.fail_after(self.read_timeout):
                flight = await self._fetch_owned(layer, batch, on_demand=False)
            stats.prefetch_bytes += sum(len(d) for d in flight.results.values())
            if flight.failed:
                stats.prefetch_errors += 1
        except (LazyfsError, trio.TooSlowError) as exc:
            stats.prefetch_errors += 1
            log.warning("layer %s: prefetch of %d chunk(s) failed: %s", src.name, len(batch), exc)
        finally:
            stats.prefetch_done += len(batch)
            slots.release()

    # ------------------------------------------------------------------ stats

    def stats_snapshot(self) -> dict:
        """Per-layer and total fetch figures, plus the cache's, as plain dicts."""
        snap = self.stats.snapshot()
        snap["cache"] = self.cache.stats.snapshot()
        snap["in_flight"] = len(self._flights)
        return snap


def _split_cancelled(
    exc: BaseException,
) -> tuple[BaseException | None, BaseException | None]:
    """``(the cancellation part, the rest)`` of ``exc``, either None if absent."""
    if isinstance(exc, trio.Cancelled):
        return exc, None
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)
    return None, exc
