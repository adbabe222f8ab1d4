"""Run the real CNCF distribution registry (``docker-registry``) for tests.

:class:`RegistryServer` writes a registry configuration into a work directory,
starts ``docker-registry serve <config.yml>`` on a free ``127.0.0.1`` port and
waits until ``GET /v2/`` answers. Variants are chosen by constructor arguments:

* plain HTTP without authentication (the default);
* TLS (``tls=True`` makes a CA and server certificate with :mod:`.certs`);
* htpasswd Basic authentication (``htpasswd_users``), usually with TLS;
* token authentication against a :class:`~tests.harness.tokenissuer.TokenIssuer`
  (``token_issuer``), over HTTP or TLS;
* pull-through cache of another registry (``proxy_remote_url``).

Everything the registry writes (storage, config, log) lives in the work
directory, so a failing test can be diagnosed from ``registry.log``.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bcrypt

from tests.harness import certs
from tests.harness.process import ManagedProcess

if TYPE_CHECKING:
    from tests.harness.tokenissuer import TokenIssuer

__all__ = ["DEFAULT_BINARY", "RegistryServer", "RegistryStartError", "free_port"]

#: Where Debian's ``docker-registry`` package installs the registry.
DEFAULT_BINARY = "/usr/bin/docker-registry"


class RegistryStartError(RuntimeError):
    """The registry binary is missing, or its process exited or did not answer ``/v2/`` in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _yaml(value: Any, indent: int = 0) -> str:
    """Render nested dicts/lists of str, int, bool as block-style YAML.

    Strings are emitted as JSON strings, which YAML reads as double-quoted
    scalars; this is enough for registry configuration files.
    """
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, Mapping | list) and item:
                lines.append(f"{pad}{key}:")
                lines.append(_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")
    elif isinstance(value, list):
        for item in value:
            lines.append(f"{pad}- {json.dumps(item)}")
    else:
        raise TypeError(f"cannot render {value!r}")
    return "\n".join(lines)


class RegistryServer(ManagedProcess):
    """One ``docker-registry`` process with its own configuration and storage.

    The process lifecycle (:meth:`stop`, :attr:`running`, :meth:`log_tail`, use as a
    context manager) comes from :class:`~tests.harness.process.ManagedProcess`.

    Args:
        workdir: Directory for config, storage, certificates and log (created if needed).
        tls: ``False`` for plain HTTP; ``True`` to generate a CA and a server
            certificate in ``workdir/certs``; or a ready :class:`certs.KeyPair`.
        htpasswd_users: User name -> password; enables ``auth.htpasswd``
            (bcrypt hashes). Mutually exclusive with ``token_issuer``.
        token_issuer: A started :class:`TokenIssuer`; enables ``auth.token``
            with its realm, service, issuer and CA bundle.
        proxy_remote_url: Make this registry a pull-through cache of that URL.
        proxy_username, proxy_password: Credentials for the remote registry.
        upstream_ca_file: Extra CA the registry process trusts for outgoing
            TLS (exported as ``SSL_CERT_FILE``), e.g. for an HTTPS remote.
        relative_urls: Set ``http.relativeurls`` (Location headers become relative).
        log_level: Registry log level (``error``, ``warn``, ``info``, ``debug``).
        binary: Path of the registry executable.
        startup_timeout: Seconds :meth:`start` waits for ``/v2/`` to answer.

    Attributes (valid after :meth:`start` where they depend on the port):
        host: ``"127.0.0.1:PORT"``.
        url: ``"http://127.0.0.1:PORT"`` or ``"https://127.0.0.1:PORT"``.
        port: The TCP port.
        ca_file: CA certificate to verify the TLS server with, or ``None``.
        storage_dir: Filesystem storage root (``<workdir>/storage``).
        log_path: File receiving the registry's stdout and stderr.
        process: The running :class:`subprocess.Popen`, or ``None``.
        config_path: The generated ``config.yml``.
        users: Copy of ``htpasswd_users`` (or the issuer's users), for tests.
        issuer: The ``token_issuer`` argument, or ``None``.
        tls_keypair: The server certificate in use, or ``None``.
    """

    name = "registry"
    start_error = RegistryStartError
    stop_timeout = 5.0

    def __init__(
        self,
        workdir: Path,
        *,
        tls: bool | certs.KeyPair = False,
        htpasswd_users: Mapping[str, str] | None = None,
        token_issuer: TokenIssuer | None = None,
        proxy_remote_url: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
        upstream_ca_file: Path | None = None,
        relative_urls: bool = False,
        log_level: str = "info",
        binary: str = DEFAULT_BINARY,
        startup_timeout: float = 10.0,
    ) -> None:
        if htpasswd_users is not None and token_issuer is not None:
            raise ValueError("htpasswd and token authentication are mutually exclusive")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            binary=binary, log_path=self.workdir / "registry.log", startup_timeout=startup_timeout
        )
        self.storage_dir = self.workdir / "storage"
        self.config_path = self.workdir / "config.yml"
        self.htpasswd_path = self.workdir / "htpasswd"
        self.log_level = log_level
        self.relative_urls = relative_urls
        self.issuer = token_issuer
        self.proxy_remote_url = proxy_remote_url
        self.proxy_username = proxy_username
        self.proxy_password = proxy_password
        self.upstream_ca_file = upstream_ca_file
        self._htpasswd_users = dict(htpasswd_users) if htpasswd_users is not None else None
        if token_issuer is not None:
            self.users: dict[str, str] = dict(token_issuer.users)
        else:
            self.users = dict(htpasswd_users or {})

        if tls is True:
            cert_dir = self.workdir / "certs"
            cert_dir.mkdir(exist_ok=True)
            ca = certs.make_ca(cert_dir)
            self.tls_keypair: certs.KeyPair | None = certs.make_server_cert(cert_dir, ca)
        elif tls is False:
            self.tls_keypair = None
        else:
            self.tls_keypair = tls
        self.ca_file: Path | None = self.tls_keypair.ca_file if self.tls_keypair else None

        self.port: int | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def scheme(self) -> str:
        """``"https"`` with TLS, else ``"http"``."""
        return "https" if self.tls_keypair else "http"

    @property
    def host(self) -> str:
        """``"127.0.0.1:PORT"``, as used in image references."""
        if self.port is None:
            raise RuntimeError("registry not started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the registry, without a trailing slash."""
        return f"{self.scheme}://{self.host}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context trusting :attr:`ca_file`, or ``None`` for plain HTTP."""
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.ca_file))

    # ------------------------------------------------------------------ configuration

    def _config(self) -> dict[str, Any]:
        http_section: dict[str, Any] = {
            "addr": self.host,
            "secret": secrets.token_hex(16),
            "relativeurls": self.relative_urls,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls_keypair is not None:
            http_section["tls"] = {
                "certificate": str(self.tls_keypair.cert_file),
                "key": str(self.tls_keypair.key_file),
            }
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": self.log_level, "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # The purger would otherwise delete uploads older than a week
                # in the background; irrelevant for tests and only noise.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_section,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self._htpasswd_users is not None:
            config["auth"] = {"htpasswd": {"realm": "lazyfs-test", "path": str(self.htpasswd_path)}}
        elif self.issuer is not None:
            config["auth"] = {
                "token": {
                    "realm": self.issuer.realm,
                    "service": self.issuer.service,
                    "issuer": self.issuer.issuer,
                    "rootcertbundle": str(self.issuer.rootcertbundle),
                }
            }
        if self.proxy_remote_url is not None:
            proxy: dict[str, Any] = {"remoteurl": self.proxy_remote_url}
            if self.proxy_username is not None:
                proxy["username"] = self.proxy_username
                proxy["password"] = self.proxy_password or ""
            config["proxy"] = proxy
        return config

    def _write_files(self) -> None:
        self.storage_dir.mkdir(exist_ok=True)
        if self._htpasswd_users is not None:
            lines = [
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                for user, pw in self._htpasswd_users.items()
            ]
            self.htpasswd_path.write_text("\n".join(lines) + "\n")
        self.config_path.write_text(_yaml(self._config()) + "\n")

    def _environment(self) -> dict[str, str]:
        # REGISTRY_* variables override the config file: never inherit them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        if self.upstream_ca_file is not None:
            env["SSL_CERT_FILE"] = str(self.upstream_ca_file)
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RegistryServer:
        """Start the registry and wait until ``GET /v2/`` answers 200 or 401.

        A port taken by someone else between allocation and bind is retried
        with a new port. Raises :class:`RegistryStartError` (including the end
        of the registry log) if the process exits or does not answer within
        ``startup_timeout`` seconds.
        """
        for attempt in range(3):
            try:
                return super().start()
            except RegistryStartError:
                if attempt == 2 or "address already in use" not in self.log_tail():
                    raise
        raise AssertionError("unreachable")

    def _prepare(self) -> None:
        self.port = free_port()
        self._write_files()

    def _command(self) -> list[str]:
        return [self.binary, "serve", str(self.config_path)]

    def _not_ready(self) -> str | None:
        status = self._probe()
        if status in (200, 401):
            return None
        return f"last GET {self.url}/v2/ status: {status}"

    def _probe(self) -> int | None:
        """Return the status of ``GET /v2/``, or ``None`` if nothing answers."""
        conn: http.client.HTTPConnection
        if self.tls_keypair is not None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=2, context=self.ssl_context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"<RegistryServer {where} workdir={self.workdir}>"
