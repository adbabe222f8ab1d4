"""Where registry credentials come from: the command line and Docker's client configuration.

:class:`CredentialStore` answers "which credentials should be used for registry R?" by
consulting, in this order, and stopping at the first source that has credentials:

1. credentials given explicitly for R (``explicit``);
2. the default credentials (the user's ``--creds``), which apply to every registry;
3. the credential helper the Docker configuration names for R (``credHelpers``);
4. the Docker configuration's default credential store (``credsStore``), also a helper;
5. the Docker configuration's ``auths`` section.

The Docker configuration is ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set, else
``~/.docker/config.json``. A missing file means no stored credentials. The file is read at most
once per store, and only when a lookup gets past the first two sources.

Registry names are compared case-insensitively after removing any scheme and path, so the
``auths`` keys ``https://host:5000``, ``host:5000/v2/`` and ``host:5000`` are all the registry
``host:5000``. Docker Hub is known by several names (``docker.io``, ``index.docker.io``,
``registry-1.docker.io``, ``registry.hub.docker.com`` and the legacy key
``https://index.docker.io/v1/``); all of them mean the same registry.

Credential helpers follow Docker's protocol (docker-credential-helpers): the program
``docker-credential-<name>`` is run with the argument ``get`` and the server URL on standard
input, and prints ``{"ServerURL": ..., "Username": ..., "Secret": ...}``. A ``Username`` of
``<token>`` means ``Secret`` is an identity token (an OAuth2 refresh token). For Docker Hub the
server URL is ``https://index.docker.io/v1/``, for other registries the registry name; when the
configuration's ``auths`` has a key for the registry written differently (``https://host``,
say), that form is tried too, because ``docker login`` stores credentials under it.

No secret (password, identity token, ``auth`` field, helper output) is ever logged or put into
an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lazyfs.errors import CredentialHelperError, LazyfsError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_SERVER_URL",
    "CredentialStore",
    "Credentials",
    "normalise_registry",
]

DOCKER_HUB = "docker.io"
"""The normalised name of Docker Hub."""

DOCKER_HUB_SERVER_URL = "https://index.docker.io/v1/"
"""The server URL under which Docker stores Docker Hub credentials."""

_DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
_TOKEN_USERNAME = "<token>"
_NOT_FOUND_MARKER = "credentials not found"
_KILL_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username with a password, or an identity token, for one registry.

    When ``identity_token`` is set it is used (exchanged for registry tokens as an OAuth2
    refresh token) instead of the password, and ``username`` may be anything, even empty.
    ``repr()``, ``str()`` and formatting never show the password or the identity token.
    """

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        token = ", identity_token=<hidden>" if self.identity_token is not None else ""
        return f"Credentials(username={self.username!r}, password=<hidden>{token})"

    def __str__(self) -> str:
        return self.__repr__()

    def __format__(self, format_spec: str) -> str:
        return format(self.__repr__(), format_spec)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """Parse the command line's ``USERNAME:PASSWORD``, splitting at the first colon.

        The password may contain colons and may be empty. Raises ValueError when there is no
        colon or the username is empty; the message never repeats the text.
        """
        username, colon, password = text.partition(":")
        if not colon:
            raise ValueError("credentials must be given as USERNAME:PASSWORD (no ':' found)")
        if not username:
            raise ValueError("credentials must be given as USERNAME:PASSWORD (empty username)")
        return cls(username, password)


def normalise_registry(name: str) -> str:
    """The registry a name or ``auths`` key stands for: lower-case host[:port], no scheme/path.

    All names of Docker Hub become ``"docker.io"``.
    """
    host = name.strip()
    _, sep, rest = host.partition("://")
    if sep:
        host = rest
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def _default_config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return Path.home() / ".docker" / "config.json"


@dataclass(frozen=True, slots=True)
class _DockerConfig:
    """The parts of Docker's ``config.json`` that concern credentials."""

    auths: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    creds_store: str | None = None


def _load_config(path: Path) -> _DockerConfig:
    """Read and check ``path``; a missing file is an empty configuration.

    Raises LazyfsError naming the file (never quoting its content) when it cannot be read
    or does not have the structure Docker writes.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _DockerConfig()
    except OSError as exc:
        raise LazyfsError(
            f"cannot read Docker config file {path}: {exc.strerror or type(exc).__name__}"
        ) from None

    def malformed(reason: str) -> LazyfsError:
        return LazyfsError(f"Docker config file {path} is malformed: {reason}")

    try:
        document = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise malformed("it is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise malformed(f"invalid JSON ({exc.msg} at {where})") from None
    except (ValueError, RecursionError):
        raise malformed("invalid JSON") from None
    if not isinstance(document, dict):
        raise malformed("the top level is not a JSON object")

    auths = document.get("auths") or {}
    if not isinstance(auths, dict):
        raise malformed('"auths" is not an object')
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise malformed(f'the "auths" entry {key!r} is not an object')

    cred_helpers = document.get("credHelpers") or {}
    if not isinstance(cred_helpers, dict) or not all(
        isinstance(helper, str) for helper in cred_helpers.values()
    ):
        raise malformed('"credHelpers" is not an object mapping registries to helper names')

    creds_store = document.get("credsStore") or None
    if creds_store is not None and not isinstance(creds_store, str):
        raise malformed('"credsStore" is not a string')

    return _DockerConfig(auths=auths, cred_helpers=cred_helpers, creds_store=creds_store)


def _decode_auth_entry(path: Path, key: str, entry: Mapping[str, Any]) -> Credentials | None:
    """The credentials of one ``auths`` entry, or None when it holds none.

    Docker leaves empty entries (``{}``) behind when the secrets live in a credential store.
    Raises LazyfsError naming the file and the entry's key for an undecodable entry.
    """

    def invalid(reason: str) -> LazyfsError:
        return LazyfsError(f'Docker config file {path}: the "auths" entry {key!r} {reason}')

    auth = entry.get("auth")
    username = entry.get("username")
    password = entry.get("password")
    identity_token = entry.get("identitytoken")
    for field_name, value in (
        ("auth", auth),
        ("username", username),
        ("password", password),
        ("identitytoken", identity_token),
    ):
        if value is not None and not isinstance(value, str):
            raise invalid(f'has a non-string "{field_name}" field')

    if auth:
        compact = "".join(auth.split())
        padded = compact + "=" * (-len(compact) % 4)
        try:
            decoded = base64.b64decode(padded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise invalid('has an "auth" field that is not base64 of USERNAME:PASSWORD') from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise invalid('has an "auth" field that is not base64 of USERNAME:PASSWORD')

    if identity_token:
        return Credentials(username or "", password or "", identity_token)
    if username or password:
        return Credentials(username or "", password or "")
    return None


def _safe_excerpt(output: bytes) -> str:
    """A short, secret-free description of a failed helper's output (possibly empty).

    Anything that looks like a credentials answer is withheld.
    """
    text = output.decode("utf-8", "replace").strip()
    lowered = text.lower()
    if not text or text.startswith("{") or "secret" in lowered or "password" in lowered:
        return ""
    line = text.splitlines()[0].strip()
    return line if len(line) <= 200 else line[:200] + "..."


async def _deliver_cancel(process: trio.Process) -> None:
    """Stop a helper that ran out of time: SIGTERM, then SIGKILL after a short grace."""
    try:
        process.terminate()
        await trio.sleep(_KILL_GRACE_SECONDS)
        process.kill()
    except OSError:
        pass


class CredentialStore:
    """Looks up credentials per registry; see the module docstring for the sources and order.

    ``explicit`` maps registry names (any of the forms ``auths`` keys may take) to the
    credentials to use for them; ``default`` is used for every registry not in ``explicit``;
    ``config_path`` overrides the location of Docker's ``config.json``; ``helper_timeout`` is
    the time in seconds one credential-helper run may take. Answers are cached per registry for
    the store's lifetime (failures are not cached, so a later lookup tries again).
    """

    def __init__(
        self,
        *,
        config_path: Path | None = None,
        explicit: Mapping[str, Credentials] | None = None,
        default: Credentials | None = None,
        helper_timeout: float = 10.0,
    ) -> None:
        self._config_path = config_path if config_path is not None else _default_config_path()
        self._explicit = {normalise_registry(key): creds for key, creds in (explicit or {}).items()}
        self._default = default
        self._helper_timeout = helper_timeout
        self._config: _DockerConfig | None = None
        self._cache: dict[str, Credentials | None] = {}
        self._locks: dict[str, trio.Lock] = {}

    @property
    def config_path(self) -> Path:
        """The Docker configuration file this store reads."""
        return self._config_path

    async def lookup(self, registry: str) -> Credentials | None:
        """The credentials to use for ``registry``, or None when no source has any.

        ``registry`` is a registry name such as ``"docker.io"``, ``"ghcr.io"`` or
        ``"localhost:5000"``. Raises LazyfsError for an unreadable or malformed Docker
        configuration and CredentialHelperError when a credential helper is missing, times
        out or fails otherwise.
        """
        name = normalise_registry(registry)
        if name in self._cache:
            return self._cache[name]
        lock = self._locks.setdefault(name, trio.Lock())
        async with lock:
            if name not in self._cache:
                self._cache[name] = await self._find(registry.strip(), name)
            return self._cache[name]

    async def _find(self, given: str, name: str) -> Credentials | None:
        if name in self._explicit:
            return self._explicit[name]
        if self._default is not None:
            return self._default

        config = self._read_config()
        auth_keys = [key for key in config.auths if normalise_registry(key) == name]
        server_urls = self._server_urls(given, name, auth_keys)

        helper = config.cred_helpers.get(given)
        if helper is None:
            helper = next(
                (
                    value
                    for key, value in config.cred_helpers.items()
                    if normalise_registry(key) == name
                ),
                None,
            )
        if helper:
            creds = await self._from_helper(helper, server_urls)
            if creds is not None:
                return creds

        if config.creds_store:
            creds = await self._from_helper(config.creds_store, server_urls)
            if creds is not None:
                return creds

        # Prefer a key written exactly as asked, then the file's order.
        auth_keys.sort(key=lambda key: key != given)
        for key in auth_keys:
            creds = _decode_auth_entry(self._config_path, key, config.auths[key])
            if creds is not None:
                return creds
        return None

    def _read_config(self) -> _DockerConfig:
        if self._config is None:
            self._config = _load_config(self._config_path)
        return self._config

    @staticmethod
    def _server_urls(given: str, name: str, auth_keys: list[str]) -> list[str]:
        """Server URLs to ask a helper for, most likely first, without duplicates."""
        urls = [DOCKER_HUB_SERVER_URL] if name == DOCKER_HUB else [given]
        for key in auth_keys:
            if key not in urls:
                urls.append(key)
        return urls

    async def _from_helper(self, helper: str, server_urls: list[str]) -> Credentials | None:
        for server_url in server_urls:
            creds = await self._run_helper(helper, server_url)
            if creds is not None:
                return creds
        return None

    async def _run_helper(self, helper: str, server_url: str) -> Credentials | None:
        """Run ``docker-credential-<helper> get`` for ``server_url``.

        Returns None when the helper has no credentials for it.
        """
        program = f"docker-credential-{helper}"
        if "/" in helper or "\0" in helper or os.sep in helper:
            raise CredentialHelperError(f"invalid credential helper name {helper!r}")
        try:
            with trio.fail_after(self._helper_timeout):
                result = await trio.run_process(
                    [program, "get"],
                    stdin=server_url.encode("utf-8"),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    deliver_cancel=_deliver_cancel,
                )
        except trio.TooSlowError:
            raise CredentialHelperError(
                f"credential helper {program} timed out after {self._helper_timeout:g} s "
                f"for {server_url}"
            ) from None
        except FileNotFoundError:
            raise CredentialHelperError(
                f"credential helper {program} was not found on PATH "
                "(named by the Docker config's credHelpers or credsStore)"
            ) from None
        except OSError as exc:
            raise CredentialHelperError(
                f"credential helper {program} could not be run: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None

        if result.returncode != 0:
            output = result.stdout + b"\n" + result.stderr
            if _NOT_FOUND_MARKER in output.decode("utf-8", "replace").lower():
                return None
            detail = _safe_excerpt(result.stderr) or _safe_excerpt(result.stdout)
            raise CredentialHelperError(
                f"credential helper {program} failed for {server_url} "
                f"(exit status {result.returncode})" + (f": {detail}" if detail else "")
            )

        try:
            answer = json.loads(result.stdout.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            if _NOT_FOUND_MARKER in result.stdout.decode("utf-8", "replace").lower():
                return None
            answer = None
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("Username", ""), str)
            or not isinstance(answer.get("Secret", ""), str)
        ):
            raise CredentialHelperError(
                f"credential helper {program} returned output that is not "
                '{"Username": ..., "Secret": ...} JSON'
            )
        username: str = answer.get("Username") or ""
        secret: str = answer.get("Secret") or ""
        if not secret and not username:
            return None
        if username == _TOKEN_USERNAME:
            return Credentials("", "", identity_token=secret)
        return Credentials(username, secret)
