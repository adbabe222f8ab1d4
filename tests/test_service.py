"""``lazyfs service``: commands handed over by the ``lazyfs`` client, run by forked workers.

Every test starts its own service on a socket of its own and checks in the service's log
that the commands it expects to be served were (the client falls back to running a
command itself without a word, so a test that only looked at the output could pass with no
service at all).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs import _delegate
from tests import test_run
from tests.harness.service import LazyfsService
from tests.test_run import (
    _processes_with,
    _run_argv,
    _wait_for_line,
    interactive_shell_session,
    stop_signal_reaches_the_container,
)

# test_run's fixtures: the images, and the state checked for leftovers after each test.
state = test_run.state
busybox = test_run.busybox
busybox_chunked = test_run.busybox_chunked

LAZYFS = [sys.executable, "-m", "lazyfs"]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LazyfsService]:
    started = LazyfsService(LAZYFS, tmp_path / "service").start()
    try:
        yield started
    finally:
        code = started.stop()
        assert not started.socket.exists(), "the service left its socket behind"
        assert code == 0, started.text()


def _env(state: dict, service: LazyfsService) -> dict:
    return {**os.environ, "TMPDIR": str(state["tmpdir"]), **service.env()}


def _run(state, service, image, *args, options=(), **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        _run_argv(state, image, args, options),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(state, service),
        **kwargs,
    )


def _start(state, service, image, *args, options=()) -> subprocess.Popen:
    return test_run._start(state, image, *args, options=options, env=service.env())


def _worker_ended(service: LazyfsService, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = service.text().count("(worker ")
        if started and service.text().count("ended:") >= started:
            return
        time.sleep(0.05)
    raise AssertionError(f"a worker is still running: {service.text()}")


# ---------------------------------------------------------------------------- serving


def test_run_is_served_with_the_callers_stdio_env_and_exit_status(state, service, busybox):
    # The environment, the stdio and the status are the client's, not the service's: FOO is
    # only in the client's environment, and -e FOO takes it from there.
    env = _env(state, service) | {"FOO": "from the client"}
    process = subprocess.Popen(
        _run_argv(
            state,
            busybox,
            ("sh", "-c", 'echo "out $FOO"; echo err >&2; exit 7'),
            ("-e", "FOO"),
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 7, err
    assert out == "out from the client\n"
    assert "err\n" in err
    assert service.served_pid(process.pid), service.text()


def test_the_working_directory_of_a_relative_volume_is_the_callers(
    state, service, busybox, tmp_path
):
    data = tmp_path / "data"
    data.mkdir()
    result = _run(
        state,
        service,
        busybox,
        "sh",
        "-c",
        "echo written > /data/f",
        options=("-v", "./data:/data"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (data / "f").read_text() == "written\n"
    assert service.served() == 1, service.text()


def test_stdin_is_the_callers(state, service, busybox):
    result = _run(state, service, busybox, "cat", options=("-i",), stdin=None, input="hello\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    assert service.served() == 1


def test_errors_and_usage_are_reported_like_lazyfs_itself(state, service, busybox):
    result = _run(state, service, "127.0.0.1:1/nothing/here:v1", "true")
    assert result.returncode == 1
    assert result.stderr.startswith("lazyfs: error: "), result.stderr
    result = _run(state, service, busybox, "true", options=("--no-such-option",))
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
    assert service.served() == 2, service.text()


def test_tty_interactive_shell_through_the_service(state, service, busybox):
    argv = _run_argv(state, busybox, ("sh",), ("-it",))
    pid = interactive_shell_session(argv, _env(state, service))
    assert service.served_pid(pid), service.text()


# ---------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_to_the_client_reach_the_container(state, service, busybox, signum, code):
    start = lambda *args: _start(state, service, busybox, *args)  # noqa: E731
    process = stop_signal_reaches_the_container(start, signum, code)
    assert service.served_pid(process.pid)
    _worker_ended(service)  # the state fixture then checks mounts, TMPDIR and cgroups


def test_a_killed_client_takes_its_container_down(state, service, busybox):
    marker = f"lazyfs-service-orphan-{uuid.uuid4().hex[:8]}"
    script = f"echo ready; sleep 600; echo {marker}"
    pid_1 = f"sh\0-c\0{script}\0"
    process = _start(state, service, busybox, "sh", "-c", script)
    try:
        _wait_for_line(process, "ready")
        assert _processes_with(pid_1, exact=True), "the container is not running"
        process.kill()
        process.wait(timeout=10)
        _worker_ended(service)
        assert _processes_with(pid_1, exact=True) == [], "the container outlived its client"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert f"pid {process.pid} went away: SIGHUP" in service.text()


def test_a_killed_service_takes_its_commands_down(state, busybox, tmp_path):
    # (its own service: this one is killed, and leaves its socket file behind)
    service = LazyfsService(LAZYFS, tmp_path / "killed").start()
    script = f"echo ready; sleep 600; echo lazyfs-{uuid.uuid4().hex[:8]}"
    pid_1 = f"sh\0-c\0{script}\0"
    process = _start(state, service, busybox, "sh", "-c", script, options=("--stop-timeout", "1"))
    try:
        _wait_for_line(process, "ready")
        assert service.served_pid(process.pid)
        service.proc.kill()
        service.proc.wait()
        assert process.wait(timeout=15) == 125
        # The worker got SIGHUP (PR_SET_PDEATHSIG) and stopped its container (sh, PID 1,
        # ignores it: killed after --stop-timeout), then cleaned up (the state fixture).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            _processes_with(pid_1, exact=True) or list(state["tmpdir"].iterdir())
        ):
            time.sleep(0.1)
        assert _processes_with(pid_1, exact=True) == [], "the container outlived the service"
        # (read only now: the container and the worker held the client's stderr too)
        assert "the lazyfs service ended before the command did" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        _kill_leftovers(pid_1, service)


def _kill_leftovers(pid_1: str, service: LazyfsService) -> None:
    """After a failure: SIGHUP to workers of ``service`` still running (they clean up),
    then SIGKILL to what is left of the container."""
    for pid in _processes_with(f"--socket\0{service.socket}\0"):
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _processes_with(pid_1, exact=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in _processes_with(pid_1, exact=True):
        os.kill(pid, signal.SIGKILL)


def test_stopping_the_service_lets_running_commands_finish(state, service, busybox):
    process = _start(state, service, busybox, "sh", "-c", "echo ready; sleep 1; echo done")
    try:
        _wait_for_line(process, "ready")
        service.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while service.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not service.socket.exists(), "the socket is still there"
        # A new command now runs in its caller.
        result = _run(state, service, busybox, "echo", "alone")
        assert (result.returncode, result.stdout) == (0, "alone\n"), result.stderr
        out, err = process.communicate(timeout=30)
        assert (process.returncode, out) == (0, "done\n"), err
        assert service.proc.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert service.served() == 1, service.text()


# ---------------------------------------------------------------------------- mounts


def test_mount_stats_and_umount_through_the_service(service, busybox_chunked, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    env = {**os.environ, **service.env()}

    def lazyfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*LAZYFS, *args], capture_output=True, text=True, timeout=60, env=env)

    cache = str(tmp_path / "cache")
    result = lazyfs("mount", "--daemon", "--cache-dir", cache, busybox_chunked, str(mountpoint))
    try:
        assert result.returncode == 0, result.stderr
        assert (mountpoint / "etc" / "motd").read_text() == "welcome to the image\n"
        stats = lazyfs("stats", "--json", str(mountpoint))
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["image"] == busybox_chunked
    finally:
        result = lazyfs("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    assert os.listdir(mountpoint) == []
    assert service.served() == 3, service.text()


# ---------------------------------------------------------------------------- who is served


def test_a_caller_in_another_mount_namespace_runs_its_command_itself(state, service, busybox):
    argv = ["unshare", "--mount", "--propagation", "private", "--"]
    argv += _run_argv(state, busybox, ("echo", "hello"), ())
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env=_env(state, service)
    )
    assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
    assert "runs its command itself: another mnt namespace" in service.text()
    assert service.served() == 0


def test_a_caller_of_another_user_is_declined():
    # The socket is 0600 in a 0700 directory; opened up here, the service still checks the
    # caller's uid (SO_PEERCRED) before it starts anything. (In /run: pytest's directories,
    # and /tmp on some machines, are closed to other users.)
    directory = Path(tempfile.mkdtemp(prefix="lazyfs-test-service-", dir="/run"))
    service = LazyfsService(LAZYFS, directory).start()
    try:
        _declined_for_nobody(service)
    finally:
        assert service.stop() == 0, service.text()
        shutil.rmtree(directory)


def _declined_for_nobody(service: LazyfsService) -> None:
    os.chmod(service.socket.parent, 0o755)
    os.chmod(service.socket, 0o666)
    script = textwrap.dedent(
        f"""
        import json, os, socket
        os.setgid(65534); os.setuid(65534)  # (the modules first: Python's own may be closed)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect({str(service.socket)!r})
        request = {{"argv": ["lazyfs", "stats", "/"], "env": {{}}, "cwd": "/", "umask": 18}}
        socket.send_fds(s, [json.dumps(request).encode()], [0, 1, 2])
        print(s.recv(65536).decode())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"local the service serves uid {os.geteuid()} only\n"
    assert service.served() == 0


