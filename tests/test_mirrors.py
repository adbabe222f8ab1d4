"""containerd's hosts.toml: mirrors in order before the origin, per-host TLS settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio

from lazyfs.control import is_mountpoint
from lazyfs.oci.mirrors import HostsConfigError, endpoints_for, parse_hosts_toml
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from tests.harness.images import Entry, build_image, push_image
from tests.harness.registry import RegistryServer


def test_mirrors_come_first_then_the_origin():
    endpoints = parse_hosts_toml(
        """
server = "https://registry.example.com"
ca = "/etc/certs/origin.pem"

[host."http://10.0.0.5:5000"]
  capabilities = ["pull", "resolve"]
  skip_verify = true

[host."https://mirror.example.com/prefix"]
  capabilities = ["pull"]
  ca = ["/a.pem", "/b.pem"]
  client = [["/c.pem", "/c.key"]]
  [host."https://mirror.example.com/prefix".header]
    x-token = "t"

[host."https://raw.example.com/api"]
  override_path = true
""",
        "registry.example.com",
    )
    assert [e.base_url for e in endpoints] == [
        "http://10.0.0.5:5000/v2",
        "https://mirror.example.com/prefix/v2",
        "https://raw.example.com/api",
        "https://registry.example.com/v2",
    ]
    first, second, third, origin = endpoints
    assert first.capabilities == {"pull", "resolve"} and first.skip_verify
    assert second.can("pull") and not second.can("resolve")
    assert second.ca_files == (Path("/a.pem"), Path("/b.pem"))
    assert second.client_cert == (Path("/c.pem"), Path("/c.key"))
    assert second.headers == (("x-token", "t"),)
    assert third.capabilities == {"pull", "resolve", "push"}
    assert origin.origin and origin.ca_files == (Path("/etc/certs/origin.pem"),)
    assert not any(e.origin for e in (first, second, third))


def test_default_origin_and_docker_hub():
    (origin,) = parse_hosts_toml("", "registry.example.com:5000")
    assert origin.base_url == "https://registry.example.com:5000/v2" and origin.origin
    (hub,) = parse_hosts_toml("", "docker.io")
    assert hub.host == "registry-1.docker.io"


def test_the_origin_listed_as_a_host_keeps_its_place():
    endpoints = parse_hosts_toml(
        """
server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve", "push"]
[host."http://127.0.0.1:6000"]
  capabilities = ["pull"]
""",
        "127.0.0.1:5000",
    )
    assert [(e.host, e.origin) for e in endpoints] == [
        ("127.0.0.1:5000", True),
        ("127.0.0.1:6000", False),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "server = 5",
        'host = "x"',
        '[host."ftp://x"]',
        '[host."https://x"]\ncapabilities = "pull"',
        '[host."https://x"]\nskip_verify = "yes"',
        '[host."https://x"]\nca = 3',
        '[host."https://x"]\nclient = [["only-one"]]',
        "this is not toml = = =",
    ],
)
def test_malformed_files_are_clear_errors(text):
    with pytest.raises(HostsConfigError, match=r"hosts\.toml"):
        parse_hosts_toml(text, "r.example.com")


def test_directory_lookup(tmp_path):
    assert endpoints_for("r.example.com:5000", tmp_path) is None
    assert endpoints_for("r.example.com:5000", None) is None
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."http://m:1"]\n')
    assert [e.host for e in endpoints_for("r.example.com:5000", tmp_path)] == [
        "m:1",
        "r.example.com:5000",
    ]
    (tmp_path / "r.example.com:5000").mkdir()
    (tmp_path / "r.example.com:5000" / "hosts.toml").write_text('server = "http://o:2"\n')
    assert [e.base_url for e in endpoints_for("r.example.com:5000", tmp_path)] == ["http://o:2/v2"]


# ---------------------------------------------------------------------------- for real
# Two real registries: the origin, and a pull-through cache of it (distribution's
# ``proxy: remoteurl``) named as a mirror in hosts.toml.


@pytest.fixture
def mirror(registry, tmp_path):
    server = RegistryServer(tmp_path / "mirror", proxy_remote_url=registry.url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _hosts_dir(tmp_path, origin, mirror) -> Path:
    hosts = tmp_path / "certs.d"
    (hosts / origin.host).mkdir(parents=True)
    (hosts / origin.host / "hosts.toml").write_text(
        f'server = "http://{origin.host}"\n\n'
        f'[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    return hosts


def _image_with(files: dict[str, bytes]):
    return build_image([[Entry(name, data=data) for name, data in files.items()]])


def test_mirror_serves_and_the_origin_takes_over_when_it_stops(registry, mirror, tmp_path):
    ref = Reference.parse(f"{registry.host}/mirrors/app-{uuid.uuid4().hex[:8]}:v1")
    image = _image_with({"a": os.urandom(100_000), "b": b"B" * 50_000})
    hosts = _hosts_dir(tmp_path, registry, mirror)

    async def main():
        async with RegistryClient() as plain:
            await push_image(plain, ref, image)
        layer = image.layers[0]
        async with RegistryClient(hosts_dir=hosts) as client:
            resolved = await client.resolve(ref)
            assert resolved.digest == image.digest
            data = (await client.fetch_ranges(ref, layer.digest, [(0, layer.size)]))[0]
            assert data == layer.data
            assert set(client.stats.by_host) == {mirror.host}  # nothing asked the origin
            assert client.mirror_fallbacks == 0
            mirror.stop()
            data = (await client.fetch_ranges(ref, layer.digest, [(10, 100)]))[0]
            assert data == layer.data[10:110]
            assert client.stats.by_host.get(registry.host, 0) >= 1
            assert client.mirror_fallbacks >= 1

    trio.run(main)


def lazyfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True, timeout=120
    )


def test_a_mount_reads_through_the_mirror_and_survives_its_loss(registry, mirror, tmp_path):
    from lazyfs.convert import ConvertOptions, convert_image
    from lazyfs.oci.store import open_store
    from lazyfs.progress import NullProgress

    name = f"{registry.host}/mirrors/big-{uuid.uuid4().hex[:8]}"
    files = {f"f{i}": bytes([i]) * 300_000 for i in range(8)}

    async def main():
        async with RegistryClient() as client:
            await push_image(client, Reference.parse(f"{name}:gzip"), _image_with(files))
            await convert_image(
                open_store(f"{name}:gzip", client),
                open_store(f"{name}:lazy", client),
                ConvertOptions(chunk_size=64 * 1024),
                NullProgress(),
            )

    trio.run(main)
    hosts = _hosts_dir(tmp_path, registry, mirror)
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    result = lazyfs(
        "mount",
        "--daemon",
        "--no-prefetch",
        "--hosts-dir",
        str(hosts),
        "--cache-dir",
        str(cache),
        f"{name}:lazy",
        str(mnt),
    )
    assert result.returncode == 0, result.stderr
    try:
        assert (mnt / "f0").read_bytes() == files["f0"]
        # The mirror (a pull-through cache) fetched the blob from the origin to serve it.
        assert any(mirror.storage_dir.rglob("data")), "the mirror served nothing"
        mirror.stop()
        for i in range(1, 8):
            assert (mnt / f"f{i}").read_bytes() == files[f"f{i}"]
        stats = json.loads(lazyfs("stats", "--json", str(mnt)).stdout)
        assert stats["fetch"]["total"]["errors"] == 0
    finally:
        done = lazyfs("umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not is_mountpoint(mnt)
