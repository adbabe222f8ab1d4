"""The registry client against the real CNCF distribution registry.

Every test talks to a registry started by the fixtures (plain, TLS + htpasswd, token auth),
sometimes through the fault-injecting proxy. Nothing here mocks the registry.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import trio

from lazyfs.errors import (
    AuthError,
    DigestMismatch,
    NotFound,
    PlatformNotFound,
    RegistryError,
    RegistryUnreachable,
)
from lazyfs.oci import mediatypes
from lazyfs.oci.credentials import Credentials, CredentialStore
from lazyfs.oci.digest import Digest
from lazyfs.oci.hosts import HostPolicy
from lazyfs.oci.manifest import ImageIndex, parse_manifest
from lazyfs.oci.platform import Platform
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.retry import RetryPolicy
from tests.harness.faultproxy import (
    FaultProxy,
    FlipBits,
    RateLimit,
    RedirectLoop,
    RedirectToUpstream,
    RejectMultiRange,
    Reset,
    Respond,
    Stall,
    StripRange,
    Truncate,
)
from tests.harness.images import Entry, build_image, push_image, push_index, sample_layers

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)


def client(**kw) -> RegistryClient:
    kw.setdefault("retry", FAST)
    return RegistryClient(**kw)


def repo(host: str, tag: str = "v1") -> Reference:
    """A fresh repository name per test, so tests never see each other's blobs."""
    return Reference.parse(f"{host}/test/{uuid.uuid4().hex[:12]}:{tag}")


def big_image(size: int = 3 * 1024 * 1024):
    payload = bytes((i * 7 + i // 251) % 256 for i in range(size))
    return build_image([[Entry("data.bin", data=payload)]], compression="none")


# ---------------------------------------------------------------- push and pull


def test_push_then_resolve_round_trip(registry):
    image = build_image(sample_layers(), cmd=["/bin/app", "--serve"], env=["A=1"], user="1000")
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            pushed = await push_image(c, ref, image)
            assert pushed == image.digest
            resolved = await c.resolve(ref)
            assert resolved.digest == image.digest
            assert resolved.manifest_bytes == image.manifest.data
            assert resolved.config_bytes == image.config.data
            assert resolved.config.cmd == ["/bin/app", "--serve"]
            assert resolved.config.user == "1000"
            assert list(resolved.config.diff_ids) == list(image.diff_ids)
            assert [layer.digest for layer in resolved.manifest.layers] == [
                b.digest for b in image.layers
            ]
            for blob in image.layers:
                assert await c.get_blob(ref, blob.digest) == blob.data
            # By digest too, with the tag dropped.
            by_digest = Reference(ref.registry, ref.repository, None, image.digest)
            assert (await c.resolve(by_digest)).digest == image.digest

    trio.run(main)


def test_docker_schema2_manifest(registry):
    image = build_image(sample_layers(), docker=True)
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            await push_image(c, ref, image)
            fetched = await c.get_manifest(ref)
            assert fetched.media_type == mediatypes.DOCKER_MANIFEST
            resolved = await c.resolve(ref)
            assert resolved.manifest.media_type == mediatypes.DOCKER_MANIFEST
            assert resolved.manifest.layers[0].media_type == mediatypes.DOCKER_LAYER_GZIP

    trio.run(main)


def test_index_selects_platform(registry):
    amd = build_image([[Entry("arch", data=b"amd64\n")]])
    arm = build_image([[Entry("arch", data=b"arm64\n")]], platform=Platform("linux", "arm64", "v8"))
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            index_digest = await push_index(
                c,
                ref,
                [(amd, Platform("linux", "amd64")), (arm, Platform("linux", "arm64", "v8"))],
            )
            fetched = await c.get_manifest(ref)
            assert isinstance(parse_manifest(fetched.data), ImageIndex)
            got = await c.resolve(ref, Platform.parse("linux/arm64"))
            assert got.digest == arm.digest
            assert got.index_digest == index_digest
            assert str(got.platform) == "linux/arm64/v8"
            got = await c.resolve(ref, Platform.parse("linux/amd64"))
            assert got.digest == amd.digest
            with pytest.raises(PlatformNotFound, match="linux/s390x"):
                await c.resolve(ref, Platform.parse("linux/s390x"))

    trio.run(main)


def test_single_manifest_for_another_platform_is_refused_when_asked(registry):
    image = build_image(sample_layers(), platform=Platform("linux", "arm64", "v8"))
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            await push_image(c, ref, image)
            assert (await c.resolve(ref)).digest == image.digest  # no platform asked
            with pytest.raises(PlatformNotFound):
                await c.resolve(ref, Platform.parse("linux/amd64"))

    trio.run(main)


def test_missing_things_are_not_found(registry):
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            with pytest.raises(NotFound):
                await c.get_manifest(ref)
            with pytest.raises(NotFound):
                await c.get_blob(ref, Digest.of(b"nothing"))
            assert await c.blob_size(ref, Digest.of(b"nothing")) is None

    trio.run(main)


def test_chunked_upload_and_cross_repository_mount(registry):
    data = bytes(range(256)) * 2000  # 512000 bytes: 8 PATCH chunks of 64 KiB
    digest = Digest.of(data)
    first, second = repo(registry.host), repo(registry.host)

    async def main():
        async with client(monolithic_upload_limit=100_000, upload_chunk_size=64 * 1024) as c:
            assert await c.push_blob(first, digest, data) == "uploaded"
            assert await c.blob_size(first, digest) == len(data)
            assert await c.push_blob(first, digest, data) == "exists"
            mounted = await c.push_blob(second, digest, data, mount_from=[first.repository])
            assert mounted == "mounted"
            assert await c.get_blob(second, digest) == data

    trio.run(main)


def test_push_blob_from_file(registry, tmp_path):
    data = b"file blob " * 10_000
    path = tmp_path / "blob"
    path.write_bytes(data)
    ref = repo(registry.host)

    async def main():
        async with client(monolithic_upload_limit=10_000, upload_chunk_size=30_000) as c:
            assert await c.push_blob(ref, Digest.of(data), path) == "uploaded"
            assert await c.get_blob(ref, Digest.of(data)) == data

    trio.run(main)


def test_push_with_wrong_digest_is_refused(registry):
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            with pytest.raises(RegistryError):
                await c.push_blob(ref, Digest.of(b"something else"), b"actual content")

    trio.run(main)


# ---------------------------------------------------------------- ranges and streams


def test_ranges_single_and_multi(registry):
    image = big_image()
    blob = image.layers[0]
    ref = repo(registry.host)
    wanted = [(0, 1), (1000, 4096), (blob.size - 10, 10), (2_000_000, 0), (512, 1)]

    async def main():
        async with client() as c:
            await push_image(c, ref, image)
            assert await c.fetch_range(ref, blob.digest, 100, 50) == blob.data[100:150]
            before = c.stats.requests
            got = await c.fetch_ranges(ref, blob.digest, wanted, blob_size=blob.size)
            assert got == [blob.data[o : o + n] for o, n in wanted]
            assert c.stats.requests - before == 1, "several ranges should take one request"
            with pytest.raises(ValueError):
                await c.fetch_ranges(ref, blob.digest, [(blob.size - 1, 2)], blob_size=blob.size)

    trio.run(main)


def test_fetch_ranges_into_fills_the_callers_buffer_in_place(registry):
    image = big_image()
    blob = image.layers[0]
    ref = repo(registry.host)
    wanted = [(2_000_000, 300_000), (7, 3), (blob.size - 10, 10), (50, 0), (1_000, 1)]
    total = sum(n for _, n in wanted)

    async def main():
        async with client() as c:
            await push_image(c, ref, image)
            buffer = bytearray(b"\xaa" * (total + 100))
            before = c.stats.requests
            views = await c.fetch_ranges_into(ref, blob.digest, wanted, buffer)
            assert c.stats.requests - before == 1
            assert [bytes(v) for v in views] == [blob.data[o : o + n] for o, n in wanted]
            # Each range is a slice of the caller's buffer, laid out in the order asked.
            position = 0
            for view, (_, n) in zip(views, wanted, strict=True):
                assert view.obj is buffer and len(view) == n
                assert bytes(buffer[position : position + n]) == bytes(view)
                position += n
            assert buffer[total:] == b"\xaa" * 100
            # One range: a single-range request, streamed into place.
            views = await c.fetch_ranges_into(ref, blob.digest, [(123_456, 200_000)], buffer)
            assert bytes(views[0]) == blob.data[123_456 : 123_456 + 200_000]
            with pytest.raises(ValueError):
                await c.fetch_ranges_into(ref, blob.digest, [(0, total + 101)], buffer)

    trio.run(main)


def test_a_range_body_cut_short_is_fetched_again(registry, fault_proxy):
    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Truncate(100_000), path_contains="/blobs/", times=1)

    async def main():
        async with client() as c:
            buffer = bytearray(1_000_000)
            views = await c.fetch_ranges_into(ref, blob.digest, [(1_000, 1_000_000)], buffer)
            assert bytes(views[0]) == blob.data[1_000:1_001_000]
            assert c.stats.retries == 1

    trio.run(main)


def test_stream_blob_feeds_every_byte_and_verifies(registry):
    image = big_image()
    blob = image.layers[0]
    ref = repo(registry.host)

    async def main():
        async with client() as c:
            await push_image(c, ref, image)
            pieces = []

            async def sink(piece: bytes) -> None:
                pieces.append(piece)

            n = await c.stream_blob(ref, blob.digest, sink, size=blob.size)
            assert n == blob.size and b"".join(pieces) == blob.data
            with pytest.raises(DigestMismatch):
                await c.stream_blob(ref, blob.digest, lambda p: None, size=blob.size - 1)

    trio.run(main)


# ---------------------------------------------------------------- faults (proxy in front)


def _pushed_through_proxy(registry, proxy: FaultProxy, image):
    ref = repo(registry.host)

    async def push():
        async with client() as c:
            await push_image(c, ref, image)

    trio.run(push)
    return Reference(proxy.host, ref.repository, ref.tag, None)


def test_retries_5xx_then_succeeds(registry, fault_proxy):
    image = build_image(sample_layers())
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Respond(503), method="GET", path_contains="/manifests/", times=2)
    fault_proxy.add_fault(None, Respond(502), method="GET", path_contains="/blobs/", times=1)

    async def main():
        async with client() as c:
            resolved = await c.resolve(ref)
            assert resolved.digest == image.digest
            assert c.stats.retries == 3

    trio.run(main)


