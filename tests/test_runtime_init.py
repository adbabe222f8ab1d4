"""The in-container init (``python -m lazyfs.runtime.init``) and cgroups, on real kernels.

No image and no FUSE here: each test writes a busybox root filesystem to a directory, puts a
fresh overlayfs over it (upper layer on a tmpfs), hands an :class:`InitSpec` to the init
program through a pipe like ``lazyfs run`` does, and looks at what the command saw and how
the init exited. The fixture unmounts everything afterwards and checks that nothing under the
test's directory is still mounted and that no cgroup of the test is left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lazyfs.runtime import syscalls
from lazyfs.runtime.cgroups import CGROUP_ROOT, Cgroup
from lazyfs.runtime.init import DEFAULT_CAPABILITIES, InitSpec, SetupError, resolve_in_root
from tests.harness.rootfs import make_busybox_rootfs

if os.geteuid() != 0:
    pytest.fail("the runtime tests need root (namespaces, mounts, cgroups)", pytrace=False)

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def busybox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


def _mount_points_under(prefix: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(prefix) or p.startswith(f"{prefix}/")]


@pytest.fixture
def rootfs(busybox_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A writable overlayfs over the busybox tree; unmounted (and checked) afterwards."""
    scratch, root = tmp_path / "scratch", tmp_path / "rootfs"
    scratch.mkdir()
    root.mkdir()
    syscalls.mount("tmpfs", scratch, "tmpfs", 0, "size=64m")
    try:
        (scratch / "upper").mkdir()
        (scratch / "work").mkdir()
        syscalls.mount(
            "overlay",
            root,
            "overlay",
            0,
            f"lowerdir={busybox_dir},upperdir={scratch}/upper,workdir={scratch}/work",
        )
        try:
            yield root
        finally:
            syscalls.umount2(root, syscalls.MNT_DETACH)
    finally:
        syscalls.umount2(scratch, syscalls.MNT_DETACH)
    assert _mount_points_under(tmp_path) == [], "mounts left behind"


@pytest.fixture
def cgroup_name() -> Iterator[str]:
    """A unique cgroup name; the test fails if a cgroup of that name is left afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    left = [str(p) for p in CGROUP_ROOT.glob(f"*/lazyfs/{name}")]
    left += [str(p) for p in CGROUP_ROOT.glob(f"lazyfs/{name}")]
    assert left == [], "cgroups left behind"


# ------------------------------------------------------------------------------ helpers


def make_spec(rootfs: Path, *args: str, **overrides) -> InitSpec:
    settings = {
        "env": [PATH, "HOME=/root"],
        "hostname": "testbox",
        "capabilities": list(DEFAULT_CAPABILITIES),
    }
    settings.update(overrides)
    return InitSpec(rootfs=str(rootfs), args=list(args), **settings)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    status: list[dict] = field(default_factory=list)

    @property
    def error(self) -> dict | None:
        return next((m for m in self.status if "error" in m), None)


class Started:
    """A running init: its process, and its status pipe read line by line."""

    def __init__(self, spec: InitSpec, **popen) -> None:
        spec_r, spec_w = os.pipe()
        status_r, status_w = os.pipe()
        os.write(spec_w, spec.to_json().encode())
        os.close(spec_w)
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lazyfs.runtime.init", str(spec_r), str(status_w)],
                pass_fds=(spec_r, status_w),
                text=True,
                **popen,
            )
        finally:
            os.close(spec_r)
            os.close(status_w)
        self.status_r = status_r
        self.buffer = b""

    def _line(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = os.read(self.status_r, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def pid(self) -> int:
        """The container's PID 1, as the host sees it."""
        message = self._line()
        assert message is not None and "pid" in message, message
        self.status = [message]
        return message["pid"]

    def finish(self, timeout: float = 30) -> Result:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        finally:
            status = getattr(self, "status", [])
            while (message := self._line()) is not None:
                status.append(message)
            os.close(self.status_r)
        return Result(self.process.returncode, stdout or "", stderr or "", status)


