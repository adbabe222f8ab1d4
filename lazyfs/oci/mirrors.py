"""Mirrors and per-host settings in containerd's ``hosts.toml`` format.

A hosts directory (``--hosts-dir``, default ``/etc/containerd/certs.d``) holds one directory
per registry host, named as the host appears in image references (``docker.io``,
``registry.example.com:5000``), with a ``hosts.toml``; ``_default/hosts.toml`` applies to
hosts without one. The file lists, in order, the hosts to try before the registry itself
(the *origin*), and how to talk to each:

.. code-block:: toml

    server = "https://registry.example.com"       # the origin (default: https://HOST)
    ca = "/etc/certs/origin.pem"                  # settings of the origin
    [host."http://10.0.0.5:5000"]                 # a pull-through cache, tried first
      capabilities = ["pull", "resolve"]
      skip_verify = true
      ca = ["/etc/certs/mirror.pem"]
      client = [["/etc/certs/client.pem", "/etc/certs/client.key"]]
      override_path = false                       # true: the URL's path is the API root

What a host may be used for is its ``capabilities``: ``resolve`` (tag → digest),
``pull`` (manifests by digest and blobs), ``push``. Unlisted capabilities default to all
three, as containerd's do. Peer-to-peer distributors (Dragonfly, Spegel, Kraken) and
pull-through caches present themselves this way, so lazyfs scales with them instead of with
the origin. The registry client tries the endpoints in order and moves to the next when
one fails (cannot connect, 5xx, 404 for a blob or a digest, a truncated body).

Only the subset of the format with a meaning here is read; unknown keys are ignored, and
wrong types are a clear error naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import LazyfsError

__all__ = [
    "DEFAULT_HOSTS_DIR",
    "Endpoint",
    "HostsConfigError",
    "endpoints_for",
    "parse_hosts_toml",
]

DEFAULT_HOSTS_DIR = Path("/etc/containerd/certs.d")
ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})
MAX_FILE = 1 << 20


class HostsConfigError(LazyfsError):
    """A ``hosts.toml`` file is malformed."""


@dataclass(frozen=True)
class Endpoint:
    """One place to send a registry's requests: a mirror, or the origin itself.

    ``host`` is ``name[:port]`` as connected to; ``scheme`` ``https`` or ``http``;
    ``api_root`` the path the distribution API lives under (``/v2`` normally).
    """

    scheme: str
    host: str
    api_root: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool = False
    ca_files: tuple[Path, ...] = ()
    client_cert: tuple[Path, Path] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    origin: bool = False
    #: The origin nobody configured (no ``server`` key): reached as without hosts.toml.
    implicit: bool = False

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.api_root}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def _fail(path: Path | str, why: str) -> HostsConfigError:
    return HostsConfigError(f"{path}: {why}")


def _paths(value, path, key: str) -> tuple[Path, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (Path(value),)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(Path(v) for v in value)
    raise _fail(path, f"{key} must be a path or a list of paths")


def _client_cert(value, path) -> tuple[Path, Path] | None:
    """containerd accepts a path, a [cert, key] pair, or a list of either; use the first."""
    if value is None:
        return None
    first = value[0] if isinstance(value, list) and value else value
    if isinstance(first, str):
        # One PEM holding both (containerd allows it); the key is then in the same file.
        return Path(first), Path(first)
    if isinstance(first, list) and len(first) == 2 and all(isinstance(v, str) for v in first):
        return Path(first[0]), Path(first[1])
    raise _fail(path, "client must be a path, a [cert, key] pair or a list of them")


def _endpoint(url: str, table: dict, path, *, origin: bool) -> Endpoint:
    if not isinstance(table, dict):
        raise _fail(path, f"host {url!r} must be a table")
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _fail(path, f"host {url!r} is not an http(s) URL")
    capabilities = table.get("capabilities")
    if capabilities is None:
        caps = ALL_CAPABILITIES
    elif isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
        caps = frozenset(capabilities)
    else:
        raise _fail(path, f"capabilities of {url!r} must be a list of strings")
    skip_verify = table.get("skip_verify", False)
    if not isinstance(skip_verify, bool):
        raise _fail(path, f"skip_verify of {url!r} must be true or false")
    override = table.get("override_path", False)
    if not isinstance(override, bool):
        raise _fail(path, f"override_path of {url!r} must be true or false")
    prefix = parts.path.rstrip("/")
    api_root = prefix if override else f"{prefix}/v2"
    headers = table.get("header") or {}
    if not isinstance(headers, dict):
        raise _fail(path, f"header of {url!r} must be a table")
    pairs = []
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise _fail(path, f"header {name!r} of {url!r} must be strings")
        pairs += [(name, v) for v in values]
    return Endpoint(
        scheme=parts.scheme,
        host=parts.netloc,
        api_root=api_root or "/v2",
        capabilities=caps,
        skip_verify=skip_verify,
        ca_files=_paths(table.get("ca"), path, f"ca of {url!r}"),
        client_cert=_client_cert(table.get("client"), path),
        headers=tuple(pairs),
        origin=origin,
    )


def parse_hosts_toml(text: str, registry_host: str, *, path: Path | str = "hosts.toml"):
    """The endpoints a ``hosts.toml`` gives for ``registry_host``: mirrors, then the origin."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML: {exc}") from None
    hosts = doc.get("host") or {}
    if not isinstance(hosts, dict):
        raise _fail(path, "host must be a table of tables")
    out = [_endpoint(url, table, path, origin=False) for url, table in hosts.items()]
    server = doc.get("server")
    if server is not None and not isinstance(server, str):
        raise _fail(path, "server must be a URL")
    origin_table = {k: doc[k] for k in ("ca", "skip_verify", "client", "header") if k in doc}
    origin = _endpoint(server or _default_origin(registry_host), origin_table, path, origin=True)
    if server is None and not origin_table:
        origin = replace(origin, implicit=True)
    # The origin comes last, unless it is also listed as a host (then its place is kept).
    if not any(e.host == origin.host and e.scheme == origin.scheme for e in out):
        out.append(origin)
    else:
        out = [
            replace(e, origin=True) if (e.host, e.scheme) == (origin.host, origin.scheme) else e
            for e in out
        ]
    return out


def _default_origin(registry_host: str) -> str:
    if registry_host in ("docker.io", "index.docker.io"):
        return "https://registry-1.docker.io"
    return f"https://{registry_host}"


def endpoints_for(registry_host: str, hosts_dir: Path | None) -> list[Endpoint] | None:
    """The endpoints configured for ``registry_host`` in ``hosts_dir``, or None if none are.

    ``HOSTS_DIR/HOST/hosts.toml`` first, then ``HOSTS_DIR/_default/hosts.toml``; a missing
    directory or file means no configuration (the client's ordinary behaviour).
    """
    if hosts_dir is None:
        return None
    for name in (registry_host, "_default"):
        candidate = hosts_dir / name / "hosts.toml"
        try:
            if candidate.stat().st_size > MAX_FILE:
                raise _fail(candidate, "larger than 1 MiB")
            text = candidate.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _fail(candidate, exc.strerror or str(exc)) from None
        return parse_hosts_toml(text, registry_host, path=candidate)
    return None
