"""Shared pytest fixtures: real CNCF distribution registries on loopback.

Session-scoped registries (started once, on first use):

* ``registry``: plain HTTP, no authentication.
* ``tls_registry``: HTTPS (own CA, see ``.ca_file``) with htpasswd Basic
  authentication for ``alice:wonderland``.
* ``token_registry``: plain HTTP with token authentication; its
  :class:`~tests.harness.tokenissuer.TokenIssuer` is ``token_registry.issuer``
  (user ``bob:builder``, anonymous pull allowed).

* ``containerd``: a private containerd (Debian package, 1.6) with its own root, state and
  socket, for ``ctr``/``ctr-remote``.

Function-scoped:

* ``fault_proxy``: a :class:`~tests.harness.faultproxy.FaultProxy` in front of
  ``registry``, stopped after the test.

The registry binary comes from Debian's ``docker-registry`` package; when it
is missing the fixtures fail (they do not skip), pointing at ``scripts/test``,
which installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import certs
from tests.harness.containerd import DEFAULT_BINARY as CONTAINERD_BINARY
from tests.harness.containerd import ContainerdServer
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import DEFAULT_BINARY, RegistryServer
from tests.harness.tokenissuer import TokenIssuer

# The lazyfs commands the tests start run in their own process, even on a machine where a
# `lazyfs service` listens on the default socket; tests/test_service.py starts its own.
os.environ["LAZYFS_SERVICE"] = "off"

TLS_USERS = {"alice": "wonderland"}
TOKEN_USERS = {"bob": "builder"}


def _require_registry_binary() -> None:
    if not os.access(DEFAULT_BINARY, os.X_OK):
        pytest.fail(
            f"{DEFAULT_BINARY} is missing: the tests need the CNCF distribution registry "
            "(Debian package docker-registry). Run scripts/test, which installs it.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry without authentication, shared by the session."""
    _require_registry_binary()
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An HTTPS registry with htpasswd Basic auth (``alice``/``wonderland``).

    Clients must trust ``tls_registry.ca_file``.
    """
    _require_registry_binary()
    server = RegistryServer(
        tmp_path_factory.mktemp("tls-registry"), tls=True, htpasswd_users=TLS_USERS
    )
    with server:
        yield server


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain-HTTP registry with token auth; the issuer is ``token_registry.issuer``.

    The issuer knows ``bob``/``builder`` and grants anonymous pulls. Tests that
    change its policy or ``ttl`` must restore them.
    """
    _require_registry_binary()
    workdir = tmp_path_factory.mktemp("token-registry")
    key_dir = workdir / "token-keys"
    key_dir.mkdir()
    ca = certs.make_ca(key_dir, name="lazyfs test token CA")
    signing = certs.make_token_signing_cert(key_dir, ca)
    with (
        TokenIssuer(signing, users=TOKEN_USERS, anonymous_pull=True) as issuer,
        RegistryServer(workdir, token_issuer=issuer) as server,
    ):
        yield server


@pytest.fixture
def fault_proxy(registry: RegistryServer) -> Iterator[FaultProxy]:
    """A fresh :class:`FaultProxy` in front of ``registry`` for one test."""
    with FaultProxy(registry.url, ca_file=registry.ca_file) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerdServer]:
    """A private containerd (own root, state and socket; root needed), shared by the session."""
    if not os.access(CONTAINERD_BINARY, os.X_OK):
        pytest.fail(f"{CONTAINERD_BINARY} is missing (Debian package containerd)", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("containerd tests must run as root", pytrace=False)
    with ContainerdServer(tmp_path_factory.mktemp("containerd")) as server:
        yield server