def run(spec: InitSpec, timeout: float = 30, **popen) -> Result:
    result = Started(spec, **popen).finish(timeout)
    if result.code == 0:
        assert result.error is None, result
    return result


def proc_status(text: str) -> dict[str, str]:
    """``Key: value`` lines of /proc/<pid>/status, as printed by the container."""
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def host_bounding_set() -> int:
    return int(proc_status(Path("/proc/self/status").read_text())["CapBnd"], 16)


# -------------------------------------------------------------------------------- tests


def test_exit_code_and_pid_line(rootfs):
    result = run(make_spec(rootfs, "sh", "-c", "exit 7"))
    assert result.code == 7
    assert len(result.status) == 1 and result.status[0]["pid"] > 1, result.status


def test_command_is_pid_1_with_exactly_its_environment(rootfs):
    result = run(make_spec(rootfs, "cat", "/proc/1/cmdline"))
    assert result.stdout == "cat\0/proc/1/cmdline\0", result
    env = [PATH, "B=two words", "A=1", "A=2", "EMPTY="]
    result = run(make_spec(rootfs, "env", env=env))
    assert result.code == 0, result
    assert result.stdout.splitlines() == env


def test_hostname_cwd_and_limits(rootfs):
    spec = make_spec(
        rootfs,
        "sh",
        "-c",
        "hostname; pwd; ulimit -n; ulimit -Hn; cat /etc/hostname",
        cwd="/home/app",
        hostname="box-1",
        rlimits={"RLIMIT_NOFILE": [100, 200]},
    )
    result = run(spec)
    assert result.stdout.splitlines()[:4] == ["box-1", "/home/app", "100", "200"], result
    # Without a bind file the image's /etc/hostname is absent: nothing made one up.
    assert "No such file" in result.stderr
    assert os.uname().nodename != "box-1"


def test_missing_working_directory_is_created(rootfs):
    result = run(make_spec(rootfs, "pwd", cwd="/srv/new/dir"))
    assert (result.code, result.stdout) == (0, "/srv/new/dir\n"), result
    assert (rootfs / "srv/new/dir").is_dir()


def test_working_directory_that_is_a_file_fails_clearly(rootfs):
    result = run(make_spec(rootfs, "pwd", cwd="/etc/passwd"))
    assert result.code == 125
    assert result.error == {
        "error": "working directory /etc/passwd exists and is not a directory",
        "code": 125,
    }


def test_user_groups_capabilities_and_no_new_privs(rootfs):
    script = "id; grep -E '^(Cap|NoNewPrivs)' /proc/self/status"
    spec = make_spec(
        rootfs,
        "sh",
        "-c",
        script,
        uid=1000,
        gid=1000,
        additional_gids=[50, 1000],
        no_new_privileges=True,
    )
    result = run(spec)
    assert result.code == 0, result
    first, rest = result.stdout.split("\n", 1)
    assert first == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)"
    status = proc_status(rest)
    default = syscalls.capability_mask(DEFAULT_CAPABILITIES) & host_bounding_set()
    assert int(status["CapBnd"], 16) == default
    for kind in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(status[kind], 16) == 0, (kind, status)
    assert status["NoNewPrivs"] == "1"


def test_root_keeps_only_the_capabilities_asked_for(rootfs):
    script = (
        "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; "
        "touch /tmp/f; chown 1000 /tmp/f && echo chown-worked"
    )
    result = run(make_spec(rootfs, "sh", "-c", script, capabilities=["CAP_KILL", "CAP_SETUID"]))
    status = proc_status(result.stdout)
    mask = (1 << syscalls.CAPABILITIES["CAP_KILL"]) | (1 << syscalls.CAPABILITIES["CAP_SETUID"])
    for kind in ("CapBnd", "CapEff", "CapPrm"):
        assert int(status[kind], 16) == mask, (kind, status)
    assert int(status["CapInh"], 16) == 0 and status["NoNewPrivs"] == "0"
    # Without CAP_CHOWN even root cannot give a file away.
    assert "chown-worked" not in result.stdout
    assert "Operation not permitted" in result.stderr
    assert result.code == 1