def test_malformed_requests_are_declined_and_the_service_goes_on(service, state, busybox):
    for payload, fds in [
        (b"not json", [0, 1, 2]),
        (b'{"argv": "lazyfs run"}', [0, 1, 2]),
        (
            json.dumps(
                {"argv": ["lazyfs", "convert", "a", "b"], "env": {}, "cwd": "/", "umask": 18}
            ).encode(),
            [0, 1, 2],
        ),
        (
            json.dumps(
                {"argv": ["lazyfs", "stats", "/"], "env": {}, "cwd": "/", "umask": 18}
            ).encode(),
            [0],
        ),
    ]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(service.socket))
        socket.send_fds(s, [payload], fds)
        answer = s.recv(65536)
        s.close()
        assert answer.startswith(b"local "), answer
    # A client that connects and goes away without a word.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(str(service.socket))
    s.close()
    result = _run(state, service, busybox, "echo", "still served")
    assert (result.returncode, result.stdout) == (0, "still served\n"), result.stderr
    assert service.served() == 1, service.text()


def test_a_worker_that_cannot_take_the_callers_place_says_so_in_one_line(service):
    # A working directory gone between the request and the fork: one line on the caller's
    # stderr and status 125, not a traceback (sent by hand: the client checks its cwd).
    request = _delegate.encode_request(
        ["lazyfs", "stats", "/"], dict(os.environ), "/nonexistent-lazyfs-cwd", 0o022
    )
    err_r, err_w = os.pipe()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(str(service.socket))
        socket.send_fds(s, [request], [0, 1, err_w])
        os.close(err_w)
        assert s.recv(65536) == b"accepted"
        assert s.recv(65536) == b"exit 125"
    finally:
        s.close()
    with os.fdopen(err_r) as err:
        text = err.read()
    assert text == (
        "lazyfs: error: cannot take the caller's place: No such file or directory: "
        "/nonexistent-lazyfs-cwd\n"
    )