def test_persistent_500_fails_after_bounded_attempts(registry, fault_proxy):
    image = build_image(sample_layers())
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Respond(500), path_contains="/manifests/", times=None)

    async def main():
        async with client() as c:
            started = time.monotonic()
            with pytest.raises(RegistryError, match="500") as info:
                await c.get_manifest(ref)
            assert info.value.status == 500
            assert time.monotonic() - started < 5
        assert fault_proxy.count(path_contains="/manifests/") == FAST.attempts

    trio.run(main)


def test_429_honours_retry_after(registry, fault_proxy):
    image = build_image(sample_layers())
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, RateLimit(retry_after="1"), path_contains="/manifests/", times=1)

    async def main():
        async with client() as c:
            started = time.monotonic()
            await c.get_manifest(ref)
            assert time.monotonic() - started >= 0.9

    trio.run(main)


def test_connection_reset_is_retried(registry, fault_proxy):
    image = build_image(sample_layers())
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Reset(), path_contains="/blobs/", times=2)

    async def main():
        async with client() as c:
            assert (await c.resolve(ref)).digest == image.digest

    trio.run(main)


def test_truncated_stream_resumes_with_range(registry, fault_proxy):
    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Truncate(after=1_000_000), path_contains=str(blob.digest), times=1)

    async def main():
        async with client() as c:
            assert await c.get_blob(ref, blob.digest) == blob.data

    trio.run(main)
    ranges = [r.range for r in fault_proxy.requests if str(blob.digest) in r.path]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=") and ranges[1].endswith("-")
    assert int(ranges[1][6:-1]) > 0, "the second request should resume, not start over"


