"""The ``lazyfs`` command as a user runs it: a subprocess, its output and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import trio

from lazyfs.formats.annotations import ESTARGZ_TOC_DIGEST, ZSTD_CHUNKED_MANIFEST_CHECKSUM
from lazyfs.oci.digest import Digest
from lazyfs.oci.platform import Platform
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from tests.harness.images import Entry, build_image, push_image, push_index, sample_layers


def lazyfs(*args: str, home, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_CONFIG": str(home), "HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_clean_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """One error line on stderr, no traceback, the expected exit status.

    Usage errors (status 2) come after argparse's usage text, as with any command.
    """
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    if status == 2:
        assert lines[0].startswith("usage:"), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lazyfs"), lines[0]
    return lines[0]


def push(image, ref: Reference, **kw) -> None:
    async def main():
        async with RegistryClient(**kw) as client:
            await push_image(client, ref, image)

    trio.run(main)


@pytest.fixture
def home(tmp_path):
    return tmp_path


def test_inspect_text_and_json(registry, home):
    annotations = [
        None,
        {ESTARGZ_TOC_DIGEST: str(Digest.of(b"toc"))},
    ]
    image = build_image(
        sample_layers(),
        entrypoint=["/bin/app"],
        cmd=["--port", "80"],
        env=["A=1", "B=two words"],
        user="app",
        working_dir="/srv",
        layer_annotations=annotations,
    )
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1.0")
    push(image, ref)

    text = lazyfs("inspect", str(ref), home=home)
    assert text.returncode == 0, text.stderr
    assert str(image.digest) in text.stdout
    assert "linux/amd64" in text.stdout
    assert "/bin/app" in text.stdout and "--port 80" in text.stdout
    assert "B=two words" in text.stdout and "/srv" in text.stdout
    # The real index decides: the second layer only claims to be eStargz.
    assert "estargz" not in text.stdout and "zstd:chunked" not in text.stdout

    result = lazyfs("inspect", "--json", "--no-index", str(ref), home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == str(image.digest)
    assert report["platform"] == "linux/amd64"
    assert [layer["digest"] for layer in report["layers"]] == [str(b.digest) for b in image.layers]
    assert [layer["size"] for layer in report["layers"]] == [b.size for b in image.layers]
    assert [layer["lazy_format"] for layer in report["layers"]] == ["none", "estargz"]
    assert report["config"]["entrypoint"] == ["/bin/app"]
    assert report["config"]["cmd"] == ["--port", "80"]
    assert report["config"]["user"] == "app"
    assert report["config"]["working_dir"] == "/srv"


def test_inspect_index_with_platform(registry, home):
    amd = build_image([[Entry("a", data=b"1")]], compression="zstd")
    arm = build_image(
        [[Entry("a", data=b"2")]],
        compression="zstd",
        platform=Platform("linux", "arm64", "v8"),
        layer_annotations=[{ZSTD_CHUNKED_MANIFEST_CHECKSUM: str(Digest.of(b"m"))}],
    )
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:multi")

    async def main():
        async with RegistryClient() as client:
            return await push_index(
                client,
                ref,
                [(amd, Platform("linux", "amd64")), (arm, Platform("linux", "arm64", "v8"))],
            )

    index_digest = trio.run(main)
    args = ["--json", "--no-index", "--platform", "linux/arm64/v8", str(ref)]
    result = lazyfs("inspect", *args, home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["digest"] == str(arm.digest)
    assert report["index_digest"] == str(index_digest)
    assert report["layers"][0]["lazy_format"] == "zstd:chunked"

    missing = lazyfs("inspect", "--platform", "linux/riscv64", str(ref), home=home)
    line = assert_clean_error(missing)
    assert "linux/riscv64" in line and "linux/amd64" in line


def test_inspect_errors_are_one_line(registry, tls_registry, home):
    repo = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}"
    line = assert_clean_error(lazyfs("inspect", f"{repo}:nope", home=home))
    assert "not found" in line

    bad_digest = "sha256:" + "0" * 64
    line = assert_clean_error(lazyfs("inspect", f"{repo}@{bad_digest}", home=home))
    assert "not found" in line

    line = assert_clean_error(lazyfs("inspect", "no-such-host.invalid/x:1", home=home))
    assert "no-such-host.invalid" in line

    line = assert_clean_error(lazyfs("inspect", "Not A Reference", home=home), status=2)
    assert "Not A Reference" in line

    line = assert_clean_error(lazyfs("inspect", f"{tls_registry.host}/x/y:1", home=home))
    assert "credentials" in line

    wrong = lazyfs(
        "inspect", "--creds", "alice:s3cret-wrong", f"{tls_registry.host}/x/y:1", home=home
    )
    line = assert_clean_error(wrong)
    assert "s3cret-wrong" not in wrong.stderr + wrong.stdout


def test_inspect_with_creds_and_verified_tls(tls_registry, home):
    image = build_image(sample_layers())
    ref = Reference.parse(f"{tls_registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    from lazyfs.oci.credentials import Credentials, CredentialStore

    push(image, ref, credentials=CredentialStore(default=Credentials("alice", "wonderland")))
    args = ["--creds", "alice:wonderland", "--ca-cert", str(tls_registry.ca_file), str(ref)]
    result = lazyfs("inspect", "--json", *args, home=home)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["digest"] == str(image.digest)
    assert "wonderland" not in result.stderr


def test_convert_then_inspect_reports_the_real_index(registry, home, tmp_path):
    image = build_image([*sample_layers(), [Entry("big", data=bytes(range(256)) * 20_000)]])
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    push(image, ref)
    dst = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:converted"
    result = lazyfs("convert", "--json", "--chunk-size", "64K", str(ref), dst, home=home)
    assert result.returncode == 0, result.stderr
    converted = json.loads(result.stdout)
    assert [layer["result"] for layer in converted["layers"]] == ["converted"] * 3
    report = json.loads(lazyfs("inspect", "--json", dst, home=home).stdout)
    assert report["digest"] == converted["digest"]
    formats = [(layer["lazy_format"], layer["format_source"]) for layer in report["layers"]]
    assert formats == [("zstd:chunked", "index")] * 3
    big = report["layers"][2]["lazy_index"]
    assert big["entries"] == 1 and big["chunks"] == 79  # 5,120,000 bytes in 64 KiB chunks
    text = lazyfs("inspect", dst, home=home).stdout
    assert "zstd:chunked (current)" in text

    layout = tmp_path / "layout"
    result = lazyfs("convert", dst, f"oci:{layout}:v1", home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(lazyfs("inspect", "--json", f"oci:{layout}:v1", home=home).stdout)
    assert report["digest"] == converted["digest"]  # already converted: the same image


def test_convert_again_mounts_instead_of_uploading(registry, home):
    image = build_image(sample_layers())
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    push(image, ref)
    first = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:z"
    second = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:z"
    one = json.loads(lazyfs("convert", "--json", str(ref), first, home=home).stdout)
    assert one["uploads"] == {"uploaded": 2}
    two = json.loads(lazyfs("convert", "--json", first, second, home=home).stdout)
    assert [layer["result"] for layer in two["layers"]] == ["kept", "kept"]
    assert two["uploads"] == {"mounted": 2}, "unchanged layers must be mounted, not uploaded"
    assert two["digest"] == one["digest"]


def test_convert_shows_progress_only_on_a_terminal(registry, home):
    import pty

    image = build_image([[Entry("big", data=bytes(range(256)) * 40_000)]])
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    push(image, ref)
    quiet = lazyfs("convert", str(ref), f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:q", home=home)
    assert quiet.returncode == 0 and quiet.stderr == ""

    env = {**os.environ, "DOCKER_CONFIG": str(home), "HOME": str(home), "COLUMNS": "120"}
    args = [
        sys.executable,
        "-m",
        "lazyfs",
        "convert",
        str(ref),
        f"{registry.host}/cli/x{uuid.uuid4().hex[:8]}:t",
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child runs the command with the pty as its terminal
        os.execvpe(args[0], args, env)
    output = b""
    while True:
        try:
            piece = os.read(fd, 65536)
        except OSError:
            break
        if not piece:
            break
        output += piece
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"convert 1/1" in output and b"fetch 1/1" in output


def test_an_unwritable_destination_is_one_line(registry, home, tmp_path):
    image = build_image(sample_layers())
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    push(image, ref)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    target = f"oci:{readonly}/layout:t"
    # As root, permissions do not stop us: /proc refuses new directories for anyone.
    if os.geteuid() == 0:
        target = "oci:/proc/lazyfs-test-layout:t"
    line = assert_clean_error(lazyfs("convert", str(ref), target, home=home))
    assert "lazyfs-test-layout" in line or "ro/layout" in line


def test_kept_layers_are_mounted_without_being_downloaded(registry):
    from lazyfs.convert import ConvertOptions, convert_image
    from lazyfs.oci.store import open_store
    from lazyfs.progress import NullProgress

    image = build_image([[Entry("big", data=os.urandom(2_000_000))]])
    ref = Reference.parse(f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:1")
    push(image, ref)
    first = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:z"
    second = f"{registry.host}/cli/{uuid.uuid4().hex[:8]}:z"

    async def convert(src: str, dst: str) -> tuple[dict, int]:
        async with RegistryClient() as client:
            report = await convert_image(
                open_store(src, client), open_store(dst, client), ConvertOptions(), NullProgress()
            )
            return report.uploads, client.stats.bytes_received

    trio.run(convert, str(ref), first)
    uploads, received = trio.run(convert, first, second)
    assert uploads == {"mounted": 1}  # the one layer (the config is not counted)
    assert received < 100_000, f"{received} bytes fetched to mount a 2 MB layer"