def test_network_none_has_only_loopback_up(rootfs):
    script = "ls /sys/class/net; cat /sys/class/net/lo/flags; cat /proc/net/dev"
    result = run(make_spec(rootfs, "sh", "-c", script, network="none"))
    lines = result.stdout.splitlines()
    assert lines[0] == "lo", result
    assert int(lines[1], 16) & 1, "lo is not up"
    devices = [line.split(":")[0].strip() for line in lines[4:]]
    assert devices == ["lo"]


def test_host_network_is_the_hosts(rootfs):
    result = run(make_spec(rootfs, "ls", "/sys/class/net", network="host"))
    assert result.stdout.split() == sorted(os.listdir("/sys/class/net"))
    assert len(result.stdout.split()) > 1  # a host has more than lo: else this proves nothing


def test_volumes_read_write_and_read_only(rootfs, tmp_path):
    data, config = tmp_path / "data", tmp_path / "app.conf"
    data.mkdir()
    (data / "in").write_text("from host\n")
    config.write_text("key=value\n")
    script = (
        "cat /data/in /ro/in /etc/app.conf; echo written > /data/out; "
        "echo nope > /ro/out || echo ro-refused"
    )
    volumes = [
        {"source": str(data), "destination": "/data", "read_only": False},
        {"source": str(data), "destination": "/ro", "read_only": True},
        {"source": str(config), "destination": "/etc/app.conf", "read_only": True},
    ]
    result = run(make_spec(rootfs, "sh", "-c", script, volumes=volumes))
    assert result.code == 0, result
    assert result.stdout == "from host\nfrom host\nkey=value\nro-refused\n"
    assert "Read-only file system" in result.stderr
    assert (data / "out").read_text() == "written\n"
    assert not (data / "nope").exists()


def test_missing_volume_source_fails_clearly(rootfs, tmp_path):
    volumes = [{"source": str(tmp_path / "absent"), "destination": "/x", "read_only": False}]
    result = run(make_spec(rootfs, "true", volumes=volumes))
    assert result.code == 125
    assert result.error["error"] == f"volume source {tmp_path}/absent does not exist"


