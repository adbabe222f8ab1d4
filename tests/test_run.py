"""``lazyfs run`` for real: containers from images in a real registry, on a lazy rootfs.

Each test runs the ``lazyfs`` command as a user would, on a small busybox image the tests
build and push (plain gzip layers, and one converted to zstd:chunked), and looks at what
the container printed, its exit status, and what it left behind. After every test, passing
or failing, nothing of lazyfs may be mounted on the host, no state directory may remain in
the test's ``TMPDIR``, and no cgroup of a run may remain.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.images import Entry, build_image, push_image
from tests.harness.rootfs import busybox_entries

if os.geteuid() != 0:
    pytest.fail("lazyfs run needs root; run the tests as root (scripts/test)", pytrace=False)
if not os.path.exists("/bin/busybox"):
    pytest.fail("/bin/busybox (busybox-static) is missing; run scripts/test", pytrace=False)

CGROUP_ROOTS = [Path("/sys/fs/cgroup") / c / "lazyfs" for c in ("memory", "cpu", "pids")]


def _host_mounts_under(path: Path) -> list[str]:
    """The host's mounts at or below ``path`` (other tests may mount elsewhere meanwhile)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if str(path) in line.split()[4]]


def _run_cgroups() -> list[str]:
    found = []
    for root in CGROUP_ROOTS:
        if root.is_dir():
            found += [str(p) for p in root.iterdir() if p.name.startswith("run-")]
    return found


@pytest.fixture
def state(tmp_path: Path) -> Iterator[dict]:
    """A TMPDIR and cache dir of the test's own, checked for leftovers afterwards."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    before_cgroups = _run_cgroups()
    yield {"tmpdir": tmpdir, "cache": tmp_path / "cache"}
    assert _host_mounts_under(tmp_path) == [], "lazyfs run left a mount on the host"
    assert sorted(os.listdir(tmpdir)) == [], "lazyfs run left state in TMPDIR"
    assert _run_cgroups() == before_cgroups, "lazyfs run left a cgroup"


def _run_argv(state: dict, image: str, args: tuple[str, ...], options: tuple[str, ...]) -> list:
    """``python -m lazyfs run`` with the test's cache directory."""
    cache = ["--cache-dir", str(state["cache"])]
    return [sys.executable, "-m", "lazyfs", "run", *cache, *options, image, *args]


def _run_env(state: dict) -> dict:
    return {**os.environ, "TMPDIR": str(state["tmpdir"])}


