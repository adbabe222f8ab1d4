"""Starting the ``lazyfs`` command fast from a cold page cache.

A ``lazyfs run`` or ``lazyfs mount`` imports about 400 modules (trio, httpx, pyfuse3 and
lazyfs's own) before it does anything. When they are not in the page cache (after a boot,
after memory pressure, or in the benchmarks, which drop the page cache before every cold
start), Python reads their files one after the other, each a small read that waits for the
disk: on the benchmark VM that is 0.45-0.5 s of a 0.7 s ``lazyfs run``.

So each command remembers which files its imports read (:func:`record`, once the command
has done its work, only when new files appear) in a list of its own next to lazyfs's own
bytecode (:func:`list_path`), and the next start of that command first asks the kernel to
read all of them ahead (:func:`read_ahead`: ``posix_fadvise WILLNEED`` per file, which
returns at once and lets the disk work on all of them together) before importing anything
heavy. Four threads hint while the main thread imports (a cold file's lookup waits for the
disk too, so one thread hinting before importing gains less). Measured on the VM with the
page cache dropped, ``lazyfs run`` of ``python3 -c 'print(1)'`` on the demo image, medians
of 8 interleaved runs: 0.90 s without the list, 0.85 s with it. With a warm page cache the
read-ahead costs about 2 ms.

``lazyfs run``, ``mount`` and ``bundle`` also skip the interpreter's teardown once their
work is done (:func:`_exit_now`).

:func:`main` is the ``lazyfs`` command's entry point. Before any of this it offers the
command to a running ``lazyfs service`` (:mod:`lazyfs._delegate`), which has everything
imported already; only if none takes it does this process go on.

Only the standard library is imported here, and nothing here may fail the command: a
missing, unreadable or stale list, or a directory lazyfs cannot write, only means no
read-ahead.
"""

from __future__ import annotations

import os
import stat
import sys

from . import _delegate

TYPE_CHECKING = False  # (typing itself imports re: 10 ms)
if TYPE_CHECKING:
    import threading

__all__ = ["command_of", "list_path", "main", "read_ahead", "record", "startup_files", "wait"]

#: Where the lists live: the ``__pycache__`` of this package (they belong to this
#: installation and this interpreter, like the bytecode there).
STARTUP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")

#: Threads looking files up and hinting them at once (lookups wait for the disk too).
READ_AHEAD_THREADS = 4

#: Commands that leave nothing for the interpreter's teardown to do (see :func:`main`).
_FAST_EXIT = frozenset({"run", "mount", "bundle"})

#: Whether :func:`record` writes lists (see there).
recording = True

_read: dict[str, list[str]] = {}  # path -> the list as read_ahead found it
_threads: list[threading.Thread] = []
_hinted: list[int] = []


def command_of(argv: list[str]) -> str:
    """The command word of a ``lazyfs`` command line (``"none"`` if there is none).

    The options before the command (``-v``, ``--debug``, ``--version``) take no value.
    """
    for arg in argv[1:]:
        if not arg.startswith("-"):
            return arg if arg.isalpha() and arg.islower() and len(arg) <= 20 else "other"
    return "none"


def list_path(command: str) -> str:
    """The read-ahead list of ``command``."""
    return os.path.join(STARTUP_DIR, f"startup-files.{command}.{sys.implementation.cache_tag}")


def main() -> int:
    """The ``lazyfs`` command: read its files ahead, then import and run the CLI."""
    command = command_of(sys.argv)
    code = _delegate.delegate(sys.argv, command)
    if code is not None:  # a lazyfs service ran it
        _exit_now(code)
    read_ahead(list_path(command))
    try:
        from .cli import main as cli_main  # the imports the threads are reading ahead for
    finally:
        wait()  # one thread from here on: the CLI may fork, unshare or start trio
    code = cli_main()
    if command in _FAST_EXIT:
        # Their work is done and cleaned up (the container gone, or the mount handed to its
        # daemon): tearing the interpreter down would only free memory, which exiting frees
        # anyway. 30-40 ms of a `lazyfs run`, ~100 ms of a `lazyfs mount --daemon` of a
        # 100k-entry image (0.99 s -> 0.88 s, medians of 6) on the VM.
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Flush what is buffered and exit without the interpreter's teardown."""
    logging = sys.modules.get("logging")  # not imported by a command a service ran
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def read_ahead(path: str, *, threads: int = READ_AHEAD_THREADS) -> None:
    """Start asking the kernel to read ahead every regular file the list at ``path`` names.

    Returns at once: ``threads`` background threads look the files up and hint them (a
    cold lookup waits for the disk too, so several run at once) while the caller goes on
    importing. :func:`wait` joins them: call it before anything that needs a single thread
    (``fork``, ``unshare``, trio). Never raises for I/O reasons.
    """
    try:
        with open(path, encoding="utf-8") as f:
            names = [name for name in f.read().split("\n") if name]
    except (OSError, ValueError):
        _read[path] = []
        return
    import threading  # (here: a command handed to a service never needs it)

    _read[path] = names
    absolute = [name for name in names if name.startswith("/")]
    for i in range(max(1, min(threads, len(absolute)))):
        thread = threading.Thread(
            target=_hint, args=(absolute[i::threads],), name="lazyfs-read-ahead", daemon=True
        )
        thread.start()
        _threads.append(thread)


def wait() -> int:
    """Join the threads :func:`read_ahead` started; how many files they hinted in all."""
    while _threads:
        _threads.pop().join()
    hinted = sum(_hinted)
    _hinted.clear()
    return hinted


def _hint(names: list[str]) -> None:
    hinted = 0
    for name in names:
        try:
            # Only regular files: opening a FIFO or a device could block or act.
            if not stat.S_ISREG(os.stat(name).st_mode):
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except (OSError, ValueError):
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            hinted += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    _hinted.append(hinted)  # list.append is atomic


def startup_files() -> list[str]:
    """The files the modules imported so far were loaded from, sorted.

    A module's bytecode file when it has one, else its source or extension module.
    """
    files = set()
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        cached = getattr(spec, "cached", None) if spec is not None else None
        origin = getattr(module, "__file__", None)
        for candidate in (cached, origin):
            if (
                isinstance(candidate, str)
                and os.path.isabs(candidate)
                and os.path.isfile(candidate)
            ):
                files.add(candidate)
                break
    return sorted(files)


def record(path: str) -> bool:
    """Add the current :func:`startup_files` to the list at ``path``.

    The list keeps the files earlier runs of the command read too (one run of a command may
    import less than another: an error, another option), less those that are gone. Writes
    only when that changes the list read by :func:`read_ahead` (or the file on disk, if
    :func:`read_ahead` did not read it). Returns whether it wrote. Never raises for I/O
    reasons. Does nothing when :data:`recording` is off (a ``lazyfs service`` worker has
    every module of every command loaded: its list would not be this command's).
    """
    if not recording:
        return False
    before = _read.get(path)
    if before is None:
        try:
            with open(path, encoding="utf-8") as f:
                before = [name for name in f.read().split("\n") if name]
        except (OSError, ValueError):
            before = []
    files = sorted(set(startup_files()) | {n for n in before if os.path.isfile(n)})
    if files == before:
        return False
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        if not os.path.isdir(directory):
            return False
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(files) + "\n")
        os.replace(tmp, path)
        _read[path] = files
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    return True
