"""An asynchronous client for the OCI distribution API (trio + httpx).

:class:`RegistryClient` resolves references to verified manifests and configs, fetches
blobs whole, streamed, or by byte ranges (several per request where the server allows), and
pushes blobs and manifests. It handles the parts of talking to real registries that every
caller would otherwise repeat:

* authentication: Basic and Bearer tokens from the ``WWW-Authenticate`` challenge, with
  credentials from :class:`~lazyfs.oci.credentials.CredentialStore`;
* redirects of blob requests to storage URLs, remembered for a short time;
* bounded retries with backoff on connection errors, timeouts, truncated bodies, ``429``
  (honouring ``Retry-After``) and ``5xx``;
* servers that ignore ``Range`` (``200`` with the whole blob) or refuse several ranges in one
  request (``400``/``416``): the client notices and adapts for that host.

Everything fetched whole is verified against its digest before it is returned. Byte ranges
cannot be verified here (the digest covers the whole blob): callers verify what they decode
from them against the layer index's chunk digests.
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urljoin, urlsplit

import httpx
import trio

from ..errors import (
    AuthError,
    DigestMismatch,
    LazyfsError,
    ManifestError,
    MultipartError,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    unwrap_task_errors,
)
from . import mediatypes
from ._auth import Authenticator, RetryableAuthFailure, scope_for
from ._transport import (
    DEFAULT_TIMEOUT,
    TransferStats,
    Transport,
    is_certificate_failure,
    is_name_resolution_failure,
)
from .credentials import CredentialStore
from .digest import Digest, Verifier
from .hosts import HostPolicy
from .manifest import Descriptor, ImageManifest
from .mirrors import Endpoint, endpoints_for
from .multipart import boundary_from_content_type, parse_byteranges, parse_content_range
from .platform import Platform
from .reference import Reference, api_host
from .resolve import FetchedManifest, ResolvedImage, resolve_image
from .retry import RetryPolicy, parse_retry_after

__all__ = ["FetchedManifest", "RegistryClient", "ResolvedImage", "TransferStats", "range_slots"]

log = logging.getLogger("lazyfs.registry")

T = TypeVar("T")

#: Largest manifest accepted (the distribution registry's own limit).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: Largest image config accepted.
MAX_CONFIG_SIZE = 16 * 1024 * 1024
#: Largest blob :meth:`RegistryClient.get_blob` keeps in memory unless told otherwise.
DEFAULT_MAX_BLOB_IN_MEMORY = 64 * 1024 * 1024
#: How long a storage URL a registry redirected a blob to is used directly.
REDIRECT_TTL = 60.0
MAX_REDIRECTS = 5
#: Ranges per multi-range request (keeps the Range header well below servers' limits).
MAX_RANGES_PER_REQUEST = 64

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_PULL = ("pull",)
_PUSH = ("pull", "push")


class _Retry(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class _MultiRangeRefused(Exception):
    """The server will not answer several ranges in one request."""


@dataclass(slots=True)
class _Redirect:
    url: str
    expires_at: float


#: Set while a mirror is tried: one attempt only, the next host is the retry.
_ONE_ATTEMPT: contextvars.ContextVar[bool] = contextvars.ContextVar("one_attempt", default=False)


def range_slots(
    ranges: Sequence[tuple[int, int]], buffer: bytearray | memoryview
) -> list[memoryview]:
    """The slices of ``buffer`` that ``ranges`` are read into, one after the other (what
    every ``read_ranges_into`` returns); ValueError if ``buffer`` is too small."""
    view = memoryview(buffer).cast("B")
    if len(view) < sum(length for _, length in ranges):
        raise ValueError("buffer is smaller than the ranges asked for")
    slots = []
    position = 0
    for _, length in ranges:
        slots.append(view[position : position + length])
        position += length
    return slots


class RegistryClient:
    """Talks to OCI registries. Use as ``async with RegistryClient(...) as client``.

    One client serves any number of registries and repositories; per-host state (scheme,
    tokens, range support, redirect targets) is kept for the client's lifetime.
    """

    def __init__(
        self,
        *,
        credentials: CredentialStore | None = None,
        hosts: HostPolicy | None = None,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        monolithic_upload_limit: int = 32 * 1024 * 1024,
        upload_chunk_size: int = 16 * 1024 * 1024,
        range_concurrency: int = 8,
        redirect_ttl: float = REDIRECT_TTL,
        hosts_dir: Path | None = None,
    ) -> None:
        self._policy = hosts or HostPolicy()
        self._transport = Transport(self._policy, timeout=timeout)
        self._auth = Authenticator(self._transport, credentials or CredentialStore())
        self._retry = retry or RetryPolicy()
        self._monolithic_limit = monolithic_upload_limit
        self._chunk_size = upload_chunk_size
        self._range_limit = trio.CapacityLimiter(range_concurrency)
        self._redirect_ttl = redirect_ttl
        self._redirects: dict[tuple[str, str, str], _Redirect] = {}
        self._no_multirange: set[str] = set()
        self._ignores_ranges: set[str] = set()
        self._hosts_dir = hosts_dir
        #: Requests a mirror failed and the next host (or the origin) took over.
        self.mirror_fallbacks = 0
        self._endpoints: dict[str, list[Endpoint] | None] = {}
        self._pinned: dict[str, tuple[str, str]] = {}  # host -> (scheme://host, API root)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()

    @property
    def stats(self) -> TransferStats:
        """Requests and bytes sent and received so far."""
        return self._transport.stats

    # ------------------------------------------------------------------ plumbing

    async def _url(self, ref: Reference, tail: str) -> str:
        pinned = self._pinned.get(ref.registry)
        if pinned is not None:
            base, root = pinned
            return f"{base}{root}/{ref.repository}/{tail}"
        base = await self._transport.base_url(api_host(ref.registry))
        return f"{base}/v2/{ref.repository}/{tail}"

    # ------------------------------------------------------------------ mirrors

    def _endpoints_of(self, registry: str) -> list[Endpoint] | None:
        """The hosts.toml endpoints of ``registry`` (None: none configured)."""
        if registry not in self._endpoints:
            endpoints = endpoints_for(registry, self._hosts_dir)
            self._endpoints[registry] = endpoints
            for e in endpoints or ():
                if e.implicit:
                    continue  # the origin as usual: scheme probed, the client's TLS options
                self._pinned[e.host] = (f"{e.scheme}://{e.host}", e.api_root)
                self._policy.add_host(
                    e.host,
                    insecure=e.skip_verify or e.scheme == "http",
                    ca_files=e.ca_files,
                    client_cert=e.client_cert,
                )
        return self._endpoints[registry]

    async def _routed(
        self, ref: Reference, capability: str, call: Callable[[Reference], Awaitable[T]]
    ) -> T:
        """``call(ref)`` through the endpoints hosts.toml gives ``ref``'s registry: each one
        that has ``capability``, in order, the origin last; the next is tried when one
        fails. A mirror gets one attempt (no retries): the next endpoint is the retry."""
        endpoints = self._endpoints_of(ref.registry)
        if not endpoints:
            return await call(ref)
        usable = [e for e in endpoints if e.can(capability) or e.origin]
        for n, e in enumerate(usable):
            routed = ref if e.implicit else dataclasses.replace(ref, registry=e.host)
            last = n == len(usable) - 1
            token = _ONE_ATTEMPT.set(not last)
            try:
                return await call(routed)
            except (RegistryUnreachable, RegistryError, AuthError, DigestMismatch) as exc:
                if last:
                    raise
                log.info("%s: %s failed (%s); trying the next host", ref, e.host, exc)
                self.mirror_fallbacks += 1
            finally:
                _ONE_ATTEMPT.reset(token)
        raise AssertionError("unreachable")

    async def _send(
        self,
        method: str,
        ref: Reference,
        url: str,
        *,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send with the registry's credentials; on ``401`` authenticate once and resend."""
        headers = dict(headers or {})
        try:
            auth = await self._auth.header(ref.registry, scopes)
        except RetryableAuthFailure as exc:
            raise _Retry(str(exc), retry_after=parse_retry_after(exc.retry_after)) from exc
        if auth:
            headers["Authorization"] = auth
        resp = await self._transport.send(
            method, url, headers=headers, content=content, stream=stream
        )
        if resp.status_code != 401:
            return resp
        await resp.aclose()
        try:
            auth2 = await self._auth.on_unauthorized(ref.registry, resp, scopes, rejected=auth)
        except RetryableAuthFailure as exc:
            raise _Retry(str(exc), retry_after=parse_retry_after(exc.retry_after)) from exc
        headers["Authorization"] = auth2
        resp = await self._transport.send(
            method, url, headers=headers, content=content, stream=stream
        )
        if resp.status_code == 401:
            await resp.aclose()
            raise AuthError(
                f"{ref.registry} refused access to {ref.repository} ({'/'.join(scopes)})",
                status=401,
            )
        return resp

    async def _attempts(
        self,
        what: str,
        host: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        retry_digest: bool = True,
    ) -> T:
        """Run ``attempt`` until it succeeds, retrying per the policy; map failures to errors.

        Content that fails its digest is fetched again too, unless ``retry_digest`` is off
        (a stream whose consumer already saw the bytes).
        """
        policy = self._retry
        attempts = 1 if _ONE_ATTEMPT.get() else policy.attempts
        last: BaseException | None = None
        for n in range(1, attempts + 1):
            retry_after = None
            try:
                return await attempt()
            except _Retry as exc:
                last, retry_after = exc, exc.retry_after
            except DigestMismatch as exc:
                if not retry_digest:
                    raise
                last = exc
            except httpx.TransportError as exc:
                if is_name_resolution_failure(exc):
                    raise RegistryUnreachable(f"{what}: cannot resolve host {host}") from None
                if is_certificate_failure(exc):
                    raise RegistryUnreachable(
                        f"{what}: TLS certificate of {host} is not trusted "
                        "(add its CA with --ca-cert, or name it with --insecure-registry)"
                    ) from None
                last = exc
            if n == attempts:
                break
            delay = policy.delay(n, retry_after)
            self._transport.stats.retries += 1
            log.info(
                "%s: %s; retrying in %.2fs (attempt %d of %d)",
                what,
                _describe(last),
                delay,
                n + 1,
                attempts,
            )
            await trio.sleep(delay)
        assert last is not None
        if isinstance(last, DigestMismatch):
            raise last
        if isinstance(last, _Retry):
            raise RegistryError(
                f"{what}: {last} (gave up after {attempts} attempts)", status=last.status
            )
        raise RegistryUnreachable(f"{what}: {_describe(last)} (gave up after {attempts} attempts)")

    async def _check(self, resp: httpx.Response, what: str, ok: Sequence[int] = (200,)) -> None:
        """Raise the right error for a response whose status is not in ``ok``."""
        code = resp.status_code
        if code in ok:
            return
        if not resp.is_closed:
            try:
                await resp.aread()
            except httpx.HTTPError:
                pass
            finally:
                await resp.aclose()
        detail = _registry_error_detail(resp)
        if code == 429 or code >= 500:
            raise _Retry(
                f"registry answered {code}{detail}",
                status=code,
                retry_after=parse_retry_after(resp.headers.get("retry-after")),
            )
        if code == 404:
            raise NotFound(f"{what}: not found{detail}", status=code)
        if code in (401, 403):
            raise AuthError(f"{what}: access denied ({code}){detail}", status=code)
        raise RegistryError(f"{what}: registry answered {code}{detail}", status=code)

    # ------------------------------------------------------------------ manifests

    async def get_manifest(self, ref: Reference) -> FetchedManifest:
        """Fetch the manifest or index ``ref`` names, verified against its digest.

        With a digest in ``ref`` the body must hash to it; with a tag only, the
        ``Docker-Content-Digest`` header (when sent) must match the body. Mirrors with the
        ``resolve`` capability answer tags, those with ``pull`` digests (hosts.toml).
        """
        capability = "pull" if ref.digest is not None else "resolve"
        return await self._routed(ref, capability, self._get_manifest)

    async def _get_manifest(self, ref: Reference) -> FetchedManifest:
        what = f"manifest {ref}"

        async def attempt() -> FetchedManifest:
            url = await self._url(ref, f"manifests/{ref.reference}")
            resp = await self._send(
                "GET",
                ref,
                url,
                scopes=(scope_for(ref.repository, _PULL),),
                headers={"Accept": mediatypes.MANIFEST_ACCEPT},
            )
            await self._check(resp, what)
            data = resp.content
            if len(data) > MAX_MANIFEST_SIZE:
                raise ManifestError(
                    f"{what}: {len(data)} bytes is larger than the {MAX_MANIFEST_SIZE}-byte limit"
                )
            if ref.digest is not None:
                ref.digest.verify(data, what)
                digest = ref.digest
            else:
                digest = Digest.of(data)
                sent = resp.headers.get("docker-content-digest")
                if sent:
                    try:
                        claimed = Digest(sent)
                    except LazyfsError:
                        claimed = None
                    if claimed is not None:
                        claimed.verify(data, f"{what} (Docker-Content-Digest)")
            media_type = resp.headers.get("content-type", "").split(";")[0].strip()
            if media_type not in mediatypes.MANIFEST_TYPES | mediatypes.INDEX_TYPES:
                media_type = ""  # generic (application/json...): the body will tell
            return FetchedManifest(data, media_type, digest)

        return await self._attempts(what, ref.registry, attempt)

    async def resolve(
        self,
        ref: Reference,
        platform: Platform | None = None,
        *,
        on_manifest: Callable[[ImageManifest], object] | None = None,
    ) -> ResolvedImage:
        """Resolve ``ref`` to one platform's manifest and config, all verified.

        See :func:`~lazyfs.oci.resolve.resolve_image` for how a platform is chosen and for
        ``on_manifest``.
        """

        async def manifest(desc: Descriptor) -> FetchedManifest:
            return await self.get_manifest(ref.with_digest(desc.digest))

        async def config(desc: Descriptor) -> bytes:
            return await self.get_blob(ref, desc.digest, size=desc.size, max_size=MAX_CONFIG_SIZE)

        top = await self.get_manifest(ref)
        return await resolve_image(ref, top, manifest, config, platform, on_manifest)

    # ------------------------------------------------------------------ blobs

    async def _blob_response(
        self,
        ref: Reference,
        digest: Digest,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        stream: bool = False,
        ok: Sequence[int] = (200,),
    ) -> httpx.Response:
        """The response for a blob, following redirects (remembered for a while)."""
        what = f"blob {digest} in {ref.name}"
        headers = {"Accept-Encoding": "identity", **(headers or {})}
        key = (ref.registry, ref.repository, str(digest))
        cached = self._redirects.get(key)
        if cached is not None:
            if cached.expires_at > time.monotonic():
                resp = await self._transport.send(
                    method, cached.url, headers=headers, stream=stream
                )
                if resp.status_code in ok:
                    return resp
                await resp.aclose()
                log.debug(
                    "%s: storage URL answered %d, asking the registry again", what, resp.status_code
                )
            self._redirects.pop(key, None)

        url = await self._url(ref, f"blobs/{digest}")
        registry_origin = _origin(url)
        scopes = (scope_for(ref.repository, _PULL),)
        resp = await self._send(method, ref, url, scopes=scopes, headers=headers, stream=stream)
        hops = 0
        while resp.status_code in _REDIRECT_CODES:
            location = resp.headers.get("location")
            await resp.aclose()
            if not location:
                raise RegistryError(f"{what}: redirect without a Location", status=resp.status_code)
            hops += 1
            if hops > MAX_REDIRECTS:
                raise RegistryError(
                    f"{what}: more than {MAX_REDIRECTS} redirects (a redirect loop?)"
                )
            url = urljoin(url, location)
            if _origin(url) == registry_origin:
                resp = await self._send(
                    method, ref, url, scopes=scopes, headers=headers, stream=stream
                )
            else:
                # Never send registry credentials to storage.
                resp = await self._transport.send(method, url, headers=headers, stream=stream)
        if hops and resp.status_code in ok:
            self._redirects[key] = _Redirect(url, time.monotonic() + self._redirect_ttl)
        await self._check(resp, what, ok)
        return resp

    async def blob_size(self, ref: Reference, digest: Digest) -> int | None:
        """The size of a blob if the repository has it, else None."""
        return await self._routed(ref, "pull", lambda r: self._blob_size(r, digest))

    async def _blob_size(self, ref: Reference, digest: Digest) -> int | None:
        """The size of a blob if the repository has it, else None."""
        what = f"blob {digest} in {ref.name}"

        async def attempt() -> int | None:
            try:
                resp = await self._blob_response(ref, digest, method="HEAD")
            except NotFound:
                return None
            length = resp.headers.get("content-length")
            return int(length) if length and length.isdigit() else None

        return await self._attempts(what, ref.registry, attempt)

    async def stream_blob(
        self,
        ref: Reference,
        digest: Digest,
        sink: Callable[[bytes], object],
        *,
        size: int | None = None,
    ) -> int:
        """Feed a whole blob to ``sink`` in pieces, then verify it; returns its size.

        ``sink`` may be a plain or an async function. A connection that breaks mid-body is
        resumed with a ``Range`` request from where it stopped, so ``sink`` sees every byte
        exactly once, in order. The digest (and ``size``, if given) is checked after the
        last piece: on :class:`~lazyfs.errors.DigestMismatch` the caller must discard what
        ``sink`` received.
        """
        delivered = 0

        def counting(piece):
            nonlocal delivered
            delivered += len(piece)
            return sink(piece)

        async def one(routed: Reference) -> int:
            if delivered:
                # Bytes already went to the sink from another host: no switching now.
                raise RegistryError(f"blob {digest}: the transfer broke after {delivered} bytes")
            return await self._stream_blob(routed, digest, counting, size=size)

        return await self._routed(ref, "pull", one)

    async def _stream_blob(
        self,
        ref: Reference,
        digest: Digest,
        sink: Callable[[bytes], object],
        *,
        size: int | None = None,
    ) -> int:
        what = f"blob {digest} in {ref.name}"
        verifier = Verifier(digest, what, size)
        received = 0

        async def attempt() -> None:
            nonlocal received
            headers = {"Range": f"bytes={received}-"} if received else None
            resp = await self._blob_response(
                ref, digest, headers=headers, stream=True, ok=(200, 206)
            )
            try:
                skip = 0
                if received:
                    if resp.status_code == 200:
                        skip = received  # the server ignored Range: drop what we have
                    else:
                        start, _, _ = parse_content_range(resp.headers.get("content-range", ""))
                        if start != received:
                            raise _Retry(f"resumed at byte {start}, wanted {received}")
                async for piece in resp.aiter_bytes():
                    self._transport.count_received(len(piece))
                    if skip:
                        if len(piece) <= skip:
                            skip -= len(piece)
                            continue
                        piece, skip = piece[skip:], 0
                    if size is not None and received + len(piece) > size:
                        raise DigestMismatch(f"{what}: longer than its declared {size} bytes")
                    verifier.update(piece)
                    received += len(piece)
                    result = sink(piece)
                    if inspect.isawaitable(result):
                        await result
            except MultipartError as exc:
                raise _Retry(str(exc)) from exc
            finally:
                await resp.aclose()

        await self._attempts(what, ref.registry, attempt, retry_digest=False)
        verifier.finish()
        return received

    async def get_blob(
        self,
        ref: Reference,
        digest: Digest,
        *,
        size: int | None = None,
        max_size: int = DEFAULT_MAX_BLOB_IN_MEMORY,
    ) -> bytes:
        """A whole blob in memory, verified. Refuses blobs larger than ``max_size``."""
        what = f"blob {digest} in {ref.name}"
        if size is not None and size > max_size:
            raise RegistryError(f"{what}: {size} bytes is too large to fetch into memory")
        buf = bytearray()

        def sink(piece: bytes) -> None:
            if len(buf) + len(piece) > max_size:
                raise RegistryError(f"{what}: larger than {max_size} bytes")
            buf.extend(piece)

        for n in range(1, self._retry.attempts + 1):
            buf.clear()
            try:
                await self.stream_blob(ref, digest, sink, size=size)
                return bytes(buf)
            except DigestMismatch:
                if n == self._retry.attempts:
                    raise
                log.info("%s: digest mismatch, fetching it again", what)
        raise AssertionError("unreachable")

    async def fetch_range(self, ref: Reference, digest: Digest, offset: int, length: int) -> bytes:
        """``length`` bytes of a blob from ``offset``: unverified, see the module docs."""
        return (await self.fetch_ranges(ref, digest, [(offset, length)]))[0]

    async def fetch_ranges(
        self,
        ref: Reference,
        digest: Digest,
        ranges: Sequence[tuple[int, int]],
        *,
        blob_size: int | None = None,
    ) -> list[bytes]:
        """Several ``(offset, length)`` ranges of a blob, in the order asked, unverified.

        Uses ``multipart/byteranges`` requests while the server accepts them, single-range
        requests (several at once) otherwise. With ``blob_size`` known, a range reaching past
        the end is an error here rather than a ``416`` from the server.
        """
        buffer = bytearray(sum(length for _, length in ranges))
        views = await self.fetch_ranges_into(ref, digest, ranges, buffer, blob_size=blob_size)
        return [bytes(view) for view in views]

    async def fetch_ranges_into(
        self,
        ref: Reference,
        digest: Digest,
        ranges: Sequence[tuple[int, int]],
        buffer: bytearray | memoryview,
        *,
        blob_size: int | None = None,
    ) -> list[memoryview]:
        """:meth:`fetch_ranges`, with the bytes written into ``buffer``.

        Range ``k`` goes to ``buffer[p : p + length_k]``, ``p`` being the sum of the lengths
        of the ranges before it, so ``buffer`` must hold at least the sum of all the lengths.
        Returns those slices of ``buffer`` (memoryviews), in the order asked. Response bodies
        are streamed into place as they arrive, so a caller that reuses its buffers fetches
        without allocating memory for the data. Until the call returns (and after it fails)
        the content of ``buffer`` is undefined.
        """
        _check_ranges(ranges, blob_size)
        return await self._routed(
            ref, "pull", lambda r: self._fetch_ranges_into(r, digest, ranges, buffer)
        )

    async def _fetch_ranges_into(
        self,
        ref: Reference,
        digest: Digest,
        ranges: Sequence[tuple[int, int]],
        buffer: bytearray | memoryview,
    ) -> list[memoryview]:
        slots = range_slots(ranges, buffer)
        wanted = [(off, length, slots[i]) for i, (off, length) in enumerate(ranges) if length > 0]
        if not wanted:
            return slots
        host = api_host(ref.registry)

        async def single(target: _Target) -> None:
            async with self._range_limit:
                await self._fetch_single(ref, digest, target)

        async def batch(items: list[_Target]) -> None:
            try:
                async with self._range_limit:
                    await self._fetch_multi(ref, digest, items)
            except _MultiRangeRefused:
                log.info("%s does not answer multi-range requests; using single ranges", host)
                self._no_multirange.add(host)
                with unwrap_task_errors():
                    async with trio.open_nursery() as inner:
                        for item in items:
                            inner.start_soon(single, item)

        with unwrap_task_errors():
            async with trio.open_nursery() as nursery:
                if host in self._ignores_ranges:
                    # Every request brings the whole blob: one request serves all the ranges.
                    nursery.start_soon(batch, wanted)
                elif len(wanted) == 1 or host in self._no_multirange:
                    for item in wanted:
                        nursery.start_soon(single, item)
                else:
                    for k in range(0, len(wanted), MAX_RANGES_PER_REQUEST):
                        nursery.start_soon(batch, wanted[k : k + MAX_RANGES_PER_REQUEST])
        return slots

    async def _fetch_single(self, ref: Reference, digest: Digest, target: _Target) -> None:
        off, length, _ = target
        what = f"bytes {off}-{off + length - 1} of blob {digest} in {ref.name}"
        host = api_host(ref.registry)

        async def attempt() -> None:
            headers = {"Range": f"bytes={off}-{off + length - 1}"}
            resp = await self._blob_response(
                ref, digest, headers=headers, stream=True, ok=(200, 206)
            )
            await self._receive(resp, [target], what, host)

        await self._attempts(what, ref.registry, attempt)

    async def _fetch_multi(self, ref: Reference, digest: Digest, targets: list[_Target]) -> None:
        what = f"{len(targets)} ranges of blob {digest} in {ref.name}"
        spec = ",".join(f"{o}-{o + n - 1}" for o, n, _ in targets)
        host = api_host(ref.registry)

        async def attempt() -> None:
            try:
                resp = await self._blob_response(
                    ref, digest, headers={"Range": f"bytes={spec}"}, stream=True, ok=(200, 206)
                )
            except RegistryError as exc:
                if exc.status in (400, 416):
                    raise _MultiRangeRefused() from exc
                raise
            try:
                await self._receive(resp, targets, what, host)
            except MultipartError as exc:
                # A body we cannot make sense of: do not trust this server with multi-range.
                raise _MultiRangeRefused() from exc

        await self._attempts(what, ref.registry, attempt)

    async def _receive(
        self, resp: httpx.Response, targets: list[_Target], what: str, host: str
    ) -> None:
        """Copy the targets' bytes out of a 200, single-part 206 or multipart 206 response.

        Closes ``resp``. Single-part bodies (and whole blobs) are copied piece by piece as
        they arrive; a multipart body is read whole first (its parts are found by parsing).
        """
        try:
            if resp.status_code == 200:
                if host not in self._ignores_ranges:
                    log.info("%s ignores Range requests; whole blobs will be sent", host)
                    self._ignores_ranges.add(host)
                received = await self._stream_into(resp, 0, targets)
                for off, length, _ in targets:
                    if off + length > received:
                        raise RegistryError(f"{what}: the blob is only {received} bytes")
                return
            boundary = boundary_from_content_type(resp.headers.get("content-type", ""))
            if boundary is None:
                start, end, _ = parse_content_range(resp.headers.get("content-range", ""))
                _check_covered([(start, end + 1)], targets, what)
                received = await self._stream_into(resp, start, targets)
                if received != end + 1 - start:
                    raise _Retry(f"{what}: got {received} bytes for a {end + 1 - start}-byte range")
                return
            body = await resp.aread()
            self._transport.count_received(len(body))
            parts = parse_byteranges(body, boundary)
            _check_covered([(p.start, p.end + 1) for p in parts], targets, what)
            for off, length, slot in targets:
                for part in parts:
                    if part.start <= off and off + length <= part.end + 1:
                        skip = off - part.start
                        slot[:] = memoryview(part.data)[skip : skip + length]
                        break
        finally:
            await resp.aclose()

    async def _stream_into(self, resp: httpx.Response, base: int, targets: list[_Target]) -> int:
        """Copy what a body starting at blob offset ``base`` has of each target; bytes read.

        A whole blob (``base`` 0, a server ignoring ``Range``) is read only as far as the
        targets need.
        """
        position = base
        need = max(off + length for off, length, _ in targets)
        whole_blob = resp.status_code == 200
        async for piece in resp.aiter_bytes():
            size = len(piece)
            self._transport.count_received(size)
            end = position + size
            data = memoryview(piece)
            for off, length, slot in targets:
                lo = max(off, position)
                hi = min(off + length, end)
                if lo < hi:
                    slot[lo - off : hi - off] = data[lo - position : hi - position]
            position = end
            if whole_blob and position >= need:
                break
        return position - base

    # ------------------------------------------------------------------ push

    async def push_blob(
        self,
        ref: Reference,
        digest: Digest,
        source: BlobContent | Callable[[], Awaitable[BlobContent]],
        *,
        mount_from: Sequence[str] = (),
    ) -> str:
        """Make sure ``ref``'s repository has the blob; returns how.

        ``"exists"`` if it was there already, ``"mounted"`` if the registry linked it from
        one of the ``mount_from`` repositories (same registry), ``"uploaded"`` otherwise.
        ``source`` is the blob's bytes or a path to a file holding them, or an async
        function giving either, called only if the blob has to be uploaded (so a caller
        need not fetch what a mount makes unnecessary). Blobs up to the monolithic limit go
        up in one ``PUT``, bigger ones in ``PATCH`` chunks. The registry's digest must match.
        """
        what = f"push of blob {digest} to {ref.name}"
        if await self.blob_size(ref, digest) is not None:
            return "exists"
        blob: _BlobSource | None = None

        async def content() -> _BlobSource:
            nonlocal blob
            if blob is None:
                blob = _BlobSource(await source() if callable(source) else source)
            return blob

        scopes = (scope_for(ref.repository, _PUSH), *(scope_for(r, _PULL) for r in mount_from))

        async def attempt() -> str:
            location = None
            for src in mount_from:
                url = await self._url(
                    ref, f"blobs/uploads/?mount={quote(str(digest))}&from={quote(src)}"
                )
                resp = await self._send("POST", ref, url, scopes=scopes)
                if resp.status_code == 201:
                    return "mounted"
                await self._check(resp, what, ok=(202,))
                location = _location(resp, url, what)
                break
            if location is None:
                url = await self._url(ref, "blobs/uploads/")
                resp = await self._send("POST", ref, url, scopes=scopes)
                await self._check(resp, what, ok=(202,))
                location = _location(resp, url, what)
            blob = await content()
            if blob.size <= self._monolithic_limit:
                final = _with_query(location, "digest", str(digest))
                resp = await self._send(
                    "PUT",
                    ref,
                    final,
                    scopes=scopes,
                    content=blob.read(0, blob.size),
                    headers={"Content-Type": "application/octet-stream"},
                )
            else:
                offset = 0
                while offset < blob.size:
                    piece = blob.read(offset, min(self._chunk_size, blob.size - offset))
                    resp = await self._send(
                        "PATCH",
                        ref,
                        location,
                        scopes=scopes,
                        content=piece,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                        },
                    )
                    await self._check(resp, what, ok=(202,))
                    location = _location(resp, location, what)
                    offset += len(piece)
                final = _with_query(location, "digest", str(digest))
                resp = await self._send("PUT", ref, final, scopes=scopes, content=b"")
            await self._check(resp, what, ok=(201, 204))
            _check_digest_header(resp, digest, what)
            return "uploaded"

        return await self._attempts(what, ref.registry, attempt)

    async def push_manifest(self, ref: Reference, data: bytes, media_type: str) -> Digest:
        """Store a manifest or index under ``ref``'s tag (or its digest if it has no tag)."""
        digest = Digest.of(data)
        if ref.digest is not None and ref.digest != digest:
            raise DigestMismatch(f"manifest for {ref}: its content hashes to {digest}")
        target = ref.tag if ref.tag is not None else str(digest)
        what = f"push of manifest {target} to {ref.name}"

        async def attempt() -> Digest:
            url = await self._url(ref, f"manifests/{target}")
            resp = await self._send(
                "PUT",
                ref,
                url,
                scopes=(scope_for(ref.repository, _PUSH),),
                content=data,
                headers={"Content-Type": media_type},
            )
            await self._check(resp, what, ok=(201, 200, 204))
            _check_digest_header(resp, digest, what)
            return digest

        return await self._attempts(what, ref.registry, attempt)


