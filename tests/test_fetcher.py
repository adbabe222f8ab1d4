"""The chunk fetcher against the real registry (sometimes behind the fault proxy).

A zstd:chunked layer is written once per module with lazyfs's own writer (64 KiB chunks,
two files prioritised so the layer has a prefetch boundary) and pushed to the session's
registry; its index is read back with the format reader. Each test builds a fresh
:class:`ChunkFetcher` over a :class:`RegistryBlob` and checks bytes against the originals,
requests against :attr:`RegistryClient.stats` or the proxy's log, and the fetcher's stats.

eStargz (gzip chunks, two files sharing one gzip member) comes from the tiny writer in
``test_estargz.py``; plain layers from a local tar indexed by :func:`index_tar_file`.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
import zstandard

from lazyfs.errors import ChunkError, LazyfsError, ReadTimeout, RegistryError
from lazyfs.formats.chunks import decode_chunk
from lazyfs.formats.detect import read_layer_index
from lazyfs.formats.estargz import read_estargz_index
from lazyfs.formats.model import CODEC_ZSTD, Chunk, EntryType, LayerIndex
from lazyfs.formats.plain import index_tar_file
from lazyfs.formats.zstd_chunked_writer import write_zstd_chunked
from lazyfs.fs.cache import ChunkCache
from lazyfs.fs.chunktable import ChunkTable
from lazyfs.fs.fetcher import ChunkFetcher, LayerSource
from lazyfs.oci import mediatypes
from lazyfs.oci.blobs import BytesBlob, RegistryBlob
from lazyfs.oci.digest import Digest
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.retry import RetryPolicy
from tests.harness.faultproxy import FlipBits, Respond, Stall
from tests.harness.images import Entry, tar_layer
from tests.test_estargz import build as build_estargz
from tests.test_estargz import sample_files as estargz_files

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
PRIORITY = ("etc/motd", "usr/lib/libtext.so")


def _files() -> dict[str, bytes]:
    rng = random.Random(1234)
    text = b"".join(b"line %06d of a compressible text file\n" % n for n in range(60_000))
    shared = rng.randbytes(100 * KiB)
    return {
        "etc/hostname": b"lazy\n",
        "etc/motd": b"welcome\n" * 40,
        "etc/random-5k": rng.randbytes(5 * KiB),
        "usr/bin/tool": rng.randbytes(200 * KiB),
        "usr/lib/libtext.so": text[: 2 * MiB + 123],  # 33 chunks, compressible
        "usr/share/big.bin": rng.randbytes(6 * MiB + 77),  # 97 chunks, incompressible
        "usr/share/copy-a": shared,  # two files with the same chunks
        "usr/share/copy-b": shared,
        "var/last": rng.randbytes(300 * KiB),
    }


@dataclass
class Layer:
    """A pushed layer: where it is, its index and table, and the files' original bytes."""

    repository: str
    digest: Digest
    size: int
    index: LayerIndex
    files: dict[str, bytes]
    table: ChunkTable
    spans: dict[str, tuple[int, int]]  # path -> (first, count)

    def source(self, client: RegistryClient, host: str, name: str = "L0") -> LayerSource:
        ref = Reference.parse(f"{host}/{self.repository}:v1")
        return LayerSource(
            name=name,
            table=self.table,
            blob=RegistryBlob(client, ref, self.digest, self.size),
            prefetch_offset=self.index.prefetch_offset,
        )

    def chunk_keys(self, path: str) -> list[bytes]:
        first, count = self.spans[path]
        return [self.table.digest_bytes(i) for i in range(first, first + count)]


def _table(index: LayerIndex) -> tuple[ChunkTable, dict[str, tuple[int, int]]]:
    table = ChunkTable()
    spans = {}
    for entry in index.entries:
        if entry.type == EntryType.REG and entry.chunks:
            spans[entry.path] = table.add_file(entry.chunks)
    return table, spans


def _push(host: str, digest: Digest, data: bytes | Path) -> str:
    repository = f"test/fetcher-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        async with RegistryClient(retry=FAST) as client:
            await client.push_blob(Reference.parse(f"{host}/{repository}:v1"), digest, data)

    trio.run(main)
    return repository


@pytest.fixture(scope="module")
def layer(registry, tmp_path_factory: pytest.TempPathFactory) -> Layer:
    work = tmp_path_factory.mktemp("fetcher")
    files = _files()
    tar = work / "layer.tar"
    tar.write_bytes(tar_layer([Entry(p, data=d) for p, d in files.items()]))
    result = write_zstd_chunked(tar, work / "layer.zst", chunk_size=CHUNK, prioritize=PRIORITY)
    blob = result.path.read_bytes()
    index = trio.run(
        lambda: read_layer_index(
            BytesBlob(blob), media_type=mediatypes.OCI_LAYER_ZSTD, annotations=result.annotations
        )
    )
    assert index.prefetch_offset == result.prefetch_offset is not None
    repository = _push(registry.host, result.digest, result.path)
    table, spans = _table(index)
    return Layer(repository, result.digest, result.size, index, files, table, spans)


def fetcher_for(sources: list[LayerSource], cache: ChunkCache | None = None, **kw) -> ChunkFetcher:
    kw.setdefault("read_timeout", 10.0)
    return ChunkFetcher(sources, cache or ChunkCache(256 * MiB, None, 0), **kw)


async def read_file(
    fetcher: ChunkFetcher, layer: Layer, path: str, offset: int = 0, size: int | None = None, **kw
) -> bytes:
    first, count = layer.spans[path]
    size = len(layer.files[path]) if size is None else size
    return await fetcher.read(0, first, count, offset, size, **kw)


def client() -> RegistryClient:
    return RegistryClient(retry=FAST)


# ---------------------------------------------------------------- correctness


def test_random_ranges_of_every_file(registry, layer: Layer) -> None:
    rng = random.Random(5)

    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for([layer.source(c, registry.host)], ChunkCache(2 * MiB, None, 0))
            for path, data in layer.files.items():
                assert await read_file(fetcher, layer, path) == data
                for _ in range(15):
                    offset = rng.randrange(0, len(data) + 10)
                    size = rng.choice([1, 100, 4096, CHUNK, 3 * CHUNK + 5, 1 * MiB, 10 * MiB])
                    got = await read_file(
                        fetcher, layer, path, offset, size, sequential_hint=rng.random() < 0.3
                    )
                    assert got == data[offset : offset + size], (path, offset, size)
            snap = fetcher.stats_snapshot()["total"]
            assert snap["verify_failures"] == 0 and snap["errors"] == 0

    trio.run(main)


def test_cold_read_of_a_small_file_is_one_request_for_its_chunk(registry, layer: Layer) -> None:
    path = "etc/random-5k"
    first, count = layer.spans[path]
    assert count == 1
    _, blob_length = layer.table.blob_range(first)

    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for([layer.source(c, registry.host)])
            await c.blob_size(
                Reference.parse(f"{registry.host}/{layer.repository}:v1"), layer.digest
            )
            before = c.stats.snapshot()
            assert await read_file(fetcher, layer, path, 1000, 2000) == layer.files[path][1000:3000]
            after = c.stats.snapshot()
            assert after["requests"] - before["requests"] == 1
            assert after["bytes_received"] - before["bytes_received"] == blob_length
            total = fetcher.stats_snapshot()["total"]
            assert total["requests"] == 1 and total["chunks_fetched"] == 1
            assert total["bytes_fetched"] == blob_length

    trio.run(main)


