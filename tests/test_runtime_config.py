"""Tests for lazyfs.runtime.config: Docker's run semantics, users resolved inside an image's
root filesystem, option parsers, and OCI runtime specs run for real by runc and crun on a
busybox root filesystem."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.errors import LazyfsError
from lazyfs.oci.manifest import ImageConfig
from lazyfs.runtime.config import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MAX_SYMLINKS,
    MAX_USER_DB_SIZE,
    ProcessSpec,
    ResolvedUser,
    RunConfigError,
    RunOptions,
    Volume,
    apply_user_env,
    parse_cpus,
    parse_memory,
    parse_volume,
    process_spec,
    read_env_file,
    resolve_in_root,
    resolve_user,
    runtime_spec,
)
from tests.harness.runtimes import HIDE_UNIFIED_CGROUP

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "id", "cat", "hostname", "ls", "touch")
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    "app:x:1000:1000:App:/home/app:/bin/sh\n"
    "nohome:x:1001:1001::\n"
)
GROUP = "root:x:0:root\ndaemon:x:1:\napp:x:1000:\nwheel:x:10:root,app\nextra:x:2000:app\n"


def image_config(**run: object) -> ImageConfig:
    """An image config whose ``config`` object holds *run* (Docker's capitalised keys)."""
    return ImageConfig(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    )


def write_user_db(root: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    if passwd is not None:
        (etc / "passwd").write_text(passwd)
    if group is not None:
        (etc / "group").write_text(group)
    return root


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "options", "expected"),
    [
        ({"Entrypoint": ["/ep", "-x"], "Cmd": ["a", "b"]}, RunOptions(), ["/ep", "-x", "a", "b"]),
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, RunOptions(command=["c"]), ["/ep", "c"]),
        ({"Cmd": ["/bin/sh", "-c", "x"]}, RunOptions(), ["/bin/sh", "-c", "x"]),
        ({"Cmd": ["/bin/sh"]}, RunOptions(command=["/bin/ls", "-l"]), ["/bin/ls", "-l"]),
        # --entrypoint replaces the image's Entrypoint and drops its Cmd ...
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, RunOptions(entrypoint="/other"), ["/other"]),
        # ... is one executable, never split on spaces ...
        ({"Cmd": ["a"]}, RunOptions(entrypoint="/bin/my tool"), ["/bin/my tool"]),
        # ... and takes the command line after it.
        ({"Entrypoint": ["/ep"]}, RunOptions(entrypoint="/o", command=["x"]), ["/o", "x"]),
        # --entrypoint "" clears the Entrypoint: the command line alone runs.
        ({"Entrypoint": ["/ep"], "Cmd": ["a"]}, RunOptions(entrypoint="", command=["/c"]), ["/c"]),
        # A Cmd given as a single string (Docker accepts one) is one argument.
        ({"Cmd": "/bin/true"}, RunOptions(), ["/bin/true"]),
    ],
)
def test_arguments_follow_docker(image: dict, options: RunOptions, expected: list[str]) -> None:
    assert process_spec(image_config(**image), options, {}).args == expected


@pytest.mark.parametrize(
    ("image", "options"),
    [
        ({}, RunOptions()),
        ({"Entrypoint": None, "Cmd": []}, RunOptions()),
        # --entrypoint "" drops the image's Cmd too, leaving nothing.
        ({"Entrypoint": ["/ep"], "Cmd": ["/bin/sh"]}, RunOptions(entrypoint="")),
        ({"Entrypoint": [""]}, RunOptions()),
    ],
)
def test_no_command_is_an_error(image: dict, options: RunOptions) -> None:
    with pytest.raises(LazyfsError) as info:
        process_spec(image_config(**image), options, {})
    assert str(info.value) == "no command: the image has no Entrypoint or Cmd and none was given"


# -- environment --------------------------------------------------------------------------


