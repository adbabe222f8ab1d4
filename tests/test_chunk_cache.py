"""The chunk cache: LRU bounds in memory and on disk, persistence, corruption, temp files.

Everything runs against real files in a temporary directory; the async paths run under
``trio.run``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from lazyfs.fs.cache import ChunkCache


def chunk(n: int, size: int = 1000) -> tuple[bytes, bytes]:
    """A chunk's (key, content): ``size`` bytes derived from ``n``."""
    data = hashlib.sha256(str(n).encode()).digest() * (size // 32 + 1)
    data = data[:size]
    return hashlib.sha256(data).digest(), data


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in (root / "chunks").rglob("*") if p.is_file())


# ---------------------------------------------------------------- memory level


def test_memory_lru_is_bounded_in_bytes() -> None:
    cache = ChunkCache(memory_bytes=3000, disk_dir=None, disk_bytes=0)
    keys = []
    for n in range(3):
        key, data = chunk(n)
        cache.put(key, data)
        keys.append(key)
    assert cache.stats.memory_bytes == 3000
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    key3, data3 = chunk(3)
    cache.put(key3, data3)
    assert cache.stats.memory_bytes == 3000
    assert cache.stats.memory_evictions == 1
    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) == chunk(0)[1]
    assert cache.get(key3) == data3
    assert cache.stats.memory_hits == 3 and cache.stats.misses == 1


def test_chunk_bigger_than_memory_is_not_kept() -> None:
    cache = ChunkCache(memory_bytes=500, disk_dir=None, disk_bytes=0)
    key, data = chunk(1)
    cache.put(key, data)
    assert cache.get(key) is None
    assert cache.stats.memory_bytes == 0


# ---------------------------------------------------------------- disk level


def test_disk_layout_and_persistence_across_instances(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=10_000, disk_dir=tmp_path, disk_bytes=100_000)
    key, data = chunk(7)
    cache.put(key, data)
    path = tmp_path / "chunks" / key.hex()[:2] / key.hex()
    assert path.read_bytes() == data
    assert cache.stats.disk_bytes == len(data) and cache.stats.disk_files == 1
    cache.close()

    again = ChunkCache(memory_bytes=10_000, disk_dir=tmp_path, disk_bytes=100_000)
    assert again.stats.disk_files == 1 and again.stats.disk_bytes == len(data)
    assert again.get(key) == data
    assert again.stats.disk_hits == 1
    assert again.get(key) == data  # now from memory
    assert again.stats.memory_hits == 1


def test_disk_lru_is_bounded_and_evicts_least_recent(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=3000)
    chunks = [chunk(n) for n in range(4)]
    for key, data in chunks[:3]:
        cache.put(key, data)
    assert cache.get(chunks[0][0]) == chunks[0][1]  # refresh 0
    cache.put(*chunks[3])
    assert cache.stats.disk_bytes == 3000
    assert cache.stats.disk_evictions == 1
    assert len(files_under(tmp_path)) == 3
    assert cache.get(chunks[1][0]) is None  # evicted, file gone
    assert not cache.path_of(chunks[1][0]).exists()
    for n in (0, 2, 3):
        assert cache.get(chunks[n][0]) == chunks[n][1]


def test_recency_after_restart_comes_from_mtimes(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    chunks = [chunk(n) for n in range(3)]
    for key, data in chunks:
        cache.put(key, data)
    now = time.time()
    # chunk 0 used most recently, chunk 1 least.
    for n, age in ((0, 10), (1, 300), (2, 100)):
        os.utime(cache.path_of(chunks[n][0]), (now - age, now - age))
    cache.close()
    smaller = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=2000)
    assert smaller.stats.disk_evictions == 1
    assert not smaller.path_of(chunks[1][0]).exists()
    assert smaller.get(chunks[0][0]) == chunks[0][1]
    assert smaller.get(chunks[2][0]) == chunks[2][1]


