"""A minimal Docker registry token server for tests.

:class:`TokenIssuer` implements the issuing side of the Docker registry token
protocol: a client that received ``401`` with a ``Bearer`` challenge from the
registry calls ``GET <realm>?service=<service>&scope=<scope>...`` (``scope``
may repeat, and one value may hold several space-separated scopes),
optionally with HTTP Basic credentials, and receives::

    {"token": "...", "access_token": "...", "expires_in": 300,
     "issued_at": "2024-01-01T00:00:00Z"}

The token is a JWT signed RS256 (RSA key) or ES256 (P-256 key) by the key of a
certificate from :func:`tests.harness.certs.make_token_signing_cert`; its
header carries that certificate in ``x5c`` (standard base64 DER), which the
registry verifies against the CA given as ``auth.token.rootcertbundle``.
Claims: ``iss``, ``sub``, ``aud`` (the service, as a string), ``exp``,
``nbf``, ``iat``, ``jti`` and ``access``.

Policy: users authenticated with a correct password get the actions they asked
for (restricted to ``allowed_actions[user]`` if given); anonymous clients get
``pull`` on repositories only, and only if ``anonymous_pull`` is set. Wrong or
malformed credentials are answered ``401``. Like real token servers, a request
whose scopes are not granted still gets a token, with a smaller ``access``.

Expiry and distribution 2.8: the registry adds a fixed 60 s leeway to ``exp``
when it checks tokens. So that a token stops working ``ttl`` seconds after it
was issued (what tests usually want), the issuer by default writes
``exp = now + ttl - registry_leeway``; set ``registry_leeway = 0`` to get
literal claims. ``expires_in`` is always ``ttl``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.harness.certs import KeyPair
from tests.harness.process import ThreadedServer

__all__ = ["DISTRIBUTION_LEEWAY", "IssuedToken", "TokenIssuer", "parse_scope"]

#: Seconds of clock-skew leeway distribution 2.8 adds to ``exp`` (and subtracts from ``nbf``).
DISTRIBUTION_LEEWAY = 60


@dataclass(frozen=True)
class IssuedToken:
    """Record of one token handed out by :class:`TokenIssuer`.

    Attributes:
        token: The compact JWT.
        subject: The ``sub`` claim (user name, ``""`` for anonymous).
        access: The ``access`` claim: list of ``{"type", "name", "actions"}`` dicts.
        requested: The scopes the client asked for, verbatim.
        issued_at: Unix time the token was made.
        expires_at: Unix time after which the registry rejects the token
            (``exp`` claim plus the registry leeway).
    """

    token: str
    subject: str
    access: list[dict[str, Any]]
    requested: tuple[str, ...]
    issued_at: float
    expires_at: int


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """Split ``type:name:action1,action2`` into its parts.

    The name may itself contain colons (``repository:host:5000/x:pull``), so
    the type ends at the first colon and the actions start after the last one.
    Returns ``None`` for malformed scopes.
    """
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not (sep and sep2 and kind and name):
        return None
    return kind, name, [a for a in actions.split(",") if a]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _rfc3339(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(ts), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Counters:
    issued: list[IssuedToken] = field(default_factory=list)
    auth_failures: int = 0


class TokenIssuer(ThreadedServer):
    """A token server on ``127.0.0.1`` for registries configured with ``auth.token``.

    :meth:`start`, :meth:`stop`, ``port``, ``url`` and use as a context manager come from
    :class:`~tests.harness.process.ThreadedServer`.

    Args:
        signing: Token-signing key pair (``certs.make_token_signing_cert``); its
            ``ca_file`` is the bundle the registry must trust.
        service: Expected ``service`` parameter and ``aud`` claim.
        issuer: The ``iss`` claim; the registry's ``auth.token.issuer``.
        users: User name -> password for Basic authentication.
        anonymous_pull: Grant ``pull`` on repositories to clients without credentials.
        allowed_actions: Optional user name -> actions that user may receive
            (e.g. ``{"bob": {"pull"}}``); users not listed get what they ask for.
        ttl: Token lifetime in seconds; may be changed at any time.
        registry_leeway: Seconds subtracted from ``exp`` to cancel the
            registry's own leeway (see module docstring).

    Attributes:
        realm: URL of the token endpoint (``http://127.0.0.1:PORT/token``),
            valid after :meth:`start`.
        url: Base URL of the server.
        ttl, registry_leeway, anonymous_pull, users, allowed_actions:
            Mutable policy, read on each request.
    """

    name = "token-issuer"
    path = "/token"

    def __init__(
        self,
        signing: KeyPair,
        *,
        service: str = "lazyfs-test-registry",
        issuer: str = "lazyfs-test-issuer",
        users: Mapping[str, str] | None = None,
        anonymous_pull: bool = False,
        allowed_actions: Mapping[str, Iterable[str]] | None = None,
        ttl: int = 300,
        registry_leeway: int = DISTRIBUTION_LEEWAY,
    ) -> None:
        super().__init__()
        self.signing = signing
        self.service = service
        self.issuer = issuer
        self.users: dict[str, str] = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.allowed_actions: dict[str, set[str]] = {
            user: set(actions) for user, actions in (allowed_actions or {}).items()
        }
        self.ttl = ttl
        self.registry_leeway = registry_leeway
        self._lock = threading.Lock()
        self._counters = _Counters()
        key = signing.key
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            self.algorithm = "ES256"
        else:
            raise ValueError("signing key must be RSA or EC P-256")
        der = signing.cert.public_bytes(serialization.Encoding.DER)
        self._x5c = [base64.b64encode(der).decode("ascii")]

    # ------------------------------------------------------------------ server

    def _make_server(self, address: tuple[str, int]) -> _IssuerHTTPServer:
        return _IssuerHTTPServer(address, _IssuerHandler, self)

    @property
    def realm(self) -> str:
        """The token endpoint; the registry's ``auth.token.realm``."""
        return self.url + self.path

    @property
    def rootcertbundle(self) -> Path:
        """CA file the registry must trust to verify tokens (``signing.ca_file``)."""
        return self.signing.ca_file

    # ------------------------------------------------------------------ statistics

    @property
    def issued(self) -> list[IssuedToken]:
        """Snapshot of all tokens issued, oldest first."""
        with self._lock:
            return list(self._counters.issued)

    @property
    def tokens_issued(self) -> int:
        """Number of tokens issued so far."""
        with self._lock:
            return len(self._counters.issued)

    @property
    def auth_failures(self) -> int:
        """Number of requests answered 401 because of bad credentials."""
        with self._lock:
            return self._counters.auth_failures

    def reset_counters(self) -> None:
        """Forget issued tokens and failures."""
        with self._lock:
            self._counters = _Counters()

    # ------------------------------------------------------------------ policy and minting

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """Return the ``access`` claim for ``user`` (``None``: anonymous) asking ``scopes``."""
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            if user is None:
                allowed = {"pull"} if self.anonymous_pull and kind == "repository" else set()
            else:
                allowed = self.allowed_actions.get(user)
            granted = merged.setdefault((kind, name), [])
            for action in actions:
                if (allowed is None or action in allowed) and action not in granted:
                    granted.append(action)
        return [
            {"type": kind, "name": name, "actions": actions}
            for (kind, name), actions in merged.items()
            if actions
        ]

    def make_token(
        self,
        subject: str,
        access: list[dict[str, Any]],
        *,
        ttl: int | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """Sign a token; return it with the time the registry will stop accepting it.

        ``subject`` is the ``sub`` claim, ``access`` the ``access`` claim.
        ``ttl`` defaults to :attr:`ttl`, ``now`` to the current time.
        """
        now = time.time() if now is None else now
        ttl = self.ttl if ttl is None else ttl
        # Round up so that the token lives at least ``ttl`` seconds.
        effective_exp = math.ceil(now + ttl)
        iat = int(now)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": effective_exp - self.registry_leeway,
            "nbf": iat,
            "iat": iat,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": self.algorithm, "x5c": self._x5c}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = self._sign(signing_input.encode("ascii"))
        return f"{signing_input}.{_b64url(signature)}", effective_exp

    def _sign(self, data: bytes) -> bytes:
        key = self.signing.key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # JWS wants the raw 32-byte r and s, not the DER structure cryptography returns.
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    # ------------------------------------------------------------------ request handling

    def _authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """Check an Authorization header; return (ok, user or None for anonymous)."""
        if header is None:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        user, sep, password = decoded.partition(":")
        if not sep or self.users.get(user) != password:
            return False, None
        return True, user

    def _issue(self, authorization: str | None, query: str) -> tuple[int, dict[str, Any]]:
        """Handle one token request; return (HTTP status, JSON body)."""
        params = urllib.parse.parse_qs(query, keep_blank_values=True)
        services = params.get("service", [])
        if services and services[-1] != self.service:
            return HTTPStatus.BAD_REQUEST, {"details": f"unknown service {services[-1]!r}"}
        ok, user = self._authenticate(authorization)
        if not ok:
            with self._lock:
                self._counters.auth_failures += 1
            return HTTPStatus.UNAUTHORIZED, {"details": "invalid username or password"}
        scopes = tuple(s for value in params.get("scope", []) for s in value.split())
        access = self.grant(user, scopes)
        now = time.time()
        ttl = self.ttl
        token, expires_at = self.make_token(user or "", access, ttl=ttl, now=now)
        record = IssuedToken(token, user or "", access, scopes, now, expires_at)
        with self._lock:
            self._counters.issued.append(record)
        return HTTPStatus.OK, {
            "token": token,
            "access_token": token,
            "expires_in": ttl,
            "issued_at": _rfc3339(now),
        }


class _IssuerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        super().__init__(address, handler)


class _IssuerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _IssuerHTTPServer

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path != TokenIssuer.path:
            self._reply(HTTPStatus.NOT_FOUND, {"details": "not found"})
            return
        status, body = self.server.issuer._issue(self.headers.get("Authorization"), query)
        self._reply(status, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="lazyfs-test-issuer"')
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass
