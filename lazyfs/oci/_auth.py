"""Registry authentication: Basic and the Docker token (Bearer) flow.

Private to :mod:`lazyfs.oci`. The first ``401`` from a registry tells which scheme it wants
(the ``WWW-Authenticate`` challenge); after that, requests for a new scope get their token
before they are sent. Tokens are cached per registry and scope until shortly before they
expire, and dropped when the registry rejects them. Secrets never reach logs or messages.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import trio

from ..errors import AuthError, RegistryError
from ._transport import Transport
from .challenge import Challenge, parse_www_authenticate_headers
from .credentials import Credentials, CredentialStore

log = logging.getLogger("lazyfs.registry")

#: Docker clients treat tokens as valid for at least this long, whatever ``expires_in`` says.
MIN_TOKEN_LIFETIME = 60.0
#: Renew a cached token this long before it expires.
EXPIRY_MARGIN = 5.0


def scope_for(repository: str, actions: tuple[str, ...]) -> str:
    return f"repository:{repository}:{','.join(actions)}"


@dataclass(slots=True)
class _Token:
    value: str
    expires_at: float


class RetryableAuthFailure(Exception):
    """The token endpoint failed in a way worth retrying (5xx, 429, connection)."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Authenticator:
    """Produces ``Authorization`` header values for registry requests."""

    def __init__(self, transport: Transport, credentials: CredentialStore) -> None:
        self._transport = transport
        self._credentials = credentials
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}
        self._locks: dict[tuple[str, tuple[str, ...]], trio.Lock] = {}

    async def header(self, registry: str, scopes: tuple[str, ...]) -> str | None:
        """The header to send up front, if this registry's scheme is known already."""
        challenge = self._challenges.get(registry)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = await self._credentials.lookup(registry)
            return _basic(creds) if creds else None
        return await self._bearer(registry, challenge, scopes, rejected=None)

    async def on_unauthorized(
        self,
        registry: str,
        response: httpx.Response,
        scopes: tuple[str, ...],
        rejected: str | None,
    ) -> str:
        """A header to retry with after a ``401``; raises :class:`AuthError` if there is none.

        ``rejected`` is the header value the registry just refused, if any: a cached token
        equal to it is dropped so that a fresh one is fetched.
        """
        challenges = parse_www_authenticate_headers(response.headers.get_list("www-authenticate"))
        chosen = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if chosen is None:
            chosen = next((c for c in challenges if c.scheme == "basic"), None)
        if chosen is None:
            raise AuthError(
                f"{registry} requires authentication with an unsupported scheme "
                f"({', '.join(c.scheme for c in challenges) or 'no challenge given'})",
                status=401,
            )
        self._challenges[registry] = chosen
        if chosen.scheme == "basic":
            creds = await self._credentials.lookup(registry)
            if creds is None:
                raise AuthError(f"{registry} requires credentials and none were found", status=401)
            header = _basic(creds)
            if header == rejected:
                raise AuthError(
                    f"{registry} rejected the credentials of user {creds.username!r}", status=401
                )
            return header
        return await self._bearer(registry, chosen, scopes, rejected=rejected)

    async def _bearer(
        self, registry: str, challenge: Challenge, scopes: tuple[str, ...], rejected: str | None
    ) -> str:
        key = (registry, tuple(sorted(scopes)))
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            token = self._tokens.get(key)
            if token is not None and rejected == f"Bearer {token.value}":
                del self._tokens[key]
                token = None
            if token is None or token.expires_at - EXPIRY_MARGIN <= time.monotonic():
                token = await self._fetch_token(registry, challenge, scopes)
                self._tokens[key] = token
            return f"Bearer {token.value}"

    async def _fetch_token(
        self, registry: str, challenge: Challenge, scopes: tuple[str, ...]
    ) -> _Token:
        creds = await self._credentials.lookup(registry)
        realm = challenge.realm or ""
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AuthError(f"{registry} named an invalid token realm {realm!r}", status=401)
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in scopes)
        headers = {"Accept": "application/json"}
        if creds is not None and creds.identity_token:
            # OAuth2 refresh-token grant, as docker uses for identity tokens.
            form = [
                *params,
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", "lazyfs"),
            ]
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            resp = await self._send_token_request("POST", realm, headers, urlencode(form).encode())
        else:
            if creds is not None:
                headers["Authorization"] = _basic(creds)
            query = urlencode(params)
            url = urlunsplit(
                (
                    parts.scheme,
                    parts.netloc,
                    parts.path,
                    "&".join(filter(None, [parts.query, query])),
                    "",
                )
            )
            resp = await self._send_token_request("GET", url, headers, None)
        who = f"user {creds.username!r}" if creds else "anonymous access"
        if resp.status_code in (401, 403):
            raise AuthError(
                f"{registry}: token service refused {who} for {' '.join(scopes)}",
                status=resp.status_code,
            )
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RetryableAuthFailure(
                f"token service answered {resp.status_code}", resp.headers.get("retry-after")
            )
        if resp.status_code != 200:
            raise RegistryError(
                f"{registry}: token service answered {resp.status_code}", status=resp.status_code
            )
        try:
            body = json.loads(resp.content)
            value = body.get("token") or body.get("access_token")
            lifetime = float(body.get("expires_in") or MIN_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError) as exc:
            raise RegistryError(f"{registry}: token service sent an unreadable answer") from exc
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{registry}: token service sent no token")
        log.debug("%s: got a token for %s (%s)", registry, " ".join(scopes), who)
        return _Token(value, time.monotonic() + max(lifetime, MIN_TOKEN_LIFETIME))

    async def _send_token_request(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> httpx.Response:
        try:
            return await self._transport.send(method, url, headers=headers, content=content)
        except httpx.TransportError as exc:
            raise RetryableAuthFailure(f"token service unreachable: {type(exc).__name__}") from exc


def _basic(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")