def test_environment_defaults_and_order() -> None:
    config = image_config(Cmd=["x"], Env=["A=image", "B=image", "PATH=/image/bin"])
    options = RunOptions(env=["B=option", "C=option", "A=again"], tty=True)
    spec = process_spec(config, options, {}, hostname="box")
    # PATH keeps its first place with the image's value; later values replace in place.
    assert spec.env == [
        "PATH=/image/bin",
        "HOSTNAME=box",
        "TERM=xterm",
        "A=again",
        "B=option",
        "C=option",
    ]


def test_environment_without_tty_hostname_or_path() -> None:
    spec = process_spec(image_config(Cmd=["x"]), RunOptions(), {})
    assert spec.env == [f"PATH={DEFAULT_PATH}"]


def test_hostname_from_options_and_overrides() -> None:
    config = image_config(Cmd=["x"], Env=["TERM=vt100"])
    spec = process_spec(config, RunOptions(hostname="opt", tty=True), {})
    assert spec.env == [f"PATH={DEFAULT_PATH}", "HOSTNAME=opt", "TERM=vt100"]
    spec = process_spec(config, RunOptions(hostname="opt", env=["HOSTNAME=mine"]), {})
    assert "HOSTNAME=mine" in spec.env and "HOSTNAME=opt" not in spec.env


def test_bare_env_names_come_from_the_host_or_unset() -> None:
    config = image_config(Cmd=["x"], Env=["KEEP=1", "GONE=image", "EMPTY=x"])
    host = {"FROM_HOST": "h=v", "EMPTY": ""}
    options = RunOptions(env=["FROM_HOST", "GONE", "EMPTY", "NOWHERE", "VAL=a=b"])
    spec = process_spec(config, options, host)
    assert spec.env == [f"PATH={DEFAULT_PATH}", "KEEP=1", "EMPTY=", "FROM_HOST=h=v", "VAL=a=b"]


@pytest.mark.parametrize("text", ["=value", "="])
def test_env_option_without_name_is_an_error(text: str) -> None:
    with pytest.raises(RunConfigError, match="the name is empty"):
        process_spec(image_config(Cmd=["x"]), RunOptions(env=[text]), {})


def test_env_with_nul_is_an_error() -> None:
    with pytest.raises(RunConfigError, match="NUL"):
        process_spec(image_config(Cmd=["x"]), RunOptions(env=["A=a\0b"]), {})


def test_env_file_format(tmp_path: Path) -> None:
    env_file = tmp_path / "vars.env"
    env_file.write_bytes(
        b"\xef\xbb\xbfFIRST=1\r\n"
        b"# a comment\n"
        b"\n"
        b"   \t\n"
        b"  INDENTED=  value with spaces  \n"
        b'QUOTED="not unquoted"\n'
        b"HOSTVAR\n"
        b"MISSING\n"
        b"EQ=a=b\n"
        b"EMPTY=\n"
        b"   # indented comment\n"
        b"UNICODE=\xc3\xa9t\xc3\xa9"
    )
    assert read_env_file(env_file, {"HOSTVAR": "from host"}) == [
        "FIRST=1",
        "INDENTED=  value with spaces  ",
        'QUOTED="not unquoted"',
        "HOSTVAR=from host",
        "MISSING",
        "EQ=a=b",
        "EMPTY=",
        "UNICODE=été",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"OK=1\nBAD NAME=1\n", r":2: variable name 'BAD NAME' contains whitespace"),
        (b"OK=1\n\n=value\n", r":3: no variable name before '='"),
        (b"A\tB\n", r":1: variable name 'A\\tB' contains whitespace"),
        (b"GOOD=1\nBAD=\xff\n", r":2: not valid UTF-8"),
    ],
)
def test_env_file_errors_name_file_and_line(tmp_path: Path, content: bytes, message: str) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(content)
    with pytest.raises(RunConfigError, match=f"^{env_file}{message}$"):
        read_env_file(env_file, {})


