"""The start-up read-ahead of the ``lazyfs`` command (lazyfs/_startup.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import lazyfs
from lazyfs import _startup, cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def startup_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Lists go to a directory of the test's own; nothing is remembered from before."""
    directory = tmp_path / "pycache"
    directory.mkdir()
    monkeypatch.setattr(_startup, "STARTUP_DIR", str(directory))
    monkeypatch.setattr(_startup, "_read", {})
    return directory


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["lazyfs", "run", "img", "--", "sh"], "run"),
        (["lazyfs", "-v", "--debug", "mount", "a", "b"], "mount"),
        (["lazyfs"], "none"),
        (["lazyfs", "--version"], "none"),
        (["lazyfs", "../../etc/passwd"], "other"),
        (["lazyfs", "Run"], "other"),
    ],
)
def test_command_of(argv: list[str], command: str) -> None:
    assert _startup.command_of(argv) == command


def test_list_path_is_per_command_and_interpreter(startup_dir: Path) -> None:
    path = Path(_startup.list_path("run"))
    assert path.parent == startup_dir
    assert path.name == f"startup-files.run.{sys.implementation.cache_tag}"
    assert _startup.list_path("mount") != str(path)


def test_read_ahead_hints_only_regular_files(tmp_path: Path, startup_dir: Path) -> None:
    regular = tmp_path / "module.pyc"
    regular.write_bytes(b"x" * 10_000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block: it must not be opened
    listing = startup_dir / "list"
    listing.write_text(
        "\n".join([str(regular), str(fifo), str(tmp_path), "relative/path", "/no/such/file", ""])
    )
    _startup.read_ahead(str(listing))
    assert _startup.wait() == 1
    assert _startup.wait() == 0  # joined and counted once
    _startup.read_ahead(str(startup_dir / "missing"))
    assert _startup.wait() == 0
    listing.write_bytes(b"\xff\xfe not utf-8")
    _startup.read_ahead(str(listing))
    assert _startup.wait() == 0


def test_read_ahead_threads_share_the_list_and_are_joined(tmp_path: Path, startup_dir: Path):
    names = []
    for i in range(10):
        path = tmp_path / f"m{i}.pyc"
        path.write_bytes(b"x" * (i + 1))
        names.append(str(path))
    listing = startup_dir / "list"
    listing.write_text("\n".join(names) + "\n")
    for threads in (1, 3, 4, 32):
        _startup.read_ahead(str(listing), threads=threads)
        assert _startup.wait() == 10
        assert not [t for t in threading.enumerate() if t.name == "lazyfs-read-ahead"]


def test_startup_files_are_the_loaded_modules_files() -> None:
    files = _startup.startup_files()
    assert files == sorted(files)
    assert all(os.path.isabs(f) and os.path.isfile(f) for f in files)
    mine = Path(_startup.__file__).resolve()
    # lazyfs's own modules appear by their bytecode when it exists, else by their source.
    cached = Path(_startup.__spec__.cached)
    assert str(cached if cached.is_file() else mine) in files


def test_record_keeps_a_union_and_writes_only_on_change(
    tmp_path: Path, startup_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _startup.list_path("run")
    old = tmp_path / "old.pyc"
    old.write_bytes(b"old")
    gone = tmp_path / "gone.pyc"
    Path(path).write_text(f"{old}\n{gone}\n")
    now = [str(tmp_path / "a.pyc"), str(tmp_path / "b.so")]
    for name in now:
        Path(name).write_bytes(b"!")
    monkeypatch.setattr(_startup, "startup_files", lambda: list(now))
    _startup.read_ahead(path)
    _startup.wait()
    assert _startup.record(path) is True
    assert Path(path).read_text().split() == sorted([str(old), *now])  # gone.pyc dropped
    assert _startup.record(path) is False  # nothing new: not written again
    before = os.stat(path).st_mtime_ns
    assert _startup.record(path) is False and os.stat(path).st_mtime_ns == before
    now.append(str(tmp_path / "c.pyc"))
    Path(now[-1]).write_bytes(b"!")
    assert _startup.record(path) is True
    assert str(tmp_path / "c.pyc") in Path(path).read_text().split()
    assert not [p for p in os.listdir(startup_dir) if p.endswith(".tmp")]


def test_record_without_its_directory_does_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_startup, "_read", {})
    assert _startup.record(str(tmp_path / "absent" / "list")) is False
    assert not (tmp_path / "absent").exists()


def test_record_does_nothing_when_recording_is_off(
    startup_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (a lazyfs service worker: every command's modules are loaded there)
    monkeypatch.setattr(_startup, "recording", False)
    path = _startup.list_path("run")
    assert _startup.record(path) is False
    assert not Path(path).exists()
    monkeypatch.setattr(_startup, "recording", True)
    assert _startup.record(path) is True


def test_the_cli_remembers_what_a_command_imported(tmp_path: Path, startup_dir: Path) -> None:
    """A command run through cli.main leaves the list the next start of it reads ahead."""
    assert cli.main(["stats", str(tmp_path)]) == 1  # not a lazyfs mount: an error, at once
    listing = Path(_startup.list_path("stats"))
    files = listing.read_text().split()
    assert str(Path(cli.__spec__.cached)) in files or str(Path(cli.__file__)) in files
    assert any("/trio/" in f for f in files)
    _startup.read_ahead(str(listing))
    assert _startup.wait() == len(files)


def test_the_entry_point_reads_ahead_then_runs_the_cli(tmp_path: Path) -> None:
    """``python -m lazyfs`` goes through _startup.main; a broken list does not stop it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys, lazyfs._startup as s\n"
        f"s.STARTUP_DIR = {str(tmp_path)!r}\n"
        "open(s.list_path('none'), 'w').write('/no/such\\n\\x00garbage\\n')\n"
        "sys.argv = ['lazyfs', '--version']\n"
        "s.main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"lazyfs {lazyfs.__version__}"