BlobContent = bytes | bytearray | memoryview | os.PathLike[str] | str


class _BlobSource:
    """Bytes in memory or a file, read by (offset, length)."""

    def __init__(self, source: bytes | bytearray | memoryview | os.PathLike[str] | str) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._data: memoryview | None = memoryview(source)
            self._path = None
            self.size = len(self._data)
        else:
            self._data = None
            self._path = Path(source)
            self.size = self._path.stat().st_size

    def read(self, offset: int, length: int) -> bytes:
        if self._data is not None:
            return bytes(self._data[offset : offset + length])
        with open(self._path, "rb") as f:  # type: ignore[arg-type]
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise LazyfsError(f"{self._path} changed size while it was being pushed")
        return data


#: One range to fetch: blob offset, length, and where its bytes go.
_Target = tuple[int, int, memoryview]


def _check_ranges(ranges: Sequence[tuple[int, int]], blob_size: int | None) -> None:
    for off, length in ranges:
        if off < 0 or length < 0:
            raise ValueError(f"bad range ({off}, {length})")
        if blob_size is not None and off + length > blob_size:
            raise ValueError(
                f"range ({off}, {length}) is past the end of the {blob_size}-byte blob"
            )


def _check_covered(parts: list[tuple[int, int]], targets: list[_Target], what: str) -> None:
    """Raise MultipartError unless each target lies within one of the ``[start, end)`` parts."""
    for off, length, _ in targets:
        if not any(start <= off and off + length <= end for start, end in parts):
            raise MultipartError(
                f"{what}: the response does not cover bytes {off}-{off + length - 1}"
            )