def test_whole_and_sequential_reads_of_big_files_are_merged(registry, layer: Layer) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]
    first, count = layer.spans[path]
    compressed = sum(layer.table.blob_range(i)[1] for i in range(first, first + count))

    async def main() -> dict[str, int]:
        figures = {}
        async with client() as c:
            # One read of the whole file.
            fetcher = fetcher_for([layer.source(c, registry.host)])
            before = c.stats.requests
            assert await read_file(fetcher, layer, path) == data
            figures["whole"] = c.stats.requests - before
            # 128 KiB reads in order, as the kernel sends them, with the sequential hint.
            fetcher = fetcher_for([layer.source(c, registry.host)])
            before = c.stats.requests
            out = bytearray()
            for offset in range(0, len(data), 128 * KiB):
                out += await read_file(
                    fetcher, layer, path, offset, 128 * KiB, sequential_hint=True
                )
            assert out == data
            figures["sequential"] = c.stats.requests - before
            figures["sequential_calls"] = fetcher.stats_snapshot()["total"]["requests"]
            # The same without the hint: one request per read that needs a new chunk.
            fetcher = fetcher_for([layer.source(c, registry.host)])
            before = c.stats.requests
            for offset in range(0, len(data), 128 * KiB):
                await read_file(fetcher, layer, path, offset, 128 * KiB)
            figures["unhinted"] = c.stats.requests - before
        return figures

    figures = trio.run(main)
    print("requests:", figures)
    assert count == 97
    # 6 MiB of chunks in ranges of at most 4 MiB.
    assert figures["whole"] == math.ceil(compressed / (4 * MiB)) == 2
    assert figures["sequential"] == 2
    assert figures["unhinted"] == math.ceil(len(data) / (128 * KiB))


def test_concurrent_overlapping_readers_share_fetches(registry, layer: Layer) -> None:
    rng = random.Random(77)
    paths = ["usr/share/big.bin", "usr/lib/libtext.so", "usr/share/copy-a", "usr/share/copy-b"]
    reads = []
    for n in range(32):
        path = paths[n % len(paths)]
        size = len(layer.files[path])
        offset = rng.randrange(0, size)
        reads.append((path, offset, rng.randrange(1, 600 * KiB)))

    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for([layer.source(c, registry.host)])
            touched: set[bytes] = set()
            for path, offset, size in reads:
                first, count = layer.spans[path]
                end = min(offset + size, len(layer.files[path]))
                i0 = layer.table.find(first, count, offset)
                i1 = layer.table.find(first, count, end - 1)
                touched.update(layer.table.digest_bytes(i) for i in range(i0, i1 + 1))
            results: dict[int, bytes] = {}
            start = trio.Event()

            async def reader(n: int) -> None:
                path, offset, size = reads[n]
                await start.wait()
                results[n] = await read_file(fetcher, layer, path, offset, size)

            async with trio.open_nursery() as nursery:
                for n in range(len(reads)):
                    nursery.start_soon(reader, n)
                await trio.testing.wait_all_tasks_blocked()
                start.set()
            for n, (path, offset, size) in enumerate(reads):
                assert results[n] == layer.files[path][offset : offset + size]
            total = fetcher.stats_snapshot()["total"]
            assert total["chunks_fetched"] == len(touched)  # each chunk exactly once
            assert total["shared_fetches"] > 0
            assert fetcher.stats_snapshot()["in_flight"] == 0

    trio.run(main)


def test_second_read_is_served_from_memory_without_requests(registry, layer: Layer) -> None:
    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for([layer.source(c, registry.host)])
            path = "usr/lib/libtext.so"
            assert await read_file(fetcher, layer, path) == layer.files[path]
            before = c.stats.requests
            assert await read_file(fetcher, layer, path) == layer.files[path]
            assert c.stats.requests == before
            total = fetcher.stats_snapshot()["total"]
            assert total["memory_hits"] == layer.spans[path][1]

    trio.run(main)


def test_a_new_fetcher_on_the_same_disk_cache_makes_no_requests(
    registry, layer: Layer, tmp_path: Path
) -> None:
    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for(
                [layer.source(c, registry.host)], ChunkCache(1 * MiB, tmp_path, 64 * MiB)
            )
            for path, data in layer.files.items():
                assert await read_file(fetcher, layer, path) == data
            fetcher.cache.close()
        async with client() as c:
            cache = ChunkCache(1 * MiB, tmp_path, 64 * MiB)
            fetcher = fetcher_for([layer.source(c, registry.host)], cache)
            for path, data in layer.files.items():
                assert await read_file(fetcher, layer, path) == data
            assert c.stats.requests == 0
            total = fetcher.stats_snapshot()["total"]
            assert total["disk_hits"] > 0 and total["requests"] == 0

    trio.run(main)