@pytest.mark.parametrize("accepted", [True, False])
def test_a_signal_before_the_answer_reaches_the_worker_or_this_process(accepted):
    # The client waits for "accepted" with its handlers in place: a signal then is sent on
    # (the service reads it once the worker exists); if the service declines instead, the
    # client raises it at itself, as it would have got it running the command itself.
    script = textwrap.dedent(
        f"""
        import os, signal, socket, threading, time
        from lazyfs import _delegate
        client, service = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        def serve():
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGUSR1)  # while the client waits for the answer
            print("service got", service.recv(100), flush=True)
            service.send(b"accepted" if {accepted} else b"local busy")
            if {accepted}:
                service.send(b"exit 7")
        threading.Thread(target=serve).start()
        here = []
        signal.signal(signal.SIGUSR1, lambda *_: here.append("SIGUSR1"))
        print("status", _delegate._wait(client), "here", here, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert f"service got b'signal {int(signal.SIGUSR1)}'" in result.stdout
    if accepted:
        assert "status 7 here []" in result.stdout
    else:
        assert "status None here ['SIGUSR1']" in result.stdout


def test_the_client_runs_the_command_itself_without_a_service(tmp_path):
    env = {**os.environ, "LAZYFS_SERVICE": str(tmp_path / "nobody-listens.sock")}
    result = subprocess.run(
        [*LAZYFS, "stats", str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr == f"lazyfs: error: no lazyfs daemon serves {tmp_path}\n"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"A": "plain", "B": 'quotes " and \\ backslash', "C": "new\nline\ttab\x01"},
        {
            "UNICODE": "héllo wörld ✓ 🙂",
            "UNDECODABLE": b"\xff\xfe".decode("utf-8", "surrogateescape"),
        },
    ],
)
def test_the_request_is_the_json_of_json_dumps(env):
    argv = ["lazyfs", "run", "-e", 'X="y"', "image", "sh", "-c", "echo 'ü'"]
    data = _delegate.encode_request(argv, env, "/some dir/ü", 0o027)
    expected = {"argv": argv, "env": env, "cwd": "/some dir/ü", "umask": 0o027}
    assert json.loads(data) == expected
    assert data == json.dumps(expected, separators=(",", ":")).encode()


def test_the_socket_path_and_the_off_switch(monkeypatch):
    monkeypatch.setenv("LAZYFS_SERVICE", "/some/where.sock")
    assert _delegate.service_socket() == "/some/where.sock"
    for off in ("", "off", "0", "no", "OFF"):
        monkeypatch.setenv("LAZYFS_SERVICE", off)
        assert _delegate.service_socket() is None
    monkeypatch.delenv("LAZYFS_SERVICE")
    assert _delegate.service_socket() == os.path.join(_delegate.runtime_dir(), "service.sock")
    assert _delegate.delegate(["lazyfs", "convert", "a", "b"], "convert") is None