def test_env_files_then_options(tmp_path: Path) -> None:
    first, second = tmp_path / "1.env", tmp_path / "2.env"
    first.write_text("A=file1\nB=file1\nIMG\n")
    second.write_text("B=file2\nC=file2\n")
    config = image_config(Cmd=["x"], Env=["IMG=image", "A=image"])
    options = RunOptions(env_files=[first, second], env=["C=option"])
    spec = process_spec(config, options, {})
    # The env file's bare IMG (not set on the host) unsets the image's IMG.
    assert spec.env == [f"PATH={DEFAULT_PATH}", "A=file1", "B=file2", "C=option"]


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    options = RunOptions(env_files=[tmp_path / "nope.env"])
    with pytest.raises(RunConfigError, match=r"cannot read env file .*nope\.env"):
        process_spec(image_config(Cmd=["x"]), options, {})


# -- working directory and user -----------------------------------------------------------


@pytest.mark.parametrize(
    ("image_dir", "option", "expected"),
    [
        (None, None, "/"),
        ("", None, "/"),
        ("/srv/app/", None, "/srv/app"),
        ("srv/app", None, "/srv/app"),
        ("./a/../b", None, "/b"),
        ("/srv", "/work//dir/./x/..", "/work/dir"),
        ("/srv", "", "/srv"),
        ("/srv", "//x", "/x"),
    ],
)
def test_working_directory(image_dir: str | None, option: str | None, expected: str) -> None:
    config = image_config(Cmd=["x"], WorkingDir=image_dir)
    assert process_spec(config, RunOptions(workdir=option), {}).cwd == expected


def test_relative_workdir_option_is_an_error() -> None:
    with pytest.raises(RunConfigError, match="'rel/dir' is invalid: it must be an absolute"):
        process_spec(image_config(Cmd=["x"]), RunOptions(workdir="rel/dir"), {})


@pytest.mark.parametrize(
    ("image_user", "option", "expected"),
    [
        (None, None, ""),
        ("app", None, "app"),
        ("app", "root", "root"),
        ("app", "0:0", "0:0"),
        ("app", "", "app"),  # Docker: an empty --user is no --user
        (None, "1000:2000", "1000:2000"),
    ],
)
def test_user_text(image_user: str | None, option: str | None, expected: str) -> None:
    config = image_config(Cmd=["x"], User=image_user)
    assert process_spec(config, RunOptions(user=option), {}).user == expected


# -- resolving paths inside the root --------------------------------------------------------


def test_resolve_in_root_keeps_links_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real" / "dir").mkdir(parents=True)
    (root / "etc" / "abs").symlink_to("/etc/shadow")
    (root / "etc" / "up").symlink_to("../../../../../etc/passwd")
    (root / "linkdir").symlink_to("/real/dir")
    (root / "reldir").symlink_to("real/dir")
    (root / "real" / "dir" / "back").symlink_to("../../etc")

    assert resolve_in_root(root, "/etc/abs") == root / "etc" / "shadow"
    assert resolve_in_root(root, "etc/up") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/../../../etc/passwd") == root / "etc" / "passwd"
    assert resolve_in_root(root, "/linkdir/file") == root / "real" / "dir" / "file"
    assert resolve_in_root(root, "/reldir/../x") == root / "real" / "x"
    assert resolve_in_root(root, "/linkdir/back/abs") == root / "etc" / "shadow"
    assert resolve_in_root(root, "/missing/a/../b") == root / "missing" / "b"
    assert resolve_in_root(root, "/") == root
    assert resolve_in_root(root, "") == root


def test_resolve_in_root_through_a_file_component(tmp_path: Path) -> None:
    # As the kernel: a component under a regular file is ENOTDIR, even when ".." follows.
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunConfigError, match="not a directory"):
        resolve_in_root(tmp_path, "/file/../other")


def test_resolve_in_root_limits_symlink_hops(tmp_path: Path) -> None:
    # A chain of exactly MAX_SYMLINKS links resolves; one more is a loop.
    for i in range(MAX_SYMLINKS + 1):
        (tmp_path / f"l{i}").symlink_to(f"l{i + 1}")
    (tmp_path / f"l{MAX_SYMLINKS + 1}").write_text("end")
    assert resolve_in_root(tmp_path, "/l1") == tmp_path / f"l{MAX_SYMLINKS + 1}"
    with pytest.raises(RunConfigError, match="too many levels of symbolic links"):
        resolve_in_root(tmp_path, "/l0")
    (tmp_path / "self").symlink_to("/self")
    with pytest.raises(RunConfigError, match="too many levels of symbolic links"):
        resolve_in_root(tmp_path, "/self/x")


# -- users ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # Empty: uid 0 with its passwd entry's gid, home and supplementary groups.
        ("", ResolvedUser(0, 0, [0, 10], "/root", "root")),
        ("root", ResolvedUser(0, 0, [0, 10], "/root", "root")),
        ("app", ResolvedUser(1000, 1000, [10, 2000], "/home/app", "app")),
        ("1000", ResolvedUser(1000, 1000, [10, 2000], "/home/app", "app")),
        # An explicit group replaces the gid and gives no supplementary groups.
        ("app:extra", ResolvedUser(1000, 2000, [], "/home/app", "app")),
        ("app:5", ResolvedUser(1000, 5, [], "/home/app", "app")),
        ("1000:wheel", ResolvedUser(1000, 10, [], "/home/app", "app")),
        (":daemon", ResolvedUser(0, 1, [], "/root", "root")),
        # Numbers need no entry.
        ("4242", ResolvedUser(4242, 0, [], "/", None)),
        ("4242:4343", ResolvedUser(4242, 4343, [], "/", None)),
        ("4242:extra", ResolvedUser(4242, 2000, [], "/", None)),
        # An entry with an empty home gets "/"; no group lists it.
        ("nohome", ResolvedUser(1001, 1001, [], "/", "nohome")),
        ("daemon", ResolvedUser(1, 1, [], "/usr/sbin", "daemon")),
    ],
)
def test_resolve_user(tmp_path: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(spec, write_user_db(tmp_path)) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("app2", "unable to find user app2: no matching entries in passwd file"),
        ("app:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("4242:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("2147483648", "out of range"),
        ("0:-1", "out of range"),
        ("a:b:c", "invalid user 'a:b:c'"),
    ],
)
def test_resolve_user_errors(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(RunConfigError, match=message):
        resolve_user(spec, write_user_db(tmp_path))


def test_resolve_user_without_files(tmp_path: Path) -> None:
    assert resolve_user("", tmp_path) == ResolvedUser(0, 0, [], "/", None)
    assert resolve_user("12:34", tmp_path) == ResolvedUser(12, 34, [], "/", None)
    with pytest.raises(RunConfigError, match="unable to find user app: no matching entries"):
        resolve_user("app", tmp_path)
    write_user_db(tmp_path, group=None)
    assert resolve_user("app", tmp_path) == ResolvedUser(1000, 1000, [], "/home/app", "app")
    with pytest.raises(RunConfigError, match="unable to find group extra"):
        resolve_user("app:extra", tmp_path)


def test_resolve_user_skips_malformed_lines(tmp_path: Path) -> None:
    passwd = (
        "broken\n"
        "app:x:notanumber:1000:::\n"
        "app:x:1000\n"
        "+::::::\n"
        "# app:x:7:7::/comment:\n"
        "\n"
        "  app:x:1234:1000::/home/real:/bin/sh  \n"
        "app:x:9999:9999::/second:\n"
    )
    group = "bad\nextra:x:x:app\nextra:x:3000:app\nother:x:3001: app , b\n:x:5:app\n"
    write_user_db(tmp_path, passwd, group)
    # The first well-formed entry wins.
    assert resolve_user("app", tmp_path) == ResolvedUser(
        1234, 1000, [3000, 3001], "/home/real", "app"
    )


def test_resolve_user_reads_inside_the_root(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    # An absolute link to a host file reads the root's copy of that path.
    (etc / "shadow").write_text("app:x:1234:1234::/home/app:/bin/sh\n")
    (etc / "passwd").symlink_to("/etc/shadow")
    # A relative link climbing out of the root stays in it.
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "group").write_text("team:x:77:app\n")
    (etc / "group").symlink_to("../../../../../../../usr/lib/group")
    assert resolve_user("app", tmp_path) == ResolvedUser(1234, 1234, [77], "/home/app", "app")


def test_resolve_user_refuses_large_and_special_files(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    with open(etc / "passwd", "wb") as file:
        file.write(b"root:x:0:0::/root:/bin/sh\n")
        file.truncate(MAX_USER_DB_SIZE)
    assert resolve_user("root", tmp_path).home == "/root"
    with open(etc / "passwd", "ab") as file:
        file.write(b"\n")
    with pytest.raises(RunConfigError, match="/etc/passwd in the image is larger than 4 MiB"):
        resolve_user("root", tmp_path)
    (etc / "passwd").unlink()
    os.mkfifo(etc / "passwd")  # opening it for reading must not wait for a writer
    with pytest.raises(RunConfigError, match="/etc/passwd in the image: not a regular file"):
        resolve_user("root", tmp_path)
    (etc / "passwd").unlink()
    (etc / "passwd").mkdir()
    with pytest.raises(RunConfigError, match="not a regular file"):
        resolve_user("0", tmp_path)


def test_apply_user_env() -> None:
    user = ResolvedUser(1000, 1000, [], "/home/app", "app")
    env = ["PATH=/bin", "HOMEDIR=x"]
    assert apply_user_env(env, user) == ["PATH=/bin", "HOMEDIR=x", "HOME=/home/app"]
    assert env == ["PATH=/bin", "HOMEDIR=x"]
    assert apply_user_env(["HOME=/mine", "A=1"], user) == ["HOME=/mine", "A=1"]


# -- option values -------------------------------------------------------------------------


def test_parse_volume(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert parse_volume(f"{tmp_path}/data:/mnt/data") == Volume(tmp_path / "data", "/mnt/data")
    assert parse_volume(f"{tmp_path}//data/:/mnt//x/../data/:ro") == Volume(
        tmp_path / "data", "/mnt/data", read_only=True
    )
    assert parse_volume("./data:/d:rw,z", cwd=tmp_path) == Volume(tmp_path / "data", "/d")
    assert parse_volume("../data:/d:Z,ro", cwd=tmp_path / "data") == Volume(
        tmp_path / "data", "/d", read_only=True
    )
    assert parse_volume(".:/d", cwd=tmp_path) == Volume(tmp_path, "/d")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/d", "anonymous volumes are not supported"),
        ("myvolume:/d", "named volumes are not supported"),
        (":/d", "the host path is empty"),
        ("{tmp}:d", "the container path must be absolute"),
        ("{tmp}:", "the container path must be absolute"),
        ("{tmp}:/", "cannot mount over the container's /"),
        ("{tmp}:/a/..", "cannot mount over the container's /"),
        ("{tmp}:/d:rprivate", "unsupported option 'rprivate'"),
        ("{tmp}:/d:", "unsupported option ''"),
        ("{tmp}:/d:ro,rw", "ro and rw contradict each other"),
        ("{tmp}:/d:ro:x", "expected HOST_PATH:CONTAINER_PATH"),
        ("{tmp}/absent:/d", "absent does not exist"),
        ("./absent:/d", "absent does not exist"),
    ],
)
def test_parse_volume_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RunConfigError, match=message):
        parse_volume(text.format(tmp=tmp_path), cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512m", 512 << 20),
        ("512M", 512 << 20),
        ("1g", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("2gb", 2 << 30),
        ("6144k", 6 << 20),
        ("1t", 1 << 40),
        ("6291456", 6 << 20),
        ("6291456b", 6 << 20),
        ("10 m", 10 << 20),
        ("6.0000001m", 6 << 20),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "m", "-1g", "1x", "1.g", "1,5g", "1e9", "one", "1 g b"])
def test_parse_memory_rejects_garbage(text: str) -> None:
    with pytest.raises(RunConfigError, match="expected a size"):
        parse_memory(text)


@pytest.mark.parametrize("text", ["0", "100b", "5m", "6291455", "1k"])
def test_parse_memory_minimum(text: str) -> None:
    with pytest.raises(RunConfigError, match="the minimum is 6 MiB"):
        parse_memory(text)


def test_parse_cpus() -> None:
    available = len(os.sched_getaffinity(0))
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus("1") == 1.0
    assert parse_cpus(".25") == 0.25
    assert parse_cpus("0.01") == 0.01
    assert parse_cpus(str(available)) == float(available)
    for text in ("0", "0.009", f"{available}.5", str(available + 1)):
        with pytest.raises(RunConfigError, match=f"from 0.01 to {available}"):
            parse_cpus(text)
    for text in ("", "abc", "nan", "inf", "-1", "1/2", "1e0"):
        with pytest.raises(RunConfigError, match="expected a number"):
            parse_cpus(text)


# -- the runtime spec: its shape -------------------------------------------------------------


def _spec(options: RunOptions, user: ResolvedUser | None = None, **kwargs: object) -> dict:
    process = ProcessSpec(args=["/bin/true"], env=["PATH=/bin"], cwd="/", user="")
    return runtime_spec(
        process, user or ResolvedUser(0, 0), options, hostname="box", volumes=[], **kwargs
    )


def test_runtime_spec_root_defaults() -> None:
    spec = _spec(RunOptions(), cgroups_path="/lazyfs/x")
    json.dumps(spec)
    assert spec["ociVersion"] == "1.0.2"
    process = spec["process"]
    assert process["terminal"] is False
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["args"] == ["/bin/true"] and process["env"] == ["PATH=/bin"]
    caps = process["capabilities"]
    for kind in ("bounding", "effective", "permitted"):
        assert caps[kind] == list(DEFAULT_CAPABILITIES)
    assert caps["inheritable"] == [] and caps["ambient"] == []
    assert process["noNewPrivileges"] is True
    # Docker's 1048576, unless this process may not have that many (e.g. in a sandbox).
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576)
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["hostname"] == "box"
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    linux = spec["linux"]
    # network == "host" (the default): the host's network namespace.
    assert [ns["type"] for ns in linux["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert linux["cgroupsPath"] == "/lazyfs/x"
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in linux["resources"][
        "devices"
    ]
    assert set(linux["resources"]) == {"devices"}
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]


def test_runtime_spec_non_root_and_options() -> None:
    user = ResolvedUser(1000, 1000, [10, 2000], "/home/app", "app")
    options = RunOptions(
        tty=True,
        read_only=True,
        network="none",
        memory=64 << 20,
        cpus=0.5,
        pids_limit=50,
        no_new_privileges=False,
    )
    spec = _spec(options, user, rootfs="/abs/rootfs")
    process = spec["process"]
    assert process["terminal"] is True
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 2000]}
    caps = process["capabilities"]
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert caps["effective"] == [] and caps["permitted"] == []
    assert process["noNewPrivileges"] is False
    assert spec["root"] == {"path": "/abs/rootfs", "readonly": True}
    linux = spec["linux"]
    assert {"type": "network"} in linux["namespaces"]
    assert "cgroupsPath" not in linux
    resources = linux["resources"]
    assert resources["memory"] == {"limit": 64 << 20}
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000}
    assert resources["pids"] == {"limit": 50}


def test_runtime_spec_volumes(tmp_path: Path) -> None:
    volumes = [
        Volume(tmp_path, "/data/inner", read_only=True),
        Volume(tmp_path, "/data"),
        Volume(tmp_path, "/dev/shm"),
    ]
    process = ProcessSpec(["/x"], [], "/", "")
    spec = runtime_spec(process, ResolvedUser(0, 0), RunOptions(), hostname="h", volumes=volumes)
    mounts = spec["mounts"]
    destinations = [m["destination"] for m in mounts]
    # The volume at /dev/shm replaces the standard one; parents mount before children.
    assert destinations.count("/dev/shm") == 1
    assert destinations[-3:] == ["/data", "/data/inner", "/dev/shm"]
    assert mounts[-1] == {
        "destination": "/dev/shm",
        "type": "bind",
        "source": str(tmp_path),
        "options": ["rbind", "rprivate", "rw"],
    }
    assert mounts[-2]["options"] == ["rbind", "rprivate", "ro"]


def test_runtime_spec_parses_option_volumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = RunOptions(volumes=["./:/here:ro"])
    process = ProcessSpec(["/x"], [], "/", "")
    spec = runtime_spec(process, ResolvedUser(0, 0), options, hostname="h")
    assert spec["mounts"][-1]["source"] == str(tmp_path)
    assert spec["mounts"][-1]["options"][-1] == "ro"


