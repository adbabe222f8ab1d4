"""Tests of the test harness itself, with plain ``httpx`` (not the lazyfs client).

They pin down what the other tests rely on: that the real registry runs in each
variant (plain, TLS + htpasswd, token auth), that the token issuer's JWTs are
accepted by distribution and expire when told to, and that every
:class:`FaultProxy` action does what it says.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness.faultproxy import (
    LOOP_MARKER,
    FaultProxy,
    FlipBits,
    RateLimit,
    Redirect,
    RedirectLoop,
    RedirectToUpstream,
    RejectMultiRange,
    Reset,
    Respond,
    Stall,
    StripRange,
    Truncate,
)
from tests.harness.registry import RegistryServer
from tests.harness.tokenissuer import parse_scope


@dataclass(frozen=True)
class Blob:
    repo: str
    digest: str
    data: bytes

    @property
    def path(self) -> str:
        return f"/v2/{self.repo}/blobs/{self.digest}"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """Monolithic upload: POST to start a session, PUT the data with ``digest=``."""
    digest = sha256_digest(data)
    started = client.post(f"/v2/{repo}/blobs/uploads/")
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    separator = "&" if "?" in location else "?"
    finished = client.put(
        f"{location}{separator}digest={digest}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert finished.status_code == 201, finished.text
    return digest


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def blob(registry: RegistryServer) -> Blob:
    """A 64 KiB blob stored in the plain registry."""
    data = os.urandom(64 * 1024)
    with httpx.Client(base_url=registry.url) as client:
        digest = upload_blob(client, "harness/blob", data)
    return Blob("harness/blob", digest, data)


@pytest.fixture
def client(fault_proxy: FaultProxy) -> Iterator[httpx.Client]:
    """A client talking to the registry through the fault proxy."""
    with httpx.Client(base_url=fault_proxy.url, timeout=10) as c:
        yield c


# ---------------------------------------------------------------------------- plain


def test_plain_registry_answers_v2(registry: RegistryServer) -> None:
    response = httpx.get(f"{registry.url}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert registry.url == f"http://{registry.host}"
    assert registry.ca_file is None
    assert registry.log_path.exists()
    assert registry.storage_dir.is_dir()


def test_plain_registry_blob_roundtrip(registry: RegistryServer) -> None:
    data = os.urandom(10_000)
    with httpx.Client(base_url=registry.url) as c:
        digest = upload_blob(c, "harness/roundtrip", data)
        response = c.get(f"/v2/harness/roundtrip/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["Docker-Content-Digest"] == digest


# ---------------------------------------------------------------------------- TLS + htpasswd


def test_tls_registry_requires_credentials(tls_registry: RegistryServer) -> None:
    response = httpx.get(f"{tls_registry.url}/v2/", verify=tls_registry.ssl_context())
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_tls_registry_accepts_credentials(tls_registry: RegistryServer) -> None:
    assert tls_registry.url.startswith("https://127.0.0.1:")
    ok = httpx.get(
        f"{tls_registry.url}/v2/", verify=tls_registry.ssl_context(), auth=("alice", "wonderland")
    )
    assert ok.status_code == 200
    wrong = httpx.get(
        f"{tls_registry.url}/v2/", verify=tls_registry.ssl_context(), auth=("alice", "nope")
    )
    assert wrong.status_code == 401


def test_tls_registry_certificate_needs_the_ca(tls_registry: RegistryServer) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_registry.url}/v2/")  # system trust store only
    assert tls_registry.ca_file is not None
    # The certificate is also valid for "localhost" and the IPv6 loopback name.
    response = httpx.get(
        f"https://localhost:{tls_registry.port}/v2/", verify=tls_registry.ssl_context()
    )
    assert response.status_code == 401


# ---------------------------------------------------------------------------- token auth


def test_token_registry_challenge_and_token(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    challenge = httpx.get(f"{token_registry.url}/v2/")
    assert challenge.status_code == 401
    www = challenge.headers["WWW-Authenticate"]
    assert www.startswith("Bearer ")
    assert f'realm="{issuer.realm}"' in www
    assert f'service="{issuer.service}"' in www

    before = issuer.tokens_issued
    answer = httpx.get(
        issuer.realm,
        params={"service": issuer.service, "scope": "repository:harness/tok:pull,push"},
        auth=("bob", "builder"),
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == issuer.ttl
    assert body["issued_at"].endswith("Z")
    assert issuer.tokens_issued == before + 1
    assert issuer.issued[-1].access == [
        {"type": "repository", "name": "harness/tok", "actions": ["pull", "push"]}
    ]

    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header["alg"] == "RS256"
    assert base64.b64decode(header["x5c"][0], validate=True)

    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(body["token"])).status_code == 200
    # The granted push really works: a blob upload with this token.
    with httpx.Client(base_url=token_registry.url, headers=bearer(body["token"])) as c:
        upload_blob(c, "harness/tok", b"token-protected")


def test_token_issuer_policy(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    params = {"service": issuer.service, "scope": "repository:harness/anon:pull,push"}
    failures = issuer.auth_failures
    assert httpx.get(issuer.realm, params=params, auth=("bob", "wrong")).status_code == 401
    assert httpx.get(issuer.realm, params=params, auth=("eve", "builder")).status_code == 401
    assert issuer.auth_failures == failures + 2

    anonymous = httpx.get(issuer.realm, params=params)
    assert anonymous.status_code == 200
    assert issuer.issued[-1].subject == ""
    assert issuer.issued[-1].access == [
        {"type": "repository", "name": "harness/anon", "actions": ["pull"]}
    ]
    # Pull-only token: the registry refuses to start an upload.
    refused = httpx.post(
        f"{token_registry.url}/v2/harness/anon/blobs/uploads/",
        headers=bearer(anonymous.json()["token"]),
    )
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]


def test_parse_scope_handles_colons_in_names() -> None:
    assert parse_scope("repository:127.0.0.1:5000/a/b:pull,push") == (
        "repository",
        "127.0.0.1:5000/a/b",
        ["pull", "push"],
    )
    assert parse_scope("registry:catalog:*") == ("registry", "catalog", ["*"])
    assert parse_scope("garbage") is None


def test_token_expires_after_ttl(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    saved = issuer.ttl
    issuer.ttl = 1
    try:
        answer = httpx.get(issuer.realm, params={"service": issuer.service})
    finally:
        issuer.ttl = saved
    token = answer.json()["token"]
    assert answer.json()["expires_in"] == 1
    assert httpx.get(f"{token_registry.url}/v2/", headers=bearer(token)).status_code == 200

    # The registry's own 60 s leeway is compensated by the issuer: the token
    # must be refused right after the moment the issuer says it expires.
    time.sleep(max(0.0, issuer.issued[-1].expires_at - time.time()) + 0.3)
    expired = httpx.get(f"{token_registry.url}/v2/", headers=bearer(token))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]


# ---------------------------------------------------------------------------- fault proxy


def test_proxy_forwards_and_rewrites_location(
    fault_proxy: FaultProxy, client: httpx.Client, registry: RegistryServer
) -> None:
    data = os.urandom(5000)
    started = client.post("/v2/harness/proxied/blobs/uploads/")
    assert started.headers["Location"].startswith(fault_proxy.url + "/")
    digest = upload_blob(client, "harness/proxied", data)
    response = client.get(f"/v2/harness/proxied/blobs/{digest}")
    assert response.content == data
    # Chunked request bodies are forwarded too (PATCH of an upload session).
    session = client.post("/v2/harness/proxied/blobs/uploads/").headers["Location"]
    patched = client.patch(session, content=iter([data[:100], data[100:]]))
    assert patched.status_code == 202
    assert patched.headers["Range"] == f"0-{len(data) - 1}"
    assert fault_proxy.count(method="POST", status=202) == 3
    assert fault_proxy.count(method="PATCH") == 1
    record = fault_proxy.requests[-1]
    assert (record.method, record.status, record.fault) == ("PATCH", 202, None)
    with httpx.Client() as direct:
        assert direct.get(f"{registry.url}/v2/harness/proxied/blobs/{digest}").content == data


def test_proxy_status_fault_once_then_success(
    fault_proxy: FaultProxy, client: httpx.Client, blob: Blob
) -> None:
    fault = fault_proxy.add_fault(
        None, Respond(503, b"busy"), method="GET", path_contains="/blobs/"
    )
    assert client.head(blob.path).status_code == 200  # HEAD does not match
    first = client.get(blob.path)
    assert (first.status_code, first.content) == (503, b"busy")
    second = client.get(blob.path)
    assert (second.status_code, second.content) == (200, blob.data)
    assert fault.hits == 1 and fault.exhausted
    assert fault_proxy.faults == []
    assert fault_proxy.count(status=503) == 1
    fault_proxy.clear()
    assert fault_proxy.requests == []


def test_proxy_fault_times_and_predicate(
    fault_proxy: FaultProxy, client: httpx.Client, blob: Blob
) -> None:
    fault_proxy.add_fault(lambda r: r.headers.get("x-test") == "yes", Respond(500), times=2)
    assert client.get(blob.path).status_code == 200
    statuses = [client.get(blob.path, headers={"X-Test": "yes"}).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    forever = fault_proxy.add_fault(None, Respond(502), times=None)
    assert [client.get("/v2/").status_code for _ in range(3)] == [502, 502, 502]
    assert forever.remaining is None and forever.hits == 3
    fault_proxy.clear_faults()
    assert client.get("/v2/").status_code == 200


def test_proxy_rate_limit(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, RateLimit(retry_after="2"))
    limited = client.get(blob.path)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert client.get(blob.path).status_code == 200


def test_proxy_reset(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, Reset())
    with pytest.raises(httpx.ReadError):
        client.get(blob.path)
    record = fault_proxy.requests[-1]
    assert record.status is None and record.fault == "Reset(after_upstream=False)"
    assert client.get(blob.path).content == blob.data


def test_proxy_truncates_body(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, Truncate(1000))
    with pytest.raises(httpx.RemoteProtocolError, match="received 1000 bytes"):
        client.get(blob.path)
    assert fault_proxy.requests[-1].bytes_sent == 1000
    # Streamed: headers promise the whole blob.
    fault_proxy.add_fault(None, Truncate(10))
    with client.stream("GET", blob.path) as response:
        assert response.headers["Content-Length"] == str(len(blob.data))
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_proxy_flips_bits(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, FlipBits(offset=40_000, mask=0x80))
    corrupted = client.get(blob.path).content
    assert len(corrupted) == len(blob.data)
    assert [i for i in range(len(blob.data)) if corrupted[i] != blob.data[i]] == [40_000]
    assert corrupted[40_000] == blob.data[40_000] ^ 0x80


def test_proxy_stall(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, Stall(0.5))
    started = time.monotonic()
    assert client.get(blob.path).content == blob.data
    assert time.monotonic() - started >= 0.5
    # A client that gives up during a stall does not disturb the proxy.
    fault_proxy.add_fault(None, Stall(1.0))
    with pytest.raises(httpx.ReadTimeout):
        client.get(blob.path, timeout=0.2)
    assert client.get(blob.path).content == blob.data


def test_proxy_redirect_to_upstream(
    fault_proxy: FaultProxy, client: httpx.Client, blob: Blob, registry: RegistryServer
) -> None:
    fault_proxy.add_fault(None, RedirectToUpstream(status=307), path_contains="/blobs/")
    redirect = client.get(blob.path)
    assert redirect.status_code == 307
    assert redirect.headers["Location"] == registry.url + blob.path
    fault_proxy.add_fault(None, RedirectToUpstream(status=307), path_contains="/blobs/")
    followed = client.get(blob.path, follow_redirects=True)
    assert followed.content == blob.data
    assert str(followed.url) == registry.url + blob.path


def test_proxy_redirect_to_url(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, Redirect(f"{fault_proxy.url}{blob.path}?moved=1", status=302))
    response = client.get("/v2/elsewhere/blobs/x", follow_redirects=True)
    assert response.content == blob.data
    assert fault_proxy.requests[-1].query == "moved=1"


def test_proxy_redirect_loop(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, RedirectLoop(), times=None)
    with pytest.raises(httpx.TooManyRedirects):
        client.get(blob.path, follow_redirects=True)
    assert f"{LOOP_MARKER}=3" in fault_proxy.requests[3].query
    # A bounded loop ends at the upstream, with the marker removed.
    fault_proxy.clear_faults()
    fault_proxy.add_fault(None, RedirectLoop(), times=3)
    assert client.get(blob.path, follow_redirects=True).content == blob.data


def test_proxy_strips_range(fault_proxy: FaultProxy, client: httpx.Client, blob: Blob) -> None:
    fault_proxy.add_fault(None, StripRange())
    assert client.get(blob.path).status_code == 200  # no Range: fault not consumed
    whole = client.get(blob.path, headers={"Range": "bytes=0-99"})
    assert (whole.status_code, whole.content) == (200, blob.data)
    part = client.get(blob.path, headers={"Range": "bytes=0-99"})
    assert (part.status_code, part.content) == (206, blob.data[:100])


def test_proxy_rejects_multi_range(
    fault_proxy: FaultProxy, client: httpx.Client, blob: Blob
) -> None:
    fault_proxy.add_fault(None, RejectMultiRange(), times=None)
    single = client.get(blob.path, headers={"Range": "bytes=10-19"})
    assert (single.status_code, single.content) == (206, blob.data[10:20])
    multi = client.get(blob.path, headers={"Range": "bytes=0-9,20-29"})
    assert multi.status_code == 400
    assert fault_proxy.requests[-1].range == "bytes=0-9,20-29"
    # Without the fault, distribution itself answers multi-range requests.
    fault_proxy.clear_faults()
    multi = client.get(blob.path, headers={"Range": "bytes=0-9,20-29"})
    assert multi.status_code == 206
    assert multi.headers["Content-Type"].startswith("multipart/byteranges")


def test_proxy_survives_clients_hanging_up(
    fault_proxy: FaultProxy, client: httpx.Client, blob: Blob
) -> None:
    # Mid-request-body, and mid-response-body.
    with socket.create_connection(("127.0.0.1", fault_proxy.port)) as raw:
        raw.sendall(
            b"PUT /v2/x/blobs/uploads/y HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab"
        )
    with socket.create_connection(("127.0.0.1", fault_proxy.port)) as raw:
        raw.sendall(f"GET {blob.path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 200")
    assert client.get(blob.path).content == blob.data


def test_proxy_passes_auth_to_tls_upstream(tls_registry: RegistryServer) -> None:
    with (
        FaultProxy(tls_registry.url, ca_file=tls_registry.ca_file) as proxy,
        httpx.Client(base_url=proxy.url) as c,
    ):
        denied = c.get("/v2/")
        assert denied.status_code == 401
        assert denied.headers["WWW-Authenticate"].startswith("Basic ")
        assert c.get("/v2/", auth=("alice", "wonderland")).status_code == 200
        assert proxy.requests[-1].headers["authorization"].startswith("Basic ")


def test_proxy_keeps_bearer_challenge(token_registry: RegistryServer) -> None:
    issuer = token_registry.issuer
    assert issuer is not None
    with FaultProxy(token_registry.url) as proxy:
        challenge = httpx.get(f"{proxy.url}/v2/")
    assert challenge.status_code == 401
    assert f'realm="{issuer.realm}"' in challenge.headers["WWW-Authenticate"]


def test_pull_through_cache_variant(registry: RegistryServer, blob: Blob, tmp_path: Path) -> None:
    with RegistryServer(tmp_path, proxy_remote_url=registry.url) as cache:
        assert "remoteurl" in cache.config_path.read_text()
        response = httpx.get(f"{cache.url}{blob.path}")
    assert response.status_code == 200
    assert response.content == blob.data
