"""Decoded chunk content, kept in memory and on disk, keyed by the content's sha256.

:class:`ChunkCache` holds the verified content of chunks so a chunk is fetched and decoded
once. The key is the raw 32-byte sha256 of the content (the chunk digest of the layer
index), so identical chunks of different layers and images share one entry.

Two levels:

* **Memory**: an LRU of ``bytes`` bounded by ``memory_bytes``. Whatever is put here must
  already be verified (the fetcher only puts what :func:`~lazyfs.formats.chunks.decode_chunk`
  returned).
* **Disk** (optional): one file per chunk, ``DIR/chunks/ab/<64 hex>``, the whole tree bounded
  by ``disk_bytes`` with LRU eviction. Recency is tracked in memory and seeded at start from
  the files' mtimes; a hit refreshes a file's mtime at most once a minute (one ``utime``),
  so the order survives restarts without a syscall per hit.

The disk level is safe across restarts, crashes and other processes sharing the directory:

* a file is written under a temporary name in its final directory, after checking that the
  content hashes to the key, and then renamed into place, so a reader never sees a partly
  written file under a chunk's name;
* files are **not** fsync'd. Durability is not needed for correctness: every file is hashed
  again when it is loaded and a file whose content does not match its name is deleted and
  treated as a miss. The worst a crash can do is lose (or tear) a few recent entries, which
  then cost one fetch each; an fsync per chunk would cost milliseconds on the fetch path
  and during prefetch for nothing more;
* temporary files left by a crashed process are removed when a cache is opened (those of
  live processes are left alone).

I/O errors on the disk level (full disk, permissions) never fail a read: the entry is simply
not cached, and the error is counted in :attr:`ChunkCache.stats`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

__all__ = ["CacheStats", "ChunkCache"]

log = logging.getLogger("lazyfs.cache")

#: Disk entries up to this size are read or written in the event loop; bigger ones (or
#: batches) in a worker thread. Reading 64 KiB from the page cache and hashing it takes
#: well under 0.1 ms, less than handing it to a thread.
INLINE_IO_BYTES = 64 * 1024
#: A hit refreshes a file's mtime (for the LRU order after a restart) at most this often.
TOUCH_INTERVAL = 60.0

_TMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")


@dataclass(slots=True)
class CacheStats:
    """Counters of a :class:`ChunkCache`; the ``*_bytes`` and ``*_files`` fields are levels."""

    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    memory_evictions: int = 0
    disk_evictions: int = 0
    disk_writes: int = 0
    #: Files deleted because their content did not match their name.
    corrupt_files: int = 0
    #: Disk writes or reads that failed with an OS error (the chunk is then just not cached).
    io_errors: int = 0
    #: Temporary files of dead processes removed at start.
    stale_temp_files: int = 0
    memory_bytes: int = 0
    memory_entries: int = 0
    disk_bytes: int = 0
    disk_files: int = 0

    def snapshot(self) -> dict:
        """The counters as a plain dict."""
        return asdict(self)


def _is_key_name(name: str) -> bool:
    return len(name) == 64 and _HEX.issuperset(name)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a file of ours from before we started: a previous process's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _stale_temp(name: str) -> bool:
    """Whether a temporary file's writer (its pid is in the name) is gone."""
    pid = name[len(_TMP_PREFIX) :].partition("-")[0]
    return not pid.isdigit() or not _pid_alive(int(pid))