@pytest.mark.parametrize(
    ("options", "volumes", "message"),
    [
        (RunOptions(network="bridge"), [], "network 'bridge' is not supported"),
        (RunOptions(memory=1024), [], "minimum of 6 MiB"),
        (RunOptions(cpus=0.0), [], "must be a positive number"),
        (RunOptions(cpus=float("nan")), [], "must be a positive number"),
        (RunOptions(), [Volume(Path("/"), "/a"), Volume(Path("/tmp"), "/a")], "duplicate"),
    ],
)
def test_runtime_spec_errors(options: RunOptions, volumes: list[Volume], message: str) -> None:
    process = ProcessSpec(["/x"], [], "/", "")
    with pytest.raises(RunConfigError, match=message):
        runtime_spec(process, ResolvedUser(0, 0), options, hostname="h", volumes=volumes)


# -- the runtime spec, run for real --------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """How to run and delete a container with one OCI runtime, from the test's process."""

    name: str
    run_args: tuple[str, ...]
    delete_args: tuple[str, ...]
    state_dir: Path
    wrapper: tuple[str, ...] = ()

    def run(self, bundle: Path, cid: str) -> subprocess.CompletedProcess[str]:
        command = [*self.wrapper, self.name, *self.run_args, "--bundle", str(bundle), cid]
        return subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )

    def delete(self, cid: str) -> None:
        subprocess.run(
            [*self.wrapper, self.name, *self.delete_args, cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )


RUNTIMES = {
    "runc": Runtime("runc", ("run",), ("delete", "-f"), Path("/run/runc")),
    "crun": Runtime("crun", ("run",), ("delete", "-f"), Path("/run/crun"), HIDE_UNIFIED_CGROUP),
    "runsc": Runtime(
        "runsc",
        ("--rootless=false", "--network=none", "run"),
        ("delete", "-force"),
        Path("/var/run/runsc"),
    ),
}


def _require(tool: str | Path) -> None:
    if shutil.which(str(tool)) is None:
        pytest.fail(f"{tool} is not installed: these tests run containers with it", pytrace=False)


def _cgroups_named(cid: str) -> list[str]:
    """Directories named *cid* under /sys/fs/cgroup (a container's cgroups)."""
    found = []
    for top, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(top, d) for d in dirs if d == cid]
    return found


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox root filesystem with the PASSWD/GROUP user databases."""
    _require(BUSYBOX)
    root = tmp_path / "bundle" / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "tmp").mkdir(mode=0o1777)
    return write_user_db(root)


@pytest.fixture
def container_id() -> Iterator[str]:
    """A fresh container id; afterwards no runtime state or cgroup may be left for it."""
    cid = f"lazyfs-test-{uuid.uuid4().hex[:12]}"
    yield cid
    leftovers = [str(r.state_dir / cid) for r in RUNTIMES.values() if (r.state_dir / cid).exists()]
    assert leftovers + _cgroups_named(cid) == []


def run_container(
    runtime: Runtime,
    rootfs: Path,
    cid: str,
    options: RunOptions,
    config: ImageConfig | None = None,
    **spec_kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """Build the bundle around *rootfs* the way ``lazyfs run`` does, run it, delete it."""
    _require(runtime.name)
    process = process_spec(config or image_config(), options, {}, hostname="lazyfs-test")
    user = resolve_user(process.user, rootfs)
    process.env = apply_user_env(process.env, user)
    spec = runtime_spec(process, user, options, hostname="lazyfs-test", **spec_kwargs)
    bundle = rootfs.parent
    (bundle / "config.json").write_text(json.dumps(spec, indent=1))
    try:
        return runtime.run(bundle, cid)
    finally:
        runtime.delete(cid)


@pytest.mark.parametrize("runtime", list(RUNTIMES.values()), ids=list(RUNTIMES))
def test_runtime_runs_the_process(runtime: Runtime, rootfs: Path, container_id: str) -> None:
    config = image_config(
        User="app",
        WorkingDir="/tmp",
        Env=["GREETING=hi"],
        Entrypoint=["/bin/sh", "-c"],
        Cmd=["exit 9"],
    )
    script = 'echo "$GREETING"; id; hostname; echo "home=$HOME cwd=$(pwd)"; exit 3'
    options = RunOptions(command=[script], network="none")
    result = run_container(runtime, rootfs, container_id, options, config)
    assert (result.returncode, result.stderr) == (3, "")
    assert result.stdout.splitlines() == [
        "hi",
        # busybox's id lists the supplementary groups only: those in /etc/group naming app.
        "uid=1000(app) gid=1000(app) groups=10(wheel),2000(extra)",
        "lazyfs-test",
        "home=/home/app cwd=/tmp",
    ]


def _interfaces(proc_net_dev: str) -> list[str]:
    """The interface names in a /proc/net/dev text, sorted."""
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


def test_runc_isolated_network_has_only_loopback(rootfs: Path, container_id: str) -> None:
    options = RunOptions(command=["/bin/cat", "/proc/net/dev"], network="none")
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    assert _interfaces(result.stdout) == ["lo"]


def test_runc_host_network_sees_the_host_interfaces(rootfs: Path, container_id: str) -> None:
    options = RunOptions(command=["/bin/cat", "/proc/net/dev"], network="host")
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    inside, host = (
        _interfaces(text) for text in (result.stdout, Path("/proc/net/dev").read_text())
    )
    assert inside == host
    assert len(inside) > 1


def test_runc_read_only_root_and_volumes(rootfs: Path, container_id: str, tmp_path: Path) -> None:
    rw_dir, ro_dir = tmp_path / "rw", tmp_path / "ro"
    rw_dir.mkdir()
    ro_dir.mkdir()
    (ro_dir / "given").write_text("from host\n")
    script = (
        "touch /new-file || echo root-refused; "
        "echo written > /mnt/rw/out; "
        "cat /mnt/ro/given; "
        "touch /mnt/ro/new || echo volume-refused"
    )
    options = RunOptions(
        command=["/bin/sh", "-c", script],
        read_only=True,
        volumes=[f"{rw_dir}:/mnt/rw", f"{ro_dir}:/mnt/ro:ro"],
    )
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["root-refused", "from host", "volume-refused"]
    assert result.stderr.count("Read-only file system") == 2
    assert not (rootfs / "new-file").exists()
    assert (rw_dir / "out").read_text() == "written\n"
    assert sorted(os.listdir(ro_dir)) == ["given"]


def test_runc_writable_root(rootfs: Path, container_id: str) -> None:
    options = RunOptions(command=["/bin/touch", "/new-file"])
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    assert (rootfs / "new-file").exists()


def test_runc_applies_resource_limits(rootfs: Path, container_id: str) -> None:
    files = (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
        "/sys/fs/cgroup/pids/pids.max",
    )
    options = RunOptions(
        command=["/bin/cat", *files],
        memory=parse_memory("64m"),
        cpus=parse_cpus("0.5"),
        pids_limit=32,
    )
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(64 << 20), "50000", "100000", "32"]


@pytest.mark.parametrize(
    ("user", "no_new_privileges", "has_capabilities"),
    [("", False, True), ("app", True, False)],
)
def test_runc_capabilities_and_no_new_privileges(
    rootfs: Path, container_id: str, user: str, no_new_privileges: bool, has_capabilities: bool
) -> None:
    options = RunOptions(
        command=["/bin/cat", "/proc/self/status"],
        user=user,
        no_new_privileges=no_new_privileges,
    )
    result = run_container(RUNTIMES["runc"], rootfs, container_id, options)
    assert result.returncode == 0, result.stderr
    status = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    defaults = sum(1 << _CAP_NUMBERS[name] for name in DEFAULT_CAPABILITIES)
    assert int(status["CapBnd"], 16) == defaults
    granted = defaults if has_capabilities else 0
    assert (int(status["CapEff"], 16), int(status["CapPrm"], 16)) == (granted, granted)
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == str(int(no_new_privileges))


_CAP_NUMBERS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