def test_a_hit_refreshes_an_old_mtime(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    key, data = chunk(1)
    cache.put(key, data)
    path = cache.path_of(key)
    old = time.time() - 3600
    os.utime(path, (old, old))
    cache.close()
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    assert cache.get(key) == data
    assert path.stat().st_mtime > old + 3000


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other"])
def test_corrupt_or_torn_file_is_deleted_and_missed(tmp_path: Path, damage: str) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    key, data = chunk(3)
    cache.put(key, data)
    cache.close()
    path = cache.path_of(key)
    if damage == "flip":
        raw = bytearray(data)
        raw[500] ^= 0x40
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(data[:600])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(chunk(4)[1])  # another chunk's valid content under this name

    again = ChunkCache(memory_bytes=10_000, disk_dir=tmp_path, disk_bytes=10_000)
    assert again.get(key) is None
    assert not path.exists()
    assert again.stats.corrupt_files == 1 and again.stats.misses == 1
    assert again.stats.disk_files == 0 and again.stats.disk_bytes == 0
    # It can be stored again afterwards.
    again.put(key, data)
    assert path.read_bytes() == data


def test_corrupt_file_is_missed_by_the_async_path_too(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000_000)
    good_key, good = chunk(1, 200_000)  # big enough for the worker-thread path
    bad_key, bad = chunk(2, 200_000)
    cache.put(good_key, good)
    cache.put(bad_key, bad)
    cache.path_of(bad_key).write_bytes(bad[:-1] + b"\0")

    async def main() -> dict[bytes, bytes]:
        return await cache.get_many_async([good_key, bad_key])

    found = trio.run(main)
    assert found == {good_key: good}
    assert not cache.path_of(bad_key).exists()
    assert cache.stats.corrupt_files == 1 and cache.stats.disk_hits == 1


def test_put_refuses_content_that_does_not_match_its_key(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    key, _ = chunk(1)
    with pytest.raises(ValueError, match="does not hash"):
        cache.put(key, b"something else")
    assert files_under(tmp_path) == []


def test_temp_files_of_dead_processes_are_removed_at_start(tmp_path: Path) -> None:
    sub = tmp_path / "chunks" / "ab"
    sub.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = [sub / f".tmp-{dead_pid}-0011aabb", sub / f".tmp-{os.getpid()}-22", sub / ".tmp-junk"]
    live = sub / f".tmp-{os.getppid()}-33"  # a process that is running: its write may go on
    for p in [*stale, live]:
        p.write_bytes(b"partial")
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    assert [p.exists() for p in stale] == [False, False, False]
    assert live.exists()
    assert cache.stats.stale_temp_files == 3
    assert cache.stats.disk_files == 0


def test_files_with_foreign_names_are_ignored(tmp_path: Path) -> None:
    sub = tmp_path / "chunks" / "ab"
    sub.mkdir(parents=True)
    (sub / "README").write_text("not a chunk")
    (sub / ("cd" + "0" * 62)).write_bytes(b"in the wrong directory")
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000)
    assert cache.stats.disk_files == 0


def test_concurrent_puts_of_the_same_key(tmp_path: Path) -> None:
    key, data = chunk(9, 300_000)
    first = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000_000)
    second = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(first.put_many_async, [(key, data)])
                nursery.start_soon(second.put_many_async, [(key, data), (key, data)])

    trio.run(main)
    assert first.stats.disk_writes == 1 and second.stats.disk_writes == 1
    assert first.stats.disk_bytes == len(data) == second.stats.disk_bytes
    assert files_under(tmp_path) == [first.path_of(key)]
    assert first.path_of(key).read_bytes() == data
    third = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000_000)
    assert third.get(key) == data


def test_disk_errors_do_not_fail_puts(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=10_000, disk_dir=tmp_path, disk_bytes=10_000)
    key, data = chunk(5)
    # A file where the chunk's directory should be: mkdir fails, even for root.
    (tmp_path / "chunks" / key.hex()[:2]).write_bytes(b"in the way")
    cache.put(key, data)
    assert cache.stats.io_errors == 1 and cache.stats.disk_files == 0
    assert cache.get(key) == data  # still served from memory


@pytest.mark.parametrize("how", ["get", "get_many_async"])
def test_disk_read_errors_are_counted_and_miss(tmp_path: Path, how: str) -> None:
    """A chunk file the OS cannot read (here: a directory in its place) is a miss, counted
    in ``io_errors`` by the blocking and the async lookup alike, and forgotten."""
    cache = ChunkCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10_000_000)
    key, data = chunk(6)
    cache.put(key, data)
    path = cache.path_of(key)
    path.unlink()
    path.mkdir()  # open() for reading raises IsADirectoryError, even for root
    if how == "get":
        assert cache.get(key) is None
    else:
        assert trio.run(cache.get_many_async, [key]) == {}
    assert cache.stats.io_errors == 1
    assert cache.stats.misses == 1 and cache.stats.disk_hits == 0
    assert not cache.contains(key)


def test_close_drops_memory_and_ignores_later_puts(tmp_path: Path) -> None:
    cache = ChunkCache(memory_bytes=10_000, disk_dir=tmp_path, disk_bytes=10_000)
    key, data = chunk(1)
    cache.put(key, data)
    cache.close()
    assert cache.stats.memory_bytes == 0
    key2, data2 = chunk(2)
    cache.put(key2, data2)
    assert not cache.path_of(key2).exists()
    assert cache.get(key) == data  # the file is still there
