"""How to talk to each registry host: scheme, TLS trust, client certificates.

The registry client asks a :class:`HostPolicy` for the :class:`HostSettings` of every host it
contacts (registries, token realms, storage redirects). The defaults follow docker:

* TLS with certificate verification for every host;
* a host the user names as *insecure* is tried over HTTPS without verification first and
  then over plain HTTP;
* loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) are insecure by default, so a
  local development registry works without set-up.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HostPolicy", "HostSettings", "split_host_port"]


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Connection settings for one host.

    ``insecure``: accept plain HTTP and unverified certificates (HTTPS is still tried first).
    ``ca_files``: extra PEM bundles trusted for this host, on top of the system's.
    ``client_cert``: a (certificate, key) pair of PEM files for mutual TLS.
    """

    insecure: bool = False
    ca_files: tuple[Path, ...] = ()
    client_cert: tuple[Path, Path] | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        """The ``verify`` value for httpx: an SSL context, or False for insecure hosts."""
        if self.insecure and not self.client_cert:
            return False
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        for ca in self.ca_files:
            ctx.load_verify_locations(cafile=str(ca))
        if self.client_cert:
            cert, key = self.client_cert
            ctx.load_cert_chain(str(cert), str(key))
        return ctx


def split_host_port(host: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets) into the bare host and the port."""
    if host.startswith("["):
        end = host.find("]")
        bare = host[1:end]
        rest = host[end + 1 :]
        return bare, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def _is_loopback(host: str) -> bool:
    bare, _ = split_host_port(host)
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Decides the :class:`HostSettings` for each host.

    ``insecure_hosts`` are host names, with or without a port (a name without a port covers
    every port of that host). ``ca_files`` are trusted for every host; ``host_ca_files`` only
    for the host they are keyed by (``host`` or ``host:port``).
    """

    def __init__(
        self,
        *,
        insecure_hosts: Iterable[str] = (),
        ca_files: Iterable[Path | str] = (),
        host_ca_files: dict[str, Iterable[Path | str]] | None = None,
        client_certs: dict[str, tuple[Path, Path]] | None = None,
        loopback_insecure: bool = True,
    ) -> None:
        self._insecure = {h.lower() for h in insecure_hosts}
        self._ca_files = tuple(Path(p) for p in ca_files)
        self._host_ca = {
            k.lower(): tuple(Path(p) for p in v) for k, v in (host_ca_files or {}).items()
        }
        self._client_certs = {k.lower(): v for k, v in (client_certs or {}).items()}
        self._loopback_insecure = loopback_insecure

    def add_host(
        self,
        host: str,
        *,
        insecure: bool = False,
        ca_files: Iterable[Path | str] = (),
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        """Settings for one more host (a mirror named in hosts.toml), on top of the rest."""
        host = host.lower()
        if insecure:
            self._insecure.add(host)
        if ca_files:
            self._host_ca[host] = self._host_ca.get(host, ()) + tuple(Path(p) for p in ca_files)
        if client_cert is not None:
            self._client_certs[host] = client_cert

    def _lookup(self, table: dict, host: str):
        host = host.lower()
        if host in table:
            return table[host]
        bare, _ = split_host_port(host)
        return table.get(bare)

    def settings(self, host: str) -> HostSettings:
        """Settings for ``host`` (``name`` or ``name:port``, as in a reference or URL)."""
        host = host.lower()
        bare, _ = split_host_port(host)
        insecure = (
            host in self._insecure
            or bare in self._insecure
            or (self._loopback_insecure and _is_loopback(host))
        )
        ca = self._ca_files + (self._lookup(self._host_ca, host) or ())
        return HostSettings(
            insecure=insecure, ca_files=ca, client_cert=self._lookup(self._client_certs, host)
        )