def test_flipped_bits_are_detected_and_refetched(registry, fault_proxy):
    image = build_image(sample_layers())
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, FlipBits(offset=10), path_contains=str(blob.digest), times=1)

    async def main():
        async with client() as c:
            assert await c.get_blob(ref, blob.digest) == blob.data
            fault_proxy.add_fault(
                None, FlipBits(offset=10), path_contains=str(blob.digest), times=None
            )
            with pytest.raises(DigestMismatch):
                await c.get_blob(ref, blob.digest)

    trio.run(main)


def test_stall_past_timeout_is_retried(registry, fault_proxy):
    import httpx

    image = build_image(sample_layers())
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, Stall(seconds=3), path_contains="/manifests/", times=1)

    async def main():
        async with client(timeout=httpx.Timeout(0.5)) as c:
            started = time.monotonic()
            await c.get_manifest(ref)
            assert time.monotonic() - started < 2.5

    trio.run(main)


def test_range_ignored_still_serves_the_right_bytes(registry, fault_proxy):
    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, StripRange(), times=None)
    wanted = [(5, 10), (2_000_000, 100)]

    async def main():
        async with client() as c:
            assert await c.fetch_range(ref, blob.digest, 7, 3) == blob.data[7:10]
            got = await c.fetch_ranges(ref, blob.digest, wanted)
            assert got == [blob.data[o : o + n] for o, n in wanted]

    trio.run(main)


def test_a_whole_blob_sent_for_a_range_is_read_only_as_far_as_needed(registry, fault_proxy):
    image = big_image(6 * 1024 * 1024)
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, StripRange(), times=None)

    async def main():
        async with client() as c:
            before = c.stats.bytes_received
            buffer = bytearray(20)
            views = await c.fetch_ranges_into(ref, blob.digest, [(100, 10), (5, 10)], buffer)
            assert [bytes(v) for v in views] == [blob.data[100:110], blob.data[5:15]]
            # The body is streamed: the rest of the 6 MiB blob is never read.
            assert c.stats.bytes_received - before < blob.size // 4

    trio.run(main)


def test_multi_range_refused_falls_back_to_single_ranges(registry, fault_proxy):
    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, RejectMultiRange(), times=None)
    wanted = [(0, 100), (50_000, 10), (1_500_000, 4096)]

    async def main():
        async with client() as c:
            got = await c.fetch_ranges(ref, blob.digest, wanted)
            assert got == [blob.data[o : o + n] for o, n in wanted]
            refused = fault_proxy.count(status=400)
            # The host is remembered: no second multi-range attempt.
            got = await c.fetch_ranges(ref, blob.digest, wanted)
            assert got == [blob.data[o : o + n] for o, n in wanted]
            assert fault_proxy.count(status=400) == refused == 1

    trio.run(main)


def test_redirect_to_storage_is_followed_and_remembered(registry, fault_proxy):
    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(
        None, RedirectToUpstream(), method="GET", path_contains="/blobs/", times=None
    )

    async def main():
        async with client() as c:
            assert await c.fetch_range(ref, blob.digest, 10, 20) == blob.data[10:30]
            assert await c.fetch_range(ref, blob.digest, 99, 1) == blob.data[99:100]
            assert await c.get_blob(ref, blob.digest) == blob.data

    trio.run(main)
    # Only the first request went through the proxy; the rest went to the remembered URL.
    assert fault_proxy.count(path_contains=str(blob.digest)) == 1