def test_write_behind_keeps_disk_writes_off_reads_and_drains_on_cancel(
    registry, layer: Layer, tmp_path: Path
) -> None:
    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for(
                [layer.source(c, registry.host)], ChunkCache(1 * MiB, tmp_path, 64 * MiB)
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(fetcher.write_behind)
                assert fetcher._write_queue is not None
                for path, data in layer.files.items():
                    assert await read_file(fetcher, layer, path) == data
                nursery.cancel_scope.cancel()  # queued writes are finished before it ends
            assert fetcher._write_queue is None
            assert not fetcher._flights, "every flight is unregistered once written"
            fetcher.cache.close()
        async with client() as c:
            fetcher = fetcher_for(
                [layer.source(c, registry.host)], ChunkCache(1 * MiB, tmp_path, 64 * MiB)
            )
            for path, data in layer.files.items():
                assert await read_file(fetcher, layer, path) == data
            assert c.stats.requests == 0, "the drain left every chunk on disk"

    trio.run(main)


# ---------------------------------------------------------------- eStargz and plain layers


def test_estargz_gzip_chunks_and_a_plain_layer_in_one_fetcher(registry, tmp_path: Path) -> None:
    built = build_estargz(estargz_files())
    digest = Digest.of(built.blob)
    repository = _push(registry.host, digest, built.blob)
    gz_index = trio.run(
        lambda: read_estargz_index(BytesBlob(built.blob), annotations=built.annotations, layer="gz")
    )
    gz_table, gz_spans = _table(gz_index)
    gz_files = {f.name: f.data for f in estargz_files() if f.kind == "reg" and f.data}

    rng = random.Random(3)
    plain_files = {
        "a/small": b"plain small\n",
        "a/big": rng.randbytes(700 * KiB),
        "a/empty": b"",
        "a/zeros": bytes(100 * KiB),
    }
    tar = tar_layer([Entry(p, data=d) for p, d in plain_files.items()])
    tar_path = tmp_path / "plain.tar"
    tar_path.write_bytes(tar)
    plain_index = index_tar_file(
        tar_path, layer="plain", blob_digest=Digest.of(tar), blob_size=len(tar)
    )
    assert plain_index.local_path == str(tar_path)
    plain_table, plain_spans = _table(plain_index)

    async def main() -> None:
        async with client() as c:
            ref = Reference.parse(f"{registry.host}/{repository}:v1")
            sources = [
                LayerSource("gz", gz_table, RegistryBlob(c, ref, digest, len(built.blob))),
                LayerSource("plain", plain_table, None, local_path=plain_index.local_path),
            ]
            fetcher = fetcher_for(sources)
            for layer_no, files, spans in (
                (0, gz_files, gz_spans),
                (1, plain_files, plain_spans),
            ):
                for path, data in files.items():
                    if not data:
                        assert path not in spans
                        continue
                    first, count = spans[path]
                    assert await fetcher.read(layer_no, first, count, 0, len(data) + 5) == data
                    for _ in range(10):
                        offset = rng.randrange(0, len(data))
                        size = rng.randrange(1, len(data) + 2)
                        got = await fetcher.read(layer_no, first, count, offset, size)
                        assert got == data[offset : offset + size]
            snap = fetcher.stats_snapshot()["layers"]
            distinct = {gz_table.digest_bytes(i) for i in range(len(gz_table))}
            assert snap[0]["chunks_fetched"] == len(distinct)  # each fetched and verified once
            assert snap[0]["verify_failures"] == 0
            assert snap[1]["requests"] == 0 and snap[1]["local_chunks"] > 0

    trio.run(main)


# ---------------------------------------------------------------- faults


def proxied(layer: Layer, c: RegistryClient, proxy, **kw) -> ChunkFetcher:
    return fetcher_for([layer.source(c, proxy.host)], **kw)


def test_flipped_bits_are_caught_and_the_chunk_fetched_again(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "etc/random-5k"
    fault_proxy.add_fault(None, FlipBits(offset=2000, mask=0x10), path_contains="/blobs/", times=1)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy)
            assert await read_file(fetcher, layer, path) == layer.files[path]
            total = fetcher.stats_snapshot()["total"]
            assert total["verify_failures"] == 1 and total["requests"] == 2

    trio.run(main)
    assert fault_proxy.count(path_contains="/blobs/") == 2


def test_well_formed_content_with_the_wrong_digest_is_refused(
    registry, layer: Layer, fault_proxy
) -> None:
    # A valid zstd frame (checksum and all) of other bytes, exactly as long as the chunk's
    # range: only the chunk digest can tell it is wrong.
    path = "etc/random-5k"
    first, _ = layer.spans[path]
    offset, length = layer.table.blob_range(first)
    wrong = random.Random(9).randbytes(len(layer.files[path]))
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(wrong)
    assert len(frame) == length
    headers = {"Content-Range": f"bytes {offset}-{offset + length - 1}/{layer.size}"}
    fault_proxy.add_fault(None, Respond(206, frame, headers), path_contains="/blobs/", times=1)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy)
            assert await read_file(fetcher, layer, path) == layer.files[path]
            total = fetcher.stats_snapshot()["total"]
            assert total["verify_failures"] == 1 and total["requests"] == 2

    trio.run(main)


