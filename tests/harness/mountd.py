"""A real lazyfs FUSE mount served by a child process, with test-sized timeouts.

``lazyfs mount`` has production timeouts (a read gives up after 60 s, the HTTP client waits
30 s between bytes and tries 5 times), which are too long for tests that make a read fail
on purpose. :class:`MountDaemon` runs this module as a child process that does what
``lazyfs mount`` does — :func:`~lazyfs.fs.image.open_image`,
:func:`~lazyfs.fuse.mount_image` and :func:`~lazyfs.control.serve_control`, the same code
— with a :class:`~lazyfs.oci.registry.RegistryClient` and
:class:`~lazyfs.fs.image.MountOptions` given shorter bounds (:class:`Bounds`). So a faulty
read ends in ``EIO`` within :attr:`Bounds.read_timeout` seconds, and ``lazyfs stats`` and
``lazyfs umount`` work on the mount as on any other.

The child writes ``ok`` (or ``error: ...``) on its stdout once mounted, serves until
SIGTERM, and unmounts on the way out. :meth:`MountDaemon.stop` sends SIGTERM, waits, and
falls back to SIGKILL and a lazy ``fusermount3 -u -z``, so nothing stays mounted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = ["Bounds", "MountDaemon"]

_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bounds:
    """Timeouts and retries of a test mount.

    Attributes:
        read_timeout: Seconds one read may take in all (the fetcher's bound; ``EIO`` after).
        http_read_timeout: Seconds the HTTP client waits for the next bytes of a response.
        attempts: Tries of one registry request, the first included.
        max_delay: Longest backoff between two tries (seconds).
        max_retry_after: Longest ``Retry-After`` honoured (seconds).
    """

    read_timeout: float = 5.0
    http_read_timeout: float = 1.0
    attempts: int = 3
    max_delay: float = 0.5
    max_retry_after: float = 2.0


class MountDaemon:
    """``ref`` mounted at ``mountpoint`` by a child process; a context manager.

    Args:
        ref: Image reference (or ``oci:DIR``).
        mountpoint: An existing empty directory.
        cache_dir: The chunk cache directory.
        bounds: Timeouts and retries.
        memory_cache: Memory cache bound in bytes.
        prefetch: ``None`` (no prefetch), ``"prioritised"`` or ``"all"``.
        log_path: Where the child's stderr goes (default ``cache_dir/mountd.log``).
    """

    def __init__(
        self,
        ref: str,
        mountpoint: Path,
        cache_dir: Path,
        *,
        bounds: Bounds = Bounds(),
        memory_cache: int = 64 * 1024 * 1024,
        prefetch: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.ref = ref
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.bounds = bounds
        self.memory_cache = memory_cache
        self.prefetch = prefetch
        self.log_path = log_path or cache_dir / "mountd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The serving process's pid."""
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout: float = 60) -> Self:
        """Start the child and wait until the mount is ready; raise with its log if not."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        b = self.bounds
        argv = [
            sys.executable,
            "-m",
            "tests.harness.mountd",
            self.ref,
            str(self.mountpoint),
            str(self.cache_dir),
            f"--read-timeout={b.read_timeout}",
            f"--http-read-timeout={b.http_read_timeout}",
            f"--attempts={b.attempts}",
            f"--max-delay={b.max_delay}",
            f"--max-retry-after={b.max_retry_after}",
            f"--memory-cache={self.memory_cache}",
            f"--prefetch={self.prefetch or 'none'}",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=_ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        os.set_blocking(self.process.stdout.fileno(), False)
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                break
            piece = self.process.stdout.read()
            if piece:
                line += piece
            else:
                time.sleep(0.02)
        if line.strip() != b"ok":
            self.stop()
            raise RuntimeError(f"test mount failed ({line.decode().strip()}): {self.log_tail()}")
        return self

    def stop(self, timeout: float = 30) -> None:
        """Unmount: SIGTERM, then SIGKILL and a lazy unmount if needed. Idempotent."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        from lazyfs.control import is_mountpoint

        if is_mountpoint(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)

    def stats(self) -> dict:
        """What ``lazyfs stats --json`` reports for the mount."""
        result = subprocess.run(
            [sys.executable, "-m", "lazyfs", "stats", "--json", str(self.mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise RuntimeError(f"lazyfs stats failed: {result.stderr}")
        return json.loads(result.stdout)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the child's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------- the child


async def _serve(args: argparse.Namespace) -> None:
    import httpx
    import trio

    from lazyfs.control import serve_control
    from lazyfs.errors import unwrap_task_errors
    from lazyfs.fs.image import MountOptions, open_image
    from lazyfs.fuse import mount_image
    from lazyfs.oci.registry import RegistryClient
    from lazyfs.oci.retry import RetryPolicy
    from lazyfs.oci.store import open_store

    timeout = httpx.Timeout(
        connect=args.http_read_timeout, read=args.http_read_timeout, write=10.0, pool=10.0
    )
    retry = RetryPolicy(
        attempts=args.attempts,
        base_delay=0.1,
        max_delay=args.max_delay,
        max_retry_after=args.max_retry_after,
    )
    options = MountOptions(
        cache_dir=args.cache_dir,
        memory_cache_bytes=args.memory_cache,
        prefetch=args.prefetch != "none",
        prefetch_all=args.prefetch == "all",
        read_timeout=args.read_timeout,
    )
    async with RegistryClient(retry=retry, timeout=timeout) as client:
        image = await open_image(open_store(args.ref, client), options)
        try:
            with unwrap_task_errors(), trio.open_signal_receiver(signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    ready = trio.Event()
                    nursery.start_soon(lambda: mount_image(image, args.mountpoint, ready=ready))
                    await ready.wait()

                    def unmount() -> dict:
                        nursery.cancel_scope.cancel()
                        return {"unmounting": True}

                    handlers = {"stats": image.stats, "unmount": unmount}
                    await nursery.start(serve_control, args.mountpoint, handlers)
                    sys.stdout.write("ok\n")
                    sys.stdout.flush()
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
        finally:
            image.close()


def main() -> int:
    import logging

    import trio

    from lazyfs.errors import LazyfsError

    parser = argparse.ArgumentParser(prog="mountd")
    parser.add_argument("ref")
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--read-timeout", type=float, required=True)
    parser.add_argument("--http-read-timeout", type=float, required=True)
    parser.add_argument("--attempts", type=int, required=True)
    parser.add_argument("--max-delay", type=float, required=True)
    parser.add_argument("--max-retry-after", type=float, required=True)
    parser.add_argument("--memory-cache", type=int, required=True)
    parser.add_argument("--prefetch", choices=["none", "prioritised", "all"], required=True)
    args = parser.parse_args()
    args.mountpoint = args.mountpoint.resolve()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        trio.run(_serve, args)
    except LazyfsError as exc:
        sys.stdout.write(f"error: {exc}\n")
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