def lazyfs_run(
    state: dict,
    image: str,
    *args: str,
    options: tuple[str, ...] = (),
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _run_argv(state, image, args, options),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_run_env(state),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


IMAGE_FILES = [
    Entry("etc/motd", data=b"welcome to the image\n"),
    Entry("srv", kind="dir"),
    Entry("srv/data.txt", data=b"image data\n" * 1000),
]


def _push(registry, name: str, image) -> str:
    ref = Reference.parse(f"{registry.host}/run/{name}-{uuid.uuid4().hex[:8]}:v1")

    async def main():
        async with RegistryClient() as client:
            await push_image(client, ref, image)

    trio.run(main)
    return str(ref)


@pytest.fixture(scope="module")
def busybox(registry) -> str:
    """A busybox image (gzip layers) with an Env, a WorkingDir and a Cmd of its own."""
    image = build_image(
        [busybox_entries(), IMAGE_FILES],
        env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes", "SHARED=image"],
        cmd=["/bin/sh", "-c", "echo default command"],
        working_dir="/srv",
    )
    return _push(registry, "busybox", image)


@pytest.fixture(scope="module")
def busybox_chunked(registry, busybox) -> str:
    """The same image converted to zstd:chunked (lazily fetched by ranges)."""
    dst = busybox.rsplit(":", 1)[0] + "-zstd:v1"

    async def main():
        async with RegistryClient() as client:
            await convert_image(
                open_store(busybox, client),
                open_store(dst, client),
                ConvertOptions(chunk_size=64 * 1024),
                NullProgress(),
            )

    trio.run(main)
    return dst


# ---------------------------------------------------------------------------- the process


def test_exit_code_passes_through(state, busybox):
    result = lazyfs_run(state, busybox, "sh", "-c", "exit 7")
    assert result.returncode == 7, result.stderr
    result = lazyfs_run(state, busybox, "true")
    assert result.returncode == 0, result.stderr


def test_image_cmd_workdir_and_env_are_used(state, busybox):
    result = lazyfs_run(state, busybox)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "default command\n"
    result = lazyfs_run(state, busybox, "sh", "-c", 'pwd; echo "$FROM_IMAGE $SHARED $HOME"')
    assert result.stdout.splitlines() == ["/srv", "yes image /root"], result.stderr


def test_env_workdir_and_user_options(state, busybox, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\nFROM_FILE=file\nSHARED=file\n")
    result = lazyfs_run(
        state,
        busybox,
        "sh",
        "-c",
        'echo "$SHARED $FROM_FILE $FROM_CLI $HOME"; pwd; id',
        options=(
            "--env-file",
            str(env_file),
            "-e",
            "SHARED=cli",
            "-e",
            "FROM_CLI=1",
            "-w",
            "/tmp",
            "-u",
            "app",
        ),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "cli file 1 /home/app"
    assert lines[1] == "/tmp"
    # The image's /etc/group makes app a member of staff (50) as well.
    assert lines[2].startswith("uid=1000(app) gid=1000(app) groups=")
    assert "50(staff)" in lines[2]

    result = lazyfs_run(state, busybox, "id", "-u", options=("-u", "4242:50"))
    assert result.stdout.strip() == "4242", result.stderr
    result = lazyfs_run(state, busybox, "true", options=("-u", "nosuchuser"))
    assert result.returncode != 0
    assert "nosuchuser" in result.stderr


def test_entrypoint_override(state, busybox):
    result = lazyfs_run(state, busybox, "hello", options=("--entrypoint", "/bin/echo"))
    assert result.stdout == "hello\n", result.stderr


def test_command_is_pid_1_and_hostname(state, busybox):
    result = lazyfs_run(state, busybox, "cat", "/proc/1/cmdline", options=("--hostname", "box1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\0")[:2] == ["cat", "/proc/1/cmdline"]
    result = lazyfs_run(state, busybox, "hostname", options=("--hostname", "box1"))
    assert result.stdout.strip() == "box1"
    result = lazyfs_run(state, busybox, "cat", "/etc/hostname", options=("--hostname", "box1"))
    assert result.stdout.strip() == "box1"
    result = lazyfs_run(state, busybox, "sh", "-c", "echo $$; ps -o pid,comm | wc -l")
    assert result.stdout.split()[0] == "1"


def test_init_option_reaps_and_forwards(state, busybox):
    # sh starts a background child that outlives it; with --init PID 1 reaps the orphan
    # and the command is PID 2 or later.
    result = lazyfs_run(
        state,
        busybox,
        "sh",
        "-c",
        "(sleep 0.2 &); sleep 0.6; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        "grep -l '^State:.Z' /proc/[0-9]*/status | wc -l; echo $$",
        options=("--init",),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "sleep" not in lines[0] and "grep" not in lines[0]
    assert lines[1].strip() == "0", "a zombie was not reaped"
    assert lines[2] != "1"


def test_network_none_has_only_loopback(state, busybox):
    result = lazyfs_run(state, busybox, "ls", "/sys/class/net", options=("--network", "none"))
    assert result.stdout.split() == ["lo"], result.stderr
    result = lazyfs_run(state, busybox, "ls", "/sys/class/net")
    assert len(result.stdout.split()) > 1  # the host's network: lo and the host's interfaces


def test_volume_is_visible_and_writable(state, busybox, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "from-host").write_text("hello from the host\n")
    result = lazyfs_run(
        state,
        busybox,
        "sh",
        "-c",
        "cat /data/from-host && echo written > /data/from-container",
        options=("-v", f"{volume}:/data"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from the host\n"
    assert (volume / "from-container").read_text() == "written\n"

    result = lazyfs_run(
        state, busybox, "sh", "-c", "echo no > /data/x", options=("-v", f"{volume}:/data:ro")
    )
    assert result.returncode != 0
    assert not (volume / "x").exists()


def test_read_only_rootfs(state, busybox):
    result = lazyfs_run(state, busybox, "sh", "-c", "echo x > /newfile", options=("--read-only",))
    assert result.returncode != 0
    assert "Read-only" in result.stderr


def test_writes_stay_in_the_container(state, busybox_chunked):
    result = lazyfs_run(
        state,
        busybox_chunked,
        "sh",
        "-c",
        "echo CONTAINER-WRITE-7f3a > /etc/motd && echo CONTAINER-WRITE-7f3a > /srv/new "
        "&& rm /srv/data.txt && cat /etc/motd",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "CONTAINER-WRITE-7f3a\n"
    # A new run sees the image as it was...
    result = lazyfs_run(state, busybox_chunked, "sh", "-c", "cat /etc/motd; ls /srv")
    assert result.stdout == "welcome to the image\ndata.txt\n", result.stderr
    # ...and nothing the container wrote reached the cache.
    for path in state["cache"].rglob("*"):
        if path.is_file():
            assert b"CONTAINER-WRITE-7f3a" not in path.read_bytes(), path


def test_missing_command(state, busybox):
    result = lazyfs_run(state, busybox, "/no/such/program")
    assert result.returncode == 127
    assert "/no/such/program" in result.stderr


def test_stdin_is_attached_with_interactive(state, busybox):
    result = lazyfs_run(state, busybox, "cat", options=("-i",), input="piped in\n")
    assert result.stdout == "piped in\n", result.stderr


def test_memory_limit_kills(state, busybox):
    ok = lazyfs_run(
        state,
        busybox,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1M",
        "count=8",
        options=("--memory", "32m"),
    )
    assert ok.returncode == 0, ok.stderr
    killed = lazyfs_run(
        state,
        busybox,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=96M",
        "count=1",
        options=("--memory", "32m"),
    )
    assert killed.returncode == 137, killed.stderr
    assert "out of memory" in killed.stderr


def test_pids_limit(state, busybox):
    result = lazyfs_run(
        state,
        busybox,
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 2 & done 2>/dev/null; jobs -p | wc -l",
        options=("--pids-limit", "10"),
    )
    assert int(result.stdout.strip() or 0) < 30, result.stderr


def test_verbose_prints_phases_and_bytes(state, busybox_chunked):
    result = lazyfs_run(state, busybox_chunked, "echo", "only this", options=("--verbose",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "only this\n"  # lazyfs's own words go to stderr
    for phase in ("resolve", "index", "mount", "exec"):
        assert re.search(rf"lazyfs: {phase}\s+[\d.]+ ms", result.stderr), result.stderr
    assert re.search(r"fetched\s+[\d.]+ MB of [\d.]+ MB", result.stderr)


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_program_is_prefetched_while_the_container_is_set_up(state, busybox_chunked, prefetch):
    # (lazyfs.fs.programs, tested on its own in test_programs.py: here, that run uses it.)
    argv = _run_argv(state, busybox_chunked, ("echo", "hi"), () if prefetch else ("--no-prefetch",))
    argv.insert(argv.index("run"), "--debug")
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=_run_env(state),
        stdin=subprocess.DEVNULL,
    )
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    line = "lazyfs: prefetched echo: bin/busybox\n"  # /bin/echo -> busybox, static: no more
    assert (line in result.stderr) == prefetch, result.stderr


# ---------------------------------------------------------------------------- signals


def _start(
    state: dict,
    image: str,
    *args: str,
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``lazyfs run`` in the background (``env``: added to the environment)."""
    return subprocess.Popen(
        _run_argv(state, image, args, options),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_run_env(state) | (env or {}),
    )


def _wait_for_line(process: subprocess.Popen, expected: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                break
    process.kill()
    raise AssertionError(f"no {expected!r} from the container: {process.communicate()[1]}")


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_stop_signals_are_forwarded(state, busybox, signum, code):
    stop_signal_reaches_the_container(lambda *args: _start(state, busybox, *args), signum, code)


def stop_signal_reaches_the_container(start, signum: int, code: int) -> subprocess.Popen:
    """``start(*command)`` a container whose shell exits with ``code`` on ``signum``, send
    ``signum`` to lazyfs, check that its status is ``code``; returns the finished process."""
    trap = f"trap 'exit {code}' {signal.Signals(signum).name[3:]}; echo ready; "
    process = start("sh", "-c", trap + "while :; do sleep 0.05; done")
    try:
        _wait_for_line(process, "ready")
        process.send_signal(signum)
        assert process.wait(timeout=15) == code
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process


def test_ctrl_c_ends_a_container_that_ignores_it(state, busybox):
    # sleep as PID 1 has no SIGINT handler, so the kernel drops the forwarded signal; lazyfs
    # kills the container after --stop-timeout and cleans up (checked by the fixture). sleep
    # is the container's command itself (a shell first might catch the signal), found by
    # its unusual argument.
    seconds = str(6000 + int(uuid.uuid4().int % 1000))
    process = _start(state, busybox, "sleep", seconds, options=("--stop-timeout", "1"))
    try:
        deadline = time.monotonic() + 30
        command = f"sleep\0{seconds}\0"  # the container's PID 1 exactly (not lazyfs itself)
        while not _processes_with(command, exact=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_with(command, exact=True), "the container did not start"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 137
        assert time.monotonic() - started < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------- the terminal


def interactive_shell_session(argv: list[str], env: dict[str, str]) -> int:
    """Run ``argv`` (a ``lazyfs run -it IMAGE sh``) on a new terminal, as a user's shell
    would, with ``env`` added: check the prompt, a command, that the shell has a tty, and
    that ``exit 3`` ends it with 3. Returns the pid it ran as."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: lazyfs on a terminal
        os.environ.update(env)
        os.execv(argv[0], argv)
    output = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while marker not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    output += os.read(fd, 4096)
                except OSError:
                    break
        assert marker in output, output.decode(errors="replace")

    try:
        read_until(b"# ")  # root's prompt
        os.write(fd, b"tty; echo $((6 * 7))\r")
        read_until(b"42")
        assert b"/dev/pts/" in output or b"/dev/console" in output
        os.write(fd, b"exit 3\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    return pid


def test_tty_interactive_shell(state, busybox):
    argv = _run_argv(state, busybox, ("sh",), ("-it",))
    interactive_shell_session(argv, {"TMPDIR": str(state["tmpdir"])})


def test_kill_9_of_lazyfs_takes_the_container_down(state, busybox):
    # lazyfs serves the container's root filesystem; killed, it cannot clean up, but the
    # container must not live on without it, and its mounts die with its mount namespace.
    marker = f"lazyfs-orphan-{uuid.uuid4().hex[:8]}"
    script = f"echo ready; sleep 600; echo {marker}"
    pid_1 = f"sh\0-c\0{script}\0"  # the container's command line (not lazyfs's)
    process = _start(state, busybox, "sh", "-c", script)
    try:
        _wait_for_line(process, "ready")
        assert _processes_with(pid_1, exact=True), "the container is not running"
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _processes_with(pid_1, exact=True):
            time.sleep(0.1)
        assert _processes_with(pid_1, exact=True) == [], "the container outlived lazyfs"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # What a killed lazyfs cannot remove: its state directory (nothing is mounted in it).
    for leftover in state["tmpdir"].iterdir():
        subprocess.run(["rm", "-rf", "--one-file-system", str(leftover)], check=True)


def _processes_with(text: str, *, exact: bool = False) -> list[int]:
    """Pids whose command line contains ``text`` (or is exactly ``text``, NULs included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                if (cmdline == text.encode()) if exact else (text.encode() in cmdline):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# ---------------------------------------------------------------------------- the init


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat_line = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(name))
    return out


@pytest.mark.parametrize("init", [False, True])
def test_the_init_is_a_fork_of_lazyfs_unless_init_is_asked(state, busybox, init, tmp_path):
    """Without --init the container's init is the zygote forked before trio started, no
    second interpreter; with --init it is exec'd, so that the reaper the container sees as
    PID 1 shows no lazyfs command line (with its -e values)."""
    out = tmp_path / "out"
    out.mkdir()
    options = ("-v", f"{out}:/out", "-e", "SECRET=hunter2", "--stop-timeout", "1")
    options += ("--init",) if init else ()
    script = "tr '\\0' ' ' </proc/1/cmdline >/out/pid1.tmp; mv /out/pid1.tmp /out/pid1; sleep 30"
    process = _start(state, busybox, "sh", "-c", script, options=options)
    try:
        deadline = time.monotonic() + 30
        while not (out / "pid1").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)
        shims = _children(process.pid)
        assert len(shims) == 1, shims
        cmdline = Path(f"/proc/{shims[0]}/cmdline").read_bytes().split(b"\0")
        assert (b"lazyfs.runtime.init" in cmdline) == init, cmdline
        pid1 = (out / "pid1").read_text()
        assert "hunter2" not in pid1, "the container sees lazyfs's command line"
        if not init:
            assert pid1.split()[:2] == ["sh", "-c"]
        process.send_signal(signal.SIGTERM)
        # sh as PID 1 ignores SIGTERM: killed after the stop timeout; under the reaper, not.
        assert process.wait(timeout=15) == (143 if init else 137)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