def test_bits_flipped_forever_fail_with_chunk_error_in_bounded_time(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "etc/random-5k"
    fault_proxy.add_fault(None, FlipBits(offset=2000), path_contains="/blobs/", times=None)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy, chunk_retries=2)
            results: list[BaseException | bytes] = []

            async def reader() -> None:
                try:
                    results.append(await read_file(fetcher, layer, path))
                except LazyfsError as exc:
                    results.append(exc)

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for _ in range(5):  # five readers of the same chunk share the three fetches
                    nursery.start_soon(reader)
            assert time.monotonic() - started < 5
            assert len(results) == 5
            assert all(isinstance(r, ChunkError) for r in results), results
            total = fetcher.stats_snapshot()["total"]
            assert total["requests"] == 3 and total["verify_failures"] == 3
            assert fetcher.cache.stats.memory_entries == 0  # nothing unverified kept

    trio.run(main)
    assert fault_proxy.count(path_contains="/blobs/") == 3


def test_a_stalled_registry_times_out_and_the_fetcher_recovers(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "usr/bin/tool"
    fault_proxy.add_fault(None, Stall(30), path_contains="/blobs/", times=None)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy, read_timeout=1.0)
            started = time.monotonic()
            with pytest.raises(ReadTimeout):
                await read_file(fetcher, layer, path)
            assert time.monotonic() - started < 2.0
            assert fetcher.stats_snapshot()["in_flight"] == 0
            fault_proxy.clear_faults()
            assert await read_file(fetcher, layer, path) == layer.files[path]

    trio.run(main)


def test_registry_500_forever_is_a_lazyfs_error_in_bounded_time(
    registry, layer: Layer, fault_proxy
) -> None:
    fault_proxy.add_fault(None, Respond(500), path_contains="/blobs/", times=None)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy)
            started = time.monotonic()
            with pytest.raises(RegistryError):
                await read_file(fetcher, layer, "usr/share/big.bin", 0, 3 * MiB)
            assert time.monotonic() - started < 5
            assert fetcher.stats_snapshot()["total"]["errors"] == 1

    trio.run(main)


def test_a_waiter_takes_over_when_the_fetching_reader_is_cancelled(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "var/last"
    fault_proxy.add_fault(None, Stall(2), path_contains="/blobs/", times=1)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy)
            second: list[bytes] = []

            async def impatient() -> None:
                with trio.move_on_after(0.3):
                    await read_file(fetcher, layer, path)

            async def patient() -> None:
                await trio.sleep(0.1)  # joins the stalled fetch, then must fetch itself
                second.append(await read_file(fetcher, layer, path))

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(impatient)
                nursery.start_soon(patient)
            assert second == [layer.files[path]]
            assert time.monotonic() - started < 1.5

    trio.run(main)


# ---------------------------------------------------------------- read-ahead


async def settle(fetcher: ChunkFetcher) -> None:
    """Wait until no fetch is running (read-ahead included)."""
    with trio.fail_after(5):
        while fetcher.stats_snapshot()["in_flight"]:
            await trio.sleep(0.01)