def test_redirect_loop_fails_quickly(registry, fault_proxy):
    image = build_image(sample_layers())
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    fault_proxy.add_fault(None, RedirectLoop(), path_contains="/blobs/", times=None)

    async def main():
        async with client() as c:
            with pytest.raises(RegistryError, match="redirect"):
                await c.get_blob(ref, blob.digest)

    trio.run(main)


def test_unknown_host_fails_without_retrying():
    ref = Reference.parse("no-such-host.invalid/x/y:1")

    async def main():
        async with client(retry=RetryPolicy(attempts=5, base_delay=1.0)) as c:
            started = time.monotonic()
            with pytest.raises(RegistryUnreachable, match="resolve"):
                await c.get_manifest(ref)
            assert time.monotonic() - started < 3

    trio.run(main)


def test_connection_refused_fails_after_bounded_retries():
    from tests.harness.registry import free_port

    ref = Reference.parse(f"127.0.0.1:{free_port()}/x/y:1")

    async def main():
        async with client() as c:
            with pytest.raises(RegistryUnreachable, match="gave up after 4 attempts"):
                await c.get_manifest(ref)

    trio.run(main)


# ---------------------------------------------------------------- auth


def test_tls_basic_auth(tls_registry):
    image = build_image(sample_layers())
    ref = repo(tls_registry.host)
    verified = HostPolicy(ca_files=[tls_registry.ca_file], loopback_insecure=False)

    async def main():
        creds = CredentialStore(default=Credentials("alice", "wonderland"), config_path=None)
        async with client(credentials=creds, hosts=verified) as c:
            await push_image(c, ref, image)
            assert (await c.resolve(ref)).digest == image.digest

        nobody = CredentialStore(config_path=tls_registry.workdir / "no-config.json")
        async with client(credentials=nobody, hosts=verified) as c:
            with pytest.raises(AuthError, match="credentials"):
                await c.get_manifest(ref)

        wrong = CredentialStore(default=Credentials("alice", "wrong-password"))
        async with client(credentials=wrong, hosts=verified) as c:
            with pytest.raises(AuthError) as info:
                await c.get_manifest(ref)
            assert "wrong-password" not in str(info.value)

        # Without the CA, verification fails with a clear message (no retries needed).
        async with client(credentials=creds, hosts=HostPolicy(loopback_insecure=False)) as c:
            with pytest.raises(RegistryUnreachable, match="certificate"):
                await c.get_manifest(ref)

        # Loopback hosts are insecure by default, as with docker: no CA needed.
        async with client(credentials=creds) as c:
            assert (await c.resolve(ref)).digest == image.digest

    trio.run(main)


def test_credentials_from_docker_config(tls_registry, tmp_path):
    import base64

    image = build_image(sample_layers())
    ref = repo(tls_registry.host)
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:wonderland").decode()
    config.write_text(json.dumps({"auths": {f"https://{tls_registry.host}": {"auth": auth}}}))

    async def main():
        store = CredentialStore(config_path=config)
        hosts = HostPolicy(ca_files=[tls_registry.ca_file], loopback_insecure=False)
        async with client(credentials=store, hosts=hosts) as c:
            await push_image(c, ref, image)
            assert (await c.resolve(ref)).digest == image.digest

    trio.run(main)