def _load_file(path: Path, key: bytes) -> bytes | bool | None:
    """The content of ``path`` if it hashes to ``key``; None if the file is gone.

    A file whose content does not match is deleted and False is returned. Runs in a
    worker thread or inline; touches no shared state.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).digest() != key:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False
    return data


def _write_file(directory: Path, path: Path, key: bytes, data: bytes, *, verified: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file, after checking it is ``key``'s.

    ``verified``: the caller has just checked that ``data`` hashes to ``key`` (the fetcher
    decodes every chunk against its digest), so it is not hashed a second time.
    Raises ``ValueError`` if ``data`` does not hash to ``key``, ``OSError`` on I/O errors
    (the temporary file is removed). Touches no shared state.
    """
    if not verified and hashlib.sha256(data).digest() != key:
        raise ValueError(f"chunk content does not hash to its key {key.hex()}")
    tmp = directory / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:  # the first chunk of its directory (mkdir each time: 2 %
            directory.mkdir(exist_ok=True)  # of a cold sequential read's CPU)
            fd = os.open(tmp, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class ChunkCache:
    """Verified chunk content by sha256: a memory LRU and an optional disk LRU.

    ``memory_bytes`` bounds the memory level (0 disables it); ``disk_dir`` is the cache
    directory (chunks go under ``disk_dir/chunks``; None: no disk level); ``disk_bytes``
    bounds the disk level. Opening scans the directory once (a stat per file) to seed the
    LRU order and remove temporary files left by dead processes.

    Use from one trio thread. The blocking methods (:meth:`get`, :meth:`put`) do their disk
    I/O in the calling thread; the ``async`` ones (:meth:`get_many_async`,
    :meth:`put_many_async`) move large disk I/O to a worker thread.
    """

    def __init__(self, memory_bytes: int, disk_dir: Path | None, disk_bytes: int) -> None:
        if memory_bytes < 0 or disk_bytes < 0:
            raise ValueError("cache sizes must not be negative")
        self.memory_limit = memory_bytes
        self.disk_limit = disk_bytes
        self.stats = CacheStats()
        self._memory: OrderedDict[bytes, bytes] = OrderedDict()
        # key -> [size, last mtime we know of (wall clock)]
        self._disk: OrderedDict[bytes, list[float]] = OrderedDict()
        self._writing: set[bytes] = set()
        self._closed = False
        self.root: Path | None = None
        if disk_dir is not None and disk_bytes > 0:
            self.root = Path(disk_dir) / "chunks"
            self.root.mkdir(parents=True, exist_ok=True)
            self._scan()

    # ------------------------------------------------------------------ public

    @property
    def has_disk(self) -> bool:
        """Whether there is a disk level."""
        return self.root is not None

    def path_of(self, key: bytes) -> Path:
        """Where the disk level keeps ``key`` (whether or not it is there)."""
        if self.root is None:
            raise ValueError("this cache has no disk level")
        name = key.hex()
        return self.root / name[:2] / name

    def contains(self, key: bytes) -> bool:
        """Whether ``key`` is in memory or (as far as this cache knows) on disk. No I/O."""
        return key in self._memory or key in self._disk

    def in_memory(self, key: bytes) -> bool:
        """Whether ``key`` is in the memory level. No I/O, recency unchanged."""
        return key in self._memory

    def get_memory(self, key: bytes) -> bytes | None:
        """The content of ``key`` if it is in memory (a hit), else None (not counted)."""
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            self._note_disk_use(key)
        return data

    def get(self, key: bytes) -> bytes | None:
        """The content of ``key`` from memory, else from disk (verified), else None."""
        data = self.get_memory(key)
        if data is not None:
            return data
        if key in self._disk:
            try:
                loaded = _load_file(self.path_of(key), key)
            except OSError as exc:
                log.warning("chunk cache: cannot read %s: %s", self.path_of(key), exc)
                self.stats.io_errors += 1
                loaded = None
            data = self._loaded(key, loaded)
            if data is not None:
                return data
        self.stats.misses += 1
        return None

    async def get_many_async(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The content of each of ``keys`` found in memory or on disk; misses are left out.

        Disk loads (each verified) happen in one worker thread unless they are small.
        """
        found: dict[bytes, bytes] = {}
        on_disk: list[bytes] = []
        for key in keys:
            if key in found or key in on_disk:
                continue
            data = self.get_memory(key)
            if data is not None:
                found[key] = data
            elif key in self._disk:
                on_disk.append(key)
            else:
                self.stats.misses += 1
        if not on_disk:
            return found
        paths = [(key, self.path_of(key)) for key in on_disk]
        size = sum(int(self._disk[k][0]) for k in on_disk)

        def load_all() -> list[bytes | bool | OSError | None]:
            out: list[bytes | bool | OSError | None] = []
            for key, path in paths:
                try:
                    out.append(_load_file(path, key))
                except OSError as exc:
                    out.append(exc)
            return out

        if size <= INLINE_IO_BYTES:
            results = load_all()
        else:
            results = await trio.to_thread.run_sync(load_all)
        for (key, path), loaded in zip(paths, results, strict=True):
            if isinstance(loaded, OSError):  # counted here: the worker thread touches no state
                log.warning("chunk cache: cannot read %s: %s", path, loaded)
                self.stats.io_errors += 1
                loaded = None
            data = self._loaded(key, loaded)
            if data is not None:
                found[key] = data
            else:
                self.stats.misses += 1
        return found

    def put_memory(self, key: bytes, data: bytes) -> None:
        """Keep ``data`` (verified content of ``key``) in the memory level."""
        if self._closed or len(data) > self.memory_limit:
            return
        old = self._memory.get(key)
        if old is not None:
            self._memory.move_to_end(key)
            return
        self._memory[key] = data
        self.stats.memory_bytes += len(data)
        while self.stats.memory_bytes > self.memory_limit:
            _, dropped = self._memory.popitem(last=False)
            self.stats.memory_bytes -= len(dropped)
            self.stats.memory_evictions += 1
        self.stats.memory_entries = len(self._memory)

    def put(self, key: bytes, data: bytes, *, memory: bool = True, verified: bool = False) -> None:
        """Keep ``data`` in memory (unless ``memory`` is false) and on disk, blocking.

        The disk write checks that ``data`` hashes to ``key`` (``ValueError`` if not), unless
        the caller says it has just ``verified`` that.
        """
        if len(key) != 32:
            raise ValueError("a chunk cache key is a raw 32-byte sha256")
        if memory:
            self.put_memory(key, data)
        if not self._wants_on_disk(key, data):
            return
        self._writing.add(key)
        try:
            ok = self._write_one(key, data, verified)
        finally:
            self._writing.discard(key)
        self._written([(key, len(data), ok)])

    async def put_many_async(
        self,
        items: Sequence[tuple[bytes, bytes]],
        *,
        memory: bool = True,
        verified: bool = False,
    ) -> None:
        """:meth:`put` for several chunks, the disk writes in one worker thread.

        The memory level is updated before the first await. Concurrent calls for the same
        key write it once.
        """
        for key, _ in items:
            if len(key) != 32:
                raise ValueError("a chunk cache key is a raw 32-byte sha256")
        if memory:
            for key, data in items:
                self.put_memory(key, data)
        todo: list[tuple[bytes, bytes]] = []
        chosen: set[bytes] = set()
        for key, data in items:
            if key not in chosen and self._wants_on_disk(key, data):
                chosen.add(key)
                todo.append((key, data))
        if not todo:
            return
        for key, _ in todo:
            self._writing.add(key)

        def write_all() -> list[bool]:
            return [self._write_one(key, data, verified) for key, data in todo]

        try:
            if sum(len(d) for _, d in todo) <= INLINE_IO_BYTES:
                results = write_all()
            else:
                results = await trio.to_thread.run_sync(write_all)
        finally:
            for key, _ in todo:
                self._writing.discard(key)
        self._written([(k, len(d), ok) for (k, d), ok in zip(todo, results, strict=True)])

    def close(self) -> None:
        """Drop the memory level; later puts are ignored. Files on disk stay."""
        self._closed = True
        self._memory.clear()
        self.stats.memory_bytes = 0
        self.stats.memory_entries = 0

    # ------------------------------------------------------------------ disk level

    def _scan(self) -> None:
        """Seed the disk LRU from the files' mtimes; remove stale temporary files."""
        assert self.root is not None
        found: list[tuple[float, bytes, int]] = []
        with os.scandir(self.root) as top:
            subdirs = [e for e in top if len(e.name) == 2 and e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            try:
                with os.scandir(sub.path) as it:
                    for e in it:
                        if e.name.startswith(_TMP_PREFIX):
                            if _stale_temp(e.name):
                                with contextlib.suppress(OSError):
                                    os.unlink(e.path)
                                    self.stats.stale_temp_files += 1
                            continue
                        if not _is_key_name(e.name) or e.name[:2] != sub.name:
                            continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        found.append((st.st_mtime, bytes.fromhex(e.name), st.st_size))
            except OSError as exc:
                log.warning("chunk cache: cannot scan %s: %s", sub.path, exc)
        found.sort()
        for mtime, key, size in found:
            self._disk[key] = [size, mtime]
            self.stats.disk_bytes += size
        self.stats.disk_files = len(self._disk)
        self._evict_disk()

    def _wants_on_disk(self, key: bytes, data: bytes) -> bool:
        if self.root is None or self._closed or len(data) > self.disk_limit:
            return False
        if key in self._disk:
            self._note_disk_use(key)
            return False
        return key not in self._writing

    def _write_one(self, key: bytes, data: bytes, verified: bool) -> bool:
        """Write one file (any thread); False if the OS refused. Changes no state."""
        path = self.path_of(key)
        try:
            _write_file(path.parent, path, key, data, verified=verified)
        except OSError as exc:
            log.warning("chunk cache: cannot write %s: %s", path, exc)
            return False
        return True

    def _written(self, entries: Iterable[tuple[bytes, int, bool]]) -> None:
        """Account for finished writes: ``(key, size, succeeded)``."""
        now = time.time()
        for key, size, ok in entries:
            if not ok:
                self.stats.io_errors += 1
                continue
            if key in self._disk:  # a concurrent writer got there first: same content
                continue
            self._disk[key] = [size, now]
            self.stats.disk_bytes += size
            self.stats.disk_writes += 1
        self.stats.disk_files = len(self._disk)
        self._evict_disk()

    def _evict_disk(self) -> None:
        while self.stats.disk_bytes > self.disk_limit and self._disk:
            key, (size, _) = self._disk.popitem(last=False)
            self.stats.disk_bytes -= int(size)
            self.stats.disk_evictions += 1
            with contextlib.suppress(FileNotFoundError):
                self.path_of(key).unlink()
        self.stats.disk_files = len(self._disk)

    def _note_disk_use(self, key: bytes) -> None:
        """Move ``key`` to the recent end of the disk LRU; refresh its mtime now and then."""
        entry = self._disk.get(key)
        if entry is None:
            return
        self._disk.move_to_end(key)
        now = time.time()
        if now - entry[1] >= TOUCH_INTERVAL:
            entry[1] = now
            try:
                os.utime(self.path_of(key))
            except FileNotFoundError:
                self._forget_disk(key)
            except OSError:
                pass

    def _forget_disk(self, key: bytes) -> None:
        entry = self._disk.pop(key, None)
        if entry is not None:
            self.stats.disk_bytes -= int(entry[0])
            self.stats.disk_files = len(self._disk)

    def _loaded(self, key: bytes, loaded: bytes | bool | None) -> bytes | None:
        """Account for a disk load's outcome; the content on a (verified) hit."""
        if isinstance(loaded, bytes):
            self.stats.disk_hits += 1
            self._note_disk_use(key)
            self.put_memory(key, loaded)
            return loaded
        if loaded is False:
            self.stats.corrupt_files += 1
            log.warning("chunk cache: %s did not match its name; deleted", key.hex())
        self._forget_disk(key)
        return None