def test_read_ahead_fetches_the_rest_of_a_sequential_file_in_full_requests(
    registry, layer: Layer
) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]

    async def main() -> None:
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = fetcher_for([layer.source(c, registry.host)])
            await nursery.start(fetcher.run)
            first = await read_file(fetcher, layer, path, 0, 128 * KiB, sequential_hint=True)
            await settle(fetcher)
            # The read's own request (4 MiB), then the 2 MiB left as one read-ahead request.
            total = fetcher.stats_snapshot()["total"]
            assert total["requests"] == total["readahead_requests"] == 2
            before = c.stats.requests
            out = bytearray(first)
            for offset in range(128 * KiB, len(data), 128 * KiB):
                out += await read_file(
                    fetcher, layer, path, offset, 128 * KiB, sequential_hint=True
                )
            assert out == data
            assert c.stats.requests == before, "everything was read ahead"
            assert fetcher.stats_snapshot()["total"]["errors"] == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_prefetch_file_fetches_a_whole_file_in_one_request_then_reads_need_none(
    registry, layer: Layer
) -> None:
    """What an opened executable or library gets: all of it at once, before its reads."""
    path = "usr/lib/libtext.so"  # 33 chunks of 64 KiB, compressible: well under a request
    data = layer.files[path]
    first, count = layer.spans[path]
    rng = random.Random(7)

    async def main() -> None:
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = fetcher_for([layer.source(c, registry.host)])
            assert fetcher.prefetch_file(0, first, count) is False  # run() is not running
            await nursery.start(fetcher.run)
            assert fetcher.prefetch_file(0, first, count) is True
            assert fetcher.prefetch_file(0, first, count) is False  # all in flight already
            await settle(fetcher)
            total = fetcher.stats_snapshot()["total"]
            assert total["requests"] == 1 and total["file_prefetches"] == 1
            assert total["chunks_fetched"] == count
            before = c.stats.requests
            for _ in range(50):  # page faults here and there
                offset = rng.randrange(len(data))
                got = await read_file(fetcher, layer, path, offset, 4 * KiB)
                assert got == data[offset : offset + 4 * KiB]
            assert c.stats.requests == before, "every read was served from memory"
            assert fetcher.prefetch_file(0, first, count) is False  # all cached now
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_prefetch_file_stops_at_its_byte_budget_and_skips_what_is_cached(
    registry, layer: Layer
) -> None:
    path = "usr/share/big.bin"  # 97 incompressible chunks of 64 KiB
    data = layer.files[path]
    first, count = layer.spans[path]

    async def main() -> None:
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = fetcher_for([layer.source(c, registry.host)], max_request_bytes=1 * MiB)
            await nursery.start(fetcher.run)
            # Chunk 1 is read (and cached) first: the prefetch leaves it out.
            assert await read_file(fetcher, layer, path, CHUNK, 10) == data[CHUNK : CHUNK + 10]
            await settle(fetcher)
            requests = c.stats.requests
            fetched = fetcher.stats_snapshot()["total"]["chunks_fetched"]
            assert fetcher.prefetch_file(0, first, count, max_bytes=2 * MiB + CHUNK)
            await settle(fetcher)
            total = fetcher.stats_snapshot()["total"]
            # About 2 MiB of chunks (each a little over 64 KiB of blob), in 1 MiB requests.
            new = total["chunks_fetched"] - fetched
            assert 28 <= new <= 32, new
            assert c.stats.requests - requests == math.ceil(new / 15)
            cached = [
                fetcher.cache.contains(layer.table.digest_bytes(i))
                for i in range(first, first + count)
            ]
            assert cached[: new + 1] == [True] * (new + 1)
            assert not any(cached[new + 1 :])
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_read_ahead_stays_half_a_window_ahead_of_the_reader(registry, layer: Layer) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]
    first, count = layer.spans[path]
    window = 1 * MiB

    async def main() -> None:
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = fetcher_for([layer.source(c, registry.host)], readahead_bytes=window)
            await nursery.start(fetcher.run)
            for offset in range(0, len(data), 128 * KiB):
                got = await read_file(
                    fetcher, layer, path, offset, 128 * KiB, sequential_hint=offset > 0
                )
                assert got == data[offset : offset + 128 * KiB]
                if offset == 0:
                    continue
                await settle(fetcher)
                # The chunks up to half a window past the read are fetched.
                ahead = min(offset + 128 * KiB + window // 2, len(data))
                for i in range(first, first + count):
                    chunk_offset, _ = layer.table.file_span(i)
                    if chunk_offset < ahead:
                        assert fetcher.cache.contains(layer.table.digest_bytes(i)), (offset, i)
            total = fetcher.stats_snapshot()["total"]
            # Requests of at least half a window, none bigger than the window.
            assert total["requests"] <= math.ceil(len(data) / (window // 2)) + 1
            assert total["bytes_fetched"] == sum(
                layer.table.blob_range(i)[1] for i in range(first, first + count)
            )
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_read_ahead_loads_disk_cached_chunks_into_memory(
    registry, layer: Layer, tmp_path: Path
) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]
    first, count = layer.spans[path]

    async def main() -> None:
        async with client() as c:
            fetcher = fetcher_for(
                [layer.source(c, registry.host)], ChunkCache(0, tmp_path, 64 * MiB)
            )
            assert await read_file(fetcher, layer, path) == data
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = fetcher_for(
                [layer.source(c, registry.host)], ChunkCache(64 * MiB, tmp_path, 64 * MiB)
            )
            await nursery.start(fetcher.run)
            got = await read_file(fetcher, layer, path, MiB, 128 * KiB, sequential_hint=True)
            assert got == data[MiB : MiB + 128 * KiB]
            await settle(fetcher)
            # The rest of the file (within the window) was loaded into memory ahead.
            keys = [layer.table.digest_bytes(i) for i in range(first, first + count)]
            offsets = [layer.table.file_span(i)[0] for i in range(first, first + count)]
            ahead = [k for k, o in zip(keys, offsets, strict=True) if o >= MiB]
            assert all(fetcher.cache.in_memory(k) for k in ahead)
            out = bytearray()
            for offset in range(MiB + 128 * KiB, len(data), 128 * KiB):
                out += await read_file(
                    fetcher, layer, path, offset, 128 * KiB, sequential_hint=True
                )
            assert out == data[MiB + 128 * KiB :]
            assert c.stats.requests == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_reader_fetches_itself_when_read_ahead_is_cancelled(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]
    fault_proxy.add_fault(None, Stall(3), path_contains="/blobs/", times=2)

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy)
            got: list[bytes] = []
            started = time.monotonic()
            async with trio.open_nursery() as outer:
                background = trio.CancelScope()

                async def run_background(task_status=trio.TASK_STATUS_IGNORED) -> None:
                    with background:
                        await fetcher.run(task_status=task_status)

                await outer.start(run_background)

                async def reader() -> None:
                    got.append(
                        await read_file(fetcher, layer, path, MiB, MiB, sequential_hint=True)
                    )

                outer.start_soon(reader)
                await trio.sleep(0.3)  # the reader waits for a stalled read-ahead request
                assert fetcher.stats_snapshot()["total"]["readahead_requests"] >= 1
                background.cancel()
            assert got == [data[MiB : 2 * MiB]]
            assert time.monotonic() - started < 2.5
            assert fetcher.stats_snapshot()["in_flight"] == 0

    trio.run(main)


def test_read_ahead_failures_fail_the_waiting_read_but_not_the_fetcher(
    registry, layer: Layer, fault_proxy
) -> None:
    path = "usr/share/big.bin"
    data = layer.files[path]
    fault_proxy.add_fault(None, Respond(500), path_contains="/blobs/", times=None)

    async def main() -> None:
        async with client() as c, trio.open_nursery() as nursery:
            fetcher = proxied(layer, c, fault_proxy)
            await nursery.start(fetcher.run)
            started = time.monotonic()
            with pytest.raises(RegistryError):
                await read_file(fetcher, layer, path, MiB, 128 * KiB, sequential_hint=True)
            assert time.monotonic() - started < 5
            await settle(fetcher)
            assert fetcher.stats_snapshot()["total"]["readahead_errors"] >= 1
            fault_proxy.clear_faults()
            got = await read_file(fetcher, layer, path, MiB, 128 * KiB, sequential_hint=True)
            assert got == data[MiB : MiB + 128 * KiB]
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_chunks_decode_in_several_threads_at_once() -> None:
    rng = random.Random(9)
    pieces = [rng.randbytes(rng.randrange(1, 300 * KiB)) + b"x" * 100_000 for _ in range(24)]
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = []
    for piece in pieces:
        frame = cctx.compress(piece)
        chunks.append(
            Chunk(0, len(piece), 0, len(frame), 0, CODEC_ZSTD, Digest.of(piece)),
        )
    frames = [cctx.compress(piece) for piece in pieces]

    def decode_all() -> list[bytes]:
        return [decode_chunk(c, f) for c, f in zip(chunks, frames, strict=True) for _ in range(3)]

    async def main() -> list[list[bytes]]:
        out: list[list[bytes]] = []

        async def one() -> None:
            out.append(await trio.to_thread.run_sync(decode_all))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        return out

    for result in trio.run(main):
        assert result == [p for p in pieces for _ in range(3)]


# ---------------------------------------------------------------- prefetch


def _prioritised(layer: Layer) -> tuple[set[bytes], set[bytes]]:
    """Keys of the chunks before the prefetch boundary, and of the others."""
    head, tail = set(), set()
    for i in range(len(layer.table)):
        key = layer.table.digest_bytes(i)
        (head if layer.table.blob_range(i)[0] < layer.index.prefetch_offset else tail).add(key)
    return head, tail - head


def test_prefetch_brings_the_prioritised_chunks_into_the_cache(
    registry, layer: Layer, tmp_path: Path
) -> None:
    head, tail = _prioritised(layer)
    assert set(layer.chunk_keys("usr/lib/libtext.so")) <= head

    async def main() -> None:
        async with client() as c:
            cache = ChunkCache(64 * MiB, tmp_path, 256 * MiB)
            fetcher = fetcher_for([layer.source(c, registry.host)], cache)
            async with trio.open_nursery() as nursery:
                await nursery.start(fetcher.prefetch)
            assert all(cache.contains(k) for k in head)
            assert not any(cache.contains(k) for k in tail)
            stats = fetcher.stats_snapshot()["layers"][0]
            assert stats["prefetch_total"] == stats["prefetch_done"] == len(head)
            assert stats["requests"] == 1  # 2 MiB of prioritised chunks: one request
            # With a disk level, prefetched chunks go to disk, not into memory.
            assert cache.stats.memory_entries == 0 and cache.stats.disk_files == len(head)
            before = c.stats.requests
            path = "usr/lib/libtext.so"
            assert await read_file(fetcher, layer, path) == layer.files[path]
            assert c.stats.requests == before

    trio.run(main)


def test_reads_complete_while_prefetch_is_running(registry, layer: Layer, fault_proxy) -> None:
    # The prefetch's first two requests stall; a read started meanwhile must not wait.
    fault_proxy.add_fault(None, Stall(1.0), path_contains="/blobs/", times=2)
    path = "var/last"

    async def main() -> None:
        async with client() as c:
            fetcher = proxied(layer, c, fault_proxy, max_request_bytes=512 * KiB)
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: fetcher.prefetch(everything=True, task_status=task_status)
                )
                await trio.sleep(0.2)
                assert fault_proxy.count(path_contains="/blobs/") == 2  # at most 2 at a time
                started = time.monotonic()
                assert await read_file(fetcher, layer, path) == layer.files[path]
                assert time.monotonic() - started < 0.5
            stats = fetcher.stats_snapshot()["layers"][0]
            assert stats["prefetch_done"] == stats["prefetch_total"] > 0
            assert stats["prefetch_errors"] == 0
            assert all(
                fetcher.cache.contains(layer.table.digest_bytes(i)) for i in range(len(layer.table))
            )

    trio.run(main)


def test_response_buffers_are_kept_for_big_requests_only():
    from lazyfs.fs.fetcher import _Buffers

    pool = _Buffers(1024, keep=1)
    small = pool.take(100)
    assert len(small) == 100  # exact: not worth zeroing a whole buffer for
    pool.give(small)
    assert len(pool.take(100)) == 100  # not kept
    big = pool.take(600)
    assert len(big) == 1024
    pool.give(big)
    assert pool.take(10) is big  # a spare one serves any request that fits
    assert len(pool.take(5000)) == 5000
    pool.give(big)
    pool.give(bytearray(1024))  # over keep: dropped
    assert pool.take(900) is big
    assert pool.take(900) is not big
