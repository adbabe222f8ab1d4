"""Which hosts may be reached over plain HTTP or unverified TLS."""

from __future__ import annotations

import ssl

from lazyfs.oci.hosts import HostPolicy, split_host_port


def test_loopback_is_insecure_by_default_like_docker():
    policy = HostPolicy()
    for host in (
        "localhost",
        "localhost:5000",
        "127.0.0.1",
        "127.1.2.3:80",
        "[::1]:5000",
        "a.localhost",
    ):
        assert policy.settings(host).insecure, host
    for host in ("registry.example.com", "10.0.0.1:5000", "docker.io", "[2001:db8::1]:443"):
        assert not policy.settings(host).insecure, host
    assert not HostPolicy(loopback_insecure=False).settings("127.0.0.1:5000").insecure


def test_named_insecure_hosts_with_and_without_port():
    policy = HostPolicy(insecure_hosts=["reg.internal", "other.internal:5000"])
    assert policy.settings("reg.internal").insecure
    assert policy.settings("reg.internal:443").insecure  # a name without a port: every port
    assert policy.settings("other.internal:5000").insecure
    assert not policy.settings("other.internal:6000").insecure
    assert not policy.settings("reg.internal.evil.com").insecure


def test_verification_is_on_otherwise():
    ctx = HostPolicy().settings("registry.example.com").ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert HostPolicy().settings("localhost").ssl_context() is False


def test_split_host_port():
    assert split_host_port("host:5000") == ("host", 5000)
    assert split_host_port("host") == ("host", None)
    assert split_host_port("[::1]:5000") == ("::1", 5000)
    assert split_host_port("[::1]") == ("::1", None)
