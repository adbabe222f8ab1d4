"""The FUSE adapter: pyfuse3 operations over a :class:`~lazyfs.fs.image.LazyImage`.

Nothing here decides anything about the image. Each operation translates a kernel request
into a call on the merged tree or the fetcher and the answer back. Errors map to errnos: a
read that cannot be served (the fetcher gave up after its bounded retries, or content
failed verification) is ``EIO``, and every write is ``EROFS``.

The image never changes while mounted, so the kernel is told to keep entries, attributes
and pages cached for as long as it likes (long timeouts, ``keep_cache``). A re-read of cached
pages never reaches this process; its speed is the kernel's alone. (On Linux 6.18 the page
cache of a FUSE file is made of 4 KiB pages, where ext4 uses folios of up to 2 MiB, and
copying page by page makes such re-reads slower than ext4's; nothing a pyfuse3 daemon can
set changes that.)

Sequential reads are detected per open file (a read that starts near where the handle's
reads have got to) and flagged to the fetcher, whose background work (read-ahead and
write-behind, :meth:`ChunkFetcher.run <lazyfs.fs.fetcher.ChunkFetcher.run>`) runs for as
long as the mount.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

import pyfuse3
import trio

from .control import mount_device
from .errors import LazyfsError
from .fs.image import LazyImage
from .fs.tree import Attr

__all__ = ["FUSE_OPTIONS", "LazyOperations", "mount_image"]

log = logging.getLogger("lazyfs.fuse")

#: How long the kernel may cache entries and attributes (the image is immutable).
CACHE_TIMEOUT = 24 * 3600.0
BLOCK_SIZE = 4096
#: In an open's flags: the kernel opens the file for ``execve`` (``__FMODE_EXEC``), the
#: program's and its ELF interpreter's (seen here on 6.18; not in any uapi header).
FMODE_EXEC = 0x20
#: Seconds a failed read is remembered for the kernel's immediate second request.
FAILURE_MEMORY = 1.0
#: A read starting within this distance, or twice its own size, of where the file handle's
#: reads have got to continues them (the kernel sends a sequential reader's reads a few at a
#: time, and they may arrive out of order). Small, so that random reads are not taken for
#: sequential ones: each such read would start read-ahead.
SEQUENTIAL_SLACK = 256 * 1024

#: ``allow_other`` + ``default_permissions``: any uid (a container's) may use the mount and
#: the kernel enforces the image's modes; ``ro``; ``nodev`` is not set because images carry
#: device nodes a container's /dev may need (the runtime mounts with its own flags).
FUSE_OPTIONS = ("fsname=lazyfs", "subtype=lazyfs", "ro", "allow_other", "default_permissions")


def _erofs(*_args, **_kwargs):
    raise pyfuse3.FUSEError(errno.EROFS)


class LazyOperations(pyfuse3.Operations):
    """Read-only FUSE operations for one image."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, image: LazyImage) -> None:
        super().__init__()
        self.image = image
        self.tree = image.tree
        # inode -> (until, offset, end) of a read that just failed (see read)
        self._failures: dict[int, tuple[float, int, int]] = {}
        self._handles: dict[int, list[int]] = {}  # fh -> [inode, end of the last read]
        self._next_fh = 1

    # ------------------------------------------------------------------ metadata

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = attr.blocks
        e.st_atime_ns = e.st_ctime_ns = e.st_mtime_ns = attr.mtime_ns
        return e

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self.tree.lookup(parent_inode, name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(self.tree.attr(ino))

    async def getattr(self, inode, ctx=None):
        return self._entry(self.tree.attr(inode))

    async def readlink(self, inode, ctx):
        return self.tree.readlink(inode)

    async def opendir(self, inode, ctx):
        if not stat.S_ISDIR(self.tree.attr(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        children = self.tree.children(fh)
        for i in range(start_id, len(children)):
            name, ino = children[i]
            if not pyfuse3.readdir_reply(token, name, self._entry(self.tree.attr(ino)), i + 1):
                return

    async def releasedir(self, fh):
        pass

    async def getxattr(self, inode, name, ctx):
        value = self.tree.xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode, ctx):
        return list(self.tree.xattrs(inode))

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = -(-self.tree.total_file_bytes() // BLOCK_SIZE)
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.tree)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def forget(self, inode_list):
        pass  # inodes live as long as the mount

    # ------------------------------------------------------------------ contents

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = [inode, 0]
        try:  # a program being executed, or a library, is fetched whole, now
            self.image.opened(inode, executing=bool(flags & FMODE_EXEC))
        except Exception:  # a hint: it must not fail the open (nor stop pyfuse3)
            log.exception("prefetch on open of inode %d failed", inode)  # no path: may fail
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def read(self, fh, off, size):
        handle = self._handles[fh]
        inode, last_end = handle
        sequential = off > 0 and abs(off - last_end) <= max(SEQUENTIAL_SLACK, 2 * size)
        # The kernel asks once more, at once, when a read-ahead request failed (for the
        # page it needs): answer that from memory, so that a read(2) fails within one read
        # timeout instead of two. Used once; later reads are tried for real.
        failed = self._failures.pop(inode, None)
        overlaps = failed is not None and failed[1] < off + size and off < failed[2]
        if overlaps and failed[0] > time.monotonic():
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            data = await self.image.read(inode, off, size, sequential=sequential)
        except LazyfsError as exc:
            # Counted per layer in the fetcher's stats (``lazyfs stats``).
            log.error("read of %s at %d failed: %s", self.tree.path(inode), off, exc)
            self._failures[inode] = (time.monotonic() + FAILURE_MEMORY, off, off + size)
            if len(self._failures) > 1024:
                self._failures.pop(next(iter(self._failures)))
            raise pyfuse3.FUSEError(errno.EIO) from None
        end = off + len(data)
        handle[1] = max(handle[1], end) if sequential else end
        return data

    async def release(self, fh):
        self._handles.pop(fh, None)

    # ------------------------------------------------------------------ writes: read-only

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = staticmethod(_erofs)
    create = write = setxattr = removexattr = staticmethod(_erofs)


async def _tune_readahead(mountpoint: Path) -> None:
    """Raise the read-ahead once the kernel has set its own from our reply to FUSE_INIT.

    A stat of the mount point (from a thread: this process serves it) returns only after
    that reply, so a value written then is not overwritten. Await it, with the FUSE loop
    running, before saying the mount is ready: readers get 1 MiB requests from the start.
    """
    await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    _raise_readahead(mountpoint)


def _raise_readahead(mountpoint: Path, kib: int = 1024) -> None:
    """Ask the kernel for 1 MiB reads on this mount (FORMATS.md §9: twice the throughput).

    pyfuse3 refuses ``max_read`` as a mount option; the bdi's read_ahead_kb does the job.
    """
    device = mount_device(mountpoint)
    if device is None:
        log.debug("could not raise read-ahead on %s: not in mountinfo", mountpoint)
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(kib))
    except OSError as exc:
        log.debug("could not raise read-ahead on %s: %s", mountpoint, exc)


async def mount_image(
    image: LazyImage,
    mountpoint: Path,
    *,
    ready: trio.Event | None = None,
    debug: bool = False,
) -> None:
    """Serve ``image`` at ``mountpoint`` until cancelled; unmounts on the way out."""
    ops = LazyOperations(image)
    options = set(pyfuse3.default_options) | set(FUSE_OPTIONS)
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, str(mountpoint), options)
    except RuntimeError as exc:  # libfuse refused the mount; it says why on stderr
        raise LazyfsError(f"cannot mount on {mountpoint}: {exc}") from None
    try:
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                await pyfuse3.main()  # returns when unmounted from outside (fusermount -u)
                nursery.cancel_scope.cancel()

            await nursery.start(image.fetcher.run)
            nursery.start_soon(serve)
            await _tune_readahead(mountpoint)
            if image.options.prefetch:
                nursery.start_soon(
                    lambda: image.fetcher.prefetch(everything=image.options.prefetch_all)
                )
            if ready is not None:
                ready.set()
    finally:
        pyfuse3.close(unmount=True)