def test_token_auth_push_pull_and_anonymous(token_registry, tmp_path):
    image = build_image(sample_layers())
    ref = repo(token_registry.host)
    issuer = token_registry.issuer
    empty = tmp_path / "none.json"

    async def main():
        bob = CredentialStore(default=Credentials("bob", "builder"), config_path=empty)
        async with client(credentials=bob) as c:
            before = issuer.tokens_issued
            await push_image(c, ref, image)
            assert (await c.resolve(ref)).digest == image.digest
            # Tokens are cached per scope: a handful, not one per request.
            assert issuer.tokens_issued - before <= 3
            assert c.stats.requests > 8

        async with client(credentials=CredentialStore(config_path=empty)) as c:
            assert (await c.resolve(ref)).digest == image.digest  # anonymous pull
            other = repo(token_registry.host)
            with pytest.raises(AuthError):
                await c.push_blob(other, Digest.of(b"x"), b"x")  # anonymous push

        wrong = CredentialStore(default=Credentials("bob", "nope"), config_path=empty)
        async with client(credentials=wrong) as c:
            with pytest.raises(AuthError, match="refused") as info:
                await c.get_manifest(ref)
            assert "nope" not in str(info.value)

    trio.run(main)


def test_token_rejected_mid_session_is_renewed(token_registry, tmp_path):
    """A registry that stops accepting a cached token (it expired) gets a fresh one."""
    image = build_image(sample_layers())
    ref = repo(token_registry.host)
    issuer = token_registry.issuer
    creds = CredentialStore(default=Credentials("bob", "builder"), config_path=tmp_path / "x")

    async def push():
        async with client(credentials=creds) as c:
            await push_image(c, ref, image)

    trio.run(push)
    challenge = (
        f'Bearer realm="{issuer.realm}",service="{issuer.service}",'
        f'scope="repository:{ref.repository}:pull"'
    )
    with FaultProxy(token_registry.url) as proxy:
        via_proxy = Reference(proxy.host, ref.repository, ref.tag, None)

        async def main():
            async with client(credentials=creds) as c:
                await c.get_manifest(via_proxy)
                issued = issuer.tokens_issued
                proxy.add_fault(
                    None,
                    Respond(401, headers={"WWW-Authenticate": challenge}),
                    path_contains="/manifests/",
                    times=1,
                )
                await c.get_manifest(via_proxy)
                assert issuer.tokens_issued == issued + 1

        trio.run(main)


def test_storage_url_is_asked_again_on_403_and_after_its_ttl(registry, fault_proxy):
    """A registry redirects blobs to "storage" (a second proxy); a refused or expired
    storage URL sends the client back to the registry for a fresh redirect."""
    from tests.harness.faultproxy import Redirect

    image = big_image()
    blob = image.layers[0]
    ref = _pushed_through_proxy(registry, fault_proxy, image)
    with FaultProxy(registry.url) as storage:
        path = f"/v2/{ref.repository}/blobs/{blob.digest}"
        fault_proxy.add_fault(None, Redirect(storage.url + path), path_contains=path, times=None)

        async def main():
            async with client(redirect_ttl=0.5) as c:
                assert await c.fetch_range(ref, blob.digest, 0, 10) == blob.data[:10]
                assert await c.fetch_range(ref, blob.digest, 10, 10) == blob.data[10:20]
                assert fault_proxy.count(path_contains=path) == 1  # the URL was remembered
                storage.add_fault(None, Respond(403), path_contains=path, times=1)
                assert await c.fetch_range(ref, blob.digest, 20, 10) == blob.data[20:30]
                assert fault_proxy.count(path_contains=path) == 2  # asked the registry again
                await trio.sleep(0.6)
                assert await c.fetch_range(ref, blob.digest, 30, 10) == blob.data[30:40]
                assert fault_proxy.count(path_contains=path) == 3  # expired: asked again
                # Registry credentials never go to storage.
                assert all("authorization" not in r.headers for r in storage.requests)

        trio.run(main)


def test_errors_of_concurrent_range_requests_are_lazyfs_errors(registry):
    ref = repo(registry.host)
    missing = Digest.of(b"no such blob")

    async def main():
        async with client() as c:
            with pytest.raises(NotFound):
                await c.fetch_ranges(ref, missing, [(0, 10), (100, 10)])

    trio.run(main)