def test_volume_destination_symlink_stays_inside_the_rootfs(rootfs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    source = tmp_path / "vol"
    source.mkdir()
    (source / "marker").write_text("volume\n")
    # An absolute symlink in the image pointing at a host path: in the container it means
    # <rootfs><that path>, and that is where the mount must go.
    os.symlink(str(outside), rootfs / "escape")
    volumes = [{"source": str(source), "destination": "/escape/vol", "read_only": False}]
    result = run(make_spec(rootfs, "cat", "/escape/vol/marker", volumes=volumes))
    assert (result.code, result.stdout) == (0, "volume\n"), result
    assert list(outside.iterdir()) == [], "the volume was created on the host"
    assert (rootfs / str(outside).lstrip("/") / "vol").is_dir()


def test_volume_through_a_symlink_climbing_out_stays_inside(rootfs, tmp_path):
    # "../../.." at the container's / stays at / (as the kernel does there): the volume
    # goes to <rootfs>/<name>/vol, never to that path on the host.
    source = tmp_path / "vol"
    source.mkdir()
    (source / "marker").write_text("volume\n")
    name = f"lazyfs-test-{os.getpid()}"
    os.symlink("../../../../../../..", rootfs / "up")
    volumes = [{"source": str(source), "destination": f"/up/{name}/vol", "read_only": False}]
    result = run(make_spec(rootfs, "cat", f"/{name}/vol/marker", volumes=volumes))
    assert (result.code, result.stdout) == (0, "volume\n"), result
    assert not os.path.exists(f"/{name}"), "the volume was created on the host"
    assert (rootfs / name / "vol").is_dir()


def test_bind_files_and_a_symlinked_target_is_skipped(rootfs, tmp_path):
    hostname, hosts = tmp_path / "hostname", tmp_path / "hosts"
    hostname.write_text("testbox\n")
    hosts.write_text("127.0.0.1 localhost\n")
    os.symlink("/etc/passwd", rootfs / "etc/hosts")
    bind_files = {"/etc/hostname": str(hostname), "/etc/hosts": str(hosts)}
    result = run(make_spec(rootfs, "sh", "-c", "cat /etc/hostname; head -1 /etc/hosts"))
    assert "No such file" in result.stderr  # no bind files: nothing there
    result = run(
        make_spec(
            rootfs, "sh", "-c", "cat /etc/hostname; head -1 /etc/hosts", bind_files=bind_files
        )
    )
    assert result.code == 0, result
    assert result.stdout == "testbox\nroot:x:0:0:root:/root:/bin/sh\n"
    assert "/etc/hosts is a symbolic link" in result.stderr
    assert Path("/etc/passwd").read_text().startswith("root:")


def test_read_only_rootfs(rootfs, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    script = (
        "touch /file || echo root-refused; touch /tmp/file || echo tmp-refused; "
        "touch /dev/shm/file && echo shm-ok; touch /data/file && echo volume-ok"
    )
    volumes = [{"source": str(data), "destination": "/data", "read_only": False}]
    result = run(make_spec(rootfs, "sh", "-c", script, read_only=True, volumes=volumes))
    assert result.stdout.split() == ["root-refused", "tmp-refused", "shm-ok", "volume-ok"]
    assert (data / "file").exists()
    result = run(make_spec(rootfs, "sh", "-c", "touch /file && echo root-ok"))
    assert result.stdout == "root-ok\n"  # the same without read_only: the test can fail


def test_dev_proc_and_sys(rootfs):
    script = (
        "ls /dev; stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random "
        "/dev/urandom /dev/tty; readlink /dev/fd; readlink /dev/ptmx; "
        "grep -E ' /(proc|dev|dev/pts|dev/shm|dev/mqueue|sys) ' /proc/self/mountinfo; "
        "echo x > /proc/sys/kernel/hostname || echo proc-sys-refused"
    )
    result = run(make_spec(rootfs, "sh", "-c", script))
    out = result.stdout
    for name in ("core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm"):
        assert f"\n{name}\n" in f"\n{out}", name
    assert "/dev/null character special file 1:3 666" in out
    assert "/dev/tty character special file 5:0 666" in out
    assert "/proc/self/fd\npts/ptmx\n" in out
    mounts = {line.split()[4]: line for line in out.splitlines() if " - " in line}
    assert "nosuid,nodev,noexec" in mounts["/proc"]
    assert re.search(r" - devpts devpts \S*mode=620,ptmxmode=666", mounts["/dev/pts"])
    assert "tmpfs" in mounts["/dev/shm"] and "nosuid,nodev,noexec" in mounts["/dev/shm"]
    assert " - mqueue " in mounts["/dev/mqueue"]
    assert mounts["/sys"].split()[5].startswith("ro,")
    assert "proc-sys-refused" in out


@pytest.mark.parametrize("init", [False, True])
def test_missing_and_unexecutable_commands(rootfs, init):
    result = run(make_spec(rootfs, "no-such-command", init=init))
    assert result.code == 127
    assert result.error == {
        "error": "no-such-command: executable file not found in $PATH",
        "code": 127,
    }
    assert run(make_spec(rootfs, "/bin/nothing", init=init)).code == 127
    result = run(make_spec(rootfs, "/etc/passwd", init=init))
    assert result.code == 126, result
    assert result.error["error"] == "/etc/passwd: permission denied"


@pytest.mark.parametrize("init", [False, True])
def test_signals_reach_the_command(rootfs, init):
    script = 'trap "echo usr1" USR1; trap "exit 42" TERM; echo ready; while :; do sleep 0.05; done'
    started = Started(make_spec(rootfs, "sh", "-c", script, init=init))
    try:
        started.pid()
        assert started.process.stdout.readline() == "ready\n"
        started.process.send_signal(signal.SIGUSR1)
        assert started.process.stdout.readline() == "usr1\n"
        assert started.process.poll() is None  # neither the shim nor the command died
        started.process.send_signal(signal.SIGTERM)
    finally:
        result = started.finish(timeout=10)
    assert result.code == 42, result


def test_killed_command_reports_128_plus_signal(rootfs):
    result = run(make_spec(rootfs, "sh", "-c", "kill -9 $$", init=True))
    assert result.code == 137


def _zombies_in_pid_namespace(pid: int) -> int:
    namespace = os.readlink(f"/proc/{pid}/ns/pid")
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns/pid") != namespace:
                continue
            stat = (entry / "stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                count += 1
    return count


@pytest.mark.parametrize("init", [False, True])
def test_init_reaps_orphans(rootfs, init):
    # The subshell exits at once, orphaning its "sleep 0.1"; it is reparented to PID 1. The
    # command then becomes "sleep 2", which never waits for children: the orphan stays a
    # zombie unless a real init is PID 1.
    script = "(sleep 0.1 &); echo $$; exec sleep 2"
    started = Started(make_spec(rootfs, "sh", "-c", script, init=init))
    try:
        pid = started.pid()
        command_pid = started.process.stdout.readline().strip()
        time.sleep(0.8)
        zombies = _zombies_in_pid_namespace(pid)
        # The container's mounts (/proc, /dev...) are its own: the host sees only the overlay.
        assert _mount_points_under(rootfs) == [str(rootfs)]
    finally:
        started.process.kill()  # the shim; the container follows it (parent death signal)
        result = started.finish(timeout=10)
    assert result.code == -signal.SIGKILL
    assert command_pid == ("2" if init else "1")
    assert zombies == (0 if init else 1)


def test_shim_killed_takes_the_container_down(rootfs):
    started = Started(make_spec(rootfs, "sleep", "30"))
    pid = started.pid()
    started.process.kill()
    started.finish(timeout=10)
    deadline = time.monotonic() + 5
    while _alive(pid):
        assert time.monotonic() < deadline, "the container outlived its shim"
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for the host's init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_tty_is_the_controlling_terminal(rootfs):
    master, slave = pty.openpty()
    script = "cat /proc/self/stat; echo; [ -t 0 ] && [ -c /dev/console ] && echo console-ok"
    spec = make_spec(rootfs, "sh", "-c", script, tty=True, console=os.ttyname(slave))
    try:
        started = Started(spec, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        slave = -1
        output = b""
        with contextlib.suppress(OSError):  # EIO once every slave descriptor is closed
            while chunk := os.read(master, 4096):
                output += chunk
        result = started.finish(timeout=10)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert result.code == 0, (result, output)
    text = output.decode().replace("\r\n", "\n")
    fields = text.split(")")[1].split()
    session, tty_nr = int(fields[3]), int(fields[4])
    assert session == 1 and tty_nr != 0, text
    assert "console-ok" in text


def test_memory_limit_kills_with_137(rootfs, cgroup_name):
    cgroup = Cgroup.create(cgroup_name, memory=32 << 20)
    try:
        procs = cgroup.procs_files
        small = run(
            make_spec(
                rootfs, "dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=4", cgroup_procs=procs
            )
        )
        assert small.code == 0, small
        assert not cgroup.oom_killed()
        big = run(
            make_spec(
                rootfs,
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=64M",
                "count=1",
                cgroup_procs=procs,
            )
        )
        assert big.code == 137, big
        assert cgroup.oom_killed()
    finally:
        cgroup.destroy()


def test_pids_limit_stops_forks(rootfs, cgroup_name):
    script = "for i in $(seq 40); do sleep 5 & done; echo all-started"
    assert run(make_spec(rootfs, "sh", "-c", script)).stdout == "all-started\n"
    cgroup = Cgroup.create(cgroup_name, pids=20)
    try:
        result = run(make_spec(rootfs, "sh", "-c", script, cgroup_procs=cgroup.procs_files))
        assert Path(cgroup.procs_files[0]).parent.joinpath("pids.max").read_text() == "20\n"
    finally:
        cgroup.destroy()
    assert result.code != 0 and "all-started" not in result.stdout, result
    assert "can't fork" in result.stderr


def test_cgroup_files_and_destroy_kills_what_is_left(cgroup_name):
    cgroup = Cgroup.create(cgroup_name, memory=64 << 20, cpus=0.5, pids=100)
    try:
        directories = {Path(p).parent for p in cgroup.procs_files}
        assert len(directories) == len(cgroup.procs_files) == 3
        memory = cgroup.paths["memory"]
        assert (memory / "memory.limit_in_bytes").read_text() == f"{64 << 20}\n"
        if (memory / "memory.memsw.limit_in_bytes").exists():
            assert (memory / "memory.memsw.limit_in_bytes").read_text() == f"{64 << 20}\n"
        assert (cgroup.paths["cpu"] / "cpu.cfs_quota_us").read_text() == "50000\n"
        assert (cgroup.paths["cpu"] / "cpu.cfs_period_us").read_text() == "100000\n"
        sleeper = subprocess.Popen(["sleep", "30"])
        for procs in cgroup.procs_files:
            Path(procs).write_text(str(sleeper.pid))
    finally:
        cgroup.destroy()
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert not any(d.exists() for d in directories)
    cgroup.destroy()  # idempotent
    nothing = Cgroup.create(cgroup_name)
    assert nothing.procs_files == [] and not nothing.oom_killed()
    nothing.destroy()


def test_cgroup_rejects_bad_limits(cgroup_name):
    from lazyfs.runtime.cgroups import CgroupError

    with pytest.raises(CgroupError, match="must be positive"):
        Cgroup.create(cgroup_name, memory=0)
    with pytest.raises(CgroupError, match="invalid cgroup name"):
        Cgroup.create("a/b", pids=1)


def test_resolve_in_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/file").write_text("")
    os.symlink("/etc", root / "abs")
    os.symlink("../etc", root / "etc/rel")
    os.symlink("../..", root / "etc/up2")
    os.symlink("loop", root / "loop")
    r = str(root)
    assert resolve_in_root(r, "/abs/file") == (f"{r}/etc/file", [])
    assert resolve_in_root(r, "/etc/rel/new/deeper") == (f"{r}/etc", ["new", "deeper"])
    assert resolve_in_root(r, "/../../etc") == (f"{r}/etc", [])  # ".." stops at /
    assert resolve_in_root(r, "/abs", follow_last=False) == (f"{r}/abs", [])
    # ".." at the root stays there, as at / in the container.
    assert resolve_in_root(r, "/etc/up2/x") == (r, ["x"])
    with pytest.raises(SetupError, match="too many levels"):
        resolve_in_root(r, "/loop")
    with pytest.raises(SetupError, match="not a directory"):
        resolve_in_root(r, "/etc/file/x")


def test_bad_spec_is_reported(rootfs):
    spec = make_spec(rootfs, "true")
    spec.network = "bridge"
    result = run(spec)
    assert result.code == 125
    assert result.status == [
        {"error": "invalid init spec: network must be 'host' or 'none', not 'bridge'", "code": 125}
    ]


def test_syscall_errors_name_the_call_and_path(tmp_path):
    with pytest.raises(OSError) as info:
        syscalls.umount2(tmp_path)
    assert info.value.errno == errno.EINVAL
    assert info.value.strerror == f"umount2 {tmp_path}: Invalid argument"
