"""containerd's hosts.toml: mirrors in order before the origin, per-host TLS settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.oci.mirrors import HostsConfigError, endpoints_for, parse_hosts_toml


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