def _location(resp: httpx.Response, base: str, what: str) -> str:
    """The absolute upload URL a registry answered with."""
    location = resp.headers.get("location")
    if not location:
        raise RegistryError(
            f"{what}: the registry sent no upload location", status=resp.status_code
        )
    return urljoin(base, location)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _with_query(url: str, key: str, value: str) -> str:
    """Append ``key=value`` to ``url``'s query, keeping the parameters it has."""
    sep = "&" if urlsplit(url).query else ("" if url.endswith("?") else "?")
    return f"{url}{sep}{key}={quote(value)}"


def _check_digest_header(resp: httpx.Response, digest: Digest, what: str) -> None:
    sent = resp.headers.get("docker-content-digest")
    if sent and sent != str(digest):
        raise DigestMismatch(f"{what}: the registry stored it as {sent}")


def _registry_error_detail(resp: httpx.Response) -> str:
    """``": CODE: message"`` from a registry's JSON error body, when it has one."""
    try:
        errors = resp.json().get("errors") or []
        first = errors[0]
        code, message = first.get("code", ""), first.get("message", "")
    except Exception:
        return ""
    text = ": ".join(str(x) for x in (code, message) if x)
    return f" ({text[:200]})" if text else ""


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.TransportError):
        return f"connection failed ({type(exc).__name__}: {exc or 'no detail'})"
    return str(exc)
