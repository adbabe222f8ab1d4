"""Tests of credential lookup (lazyfs.oci.credentials).

Credential helpers are small shell scripts written into a temporary directory that is put in
front of PATH. Each script appends the server URL it was asked about to ``calls.log``.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import pytest
import trio

from lazyfs.errors import CredentialHelperError, LazyfsError
from lazyfs.oci.credentials import Credentials, CredentialStore

SECRET = "s3cr3t-Pa55"
TOKEN = "identity-T0KEN"

# A helper that knows one server URL per line of its own table.
_RETURNING_HELPER = """#!/bin/sh
[ "$1" = get ] || exit 3
read -r url
printf '%s\\n' "$url" >> "{log}"
case "$url" in
  https://index.docker.io/v1/)
    printf '{{"ServerURL":"%s","Username":"hubuser","Secret":"{secret}"}}' "$url" ;;
  tokenreg.example)
    printf '{{"ServerURL":"%s","Username":"<token>","Secret":"{token}"}}' "$url" ;;
  *)
    printf '{{"ServerURL":"%s","Username":"helperuser","Secret":"{secret}"}}' "$url" ;;
esac
"""

_NOT_FOUND_HELPER = """#!/bin/sh
read -r url
printf '%s\\n' "$url" >> "{log}"
echo "credentials not found in native keychain"
exit 1
"""

_FAILING_HELPER = """#!/bin/sh
read -r url
printf '%s\\n' "$url" >> "{log}"
echo "error getting credentials - err: exit status 1, out: keychain locked" >&2
exit 1
"""

_LEAKY_FAILING_HELPER = """#!/bin/sh
read -r url
printf '{{"ServerURL":"%s","Username":"u","Secret":"{secret}"}}' "$url"
exit 1
"""

# Knows only the server URL "https://stored.example".
_PICKY_HELPER = """#!/bin/sh
read -r url
printf '%s\\n' "$url" >> "{log}"
if [ "$url" = https://stored.example ]; then
  printf '{{"ServerURL":"%s","Username":"storeduser","Secret":"{secret}"}}' "$url"
else
  echo "credentials not found in native keychain"
  exit 1
fi
"""

_SLOW_HELPER = """#!/bin/sh
exec sleep 30
"""

_GARBAGE_HELPER = """#!/bin/sh
echo "this is not json {secret}"
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ.get('PATH', '')}")
    return directory


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


def _install(bin_dir: Path, name: str, script: str, log: Path) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text(script.format(log=log, secret=SECRET, token=TOKEN))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _config(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _lookup(store: CredentialStore, registry: str) -> Credentials | None:
    async def main() -> Credentials | None:
        return await store.lookup(registry)

    return trio.run(main)


# --------------------------------------------------------------------------- Credentials


def test_credentials_never_show_secrets() -> None:
    creds = Credentials("alice", SECRET, identity_token=TOKEN)
    for shown in (repr(creds), str(creds), f"{creds}", f"{creds!r}", f"{creds!s}", f"{creds:>80}"):
        assert "alice" in shown
        assert SECRET not in shown
        assert TOKEN not in shown
    assert SECRET not in repr([creds]) and SECRET not in str({"c": creds})
    assert "identity_token" not in repr(Credentials("bob", SECRET))


def test_credentials_are_frozen() -> None:
    creds = Credentials("alice", SECRET)
    with pytest.raises(AttributeError):
        creds.password = "x"  # type: ignore[misc]
    assert creds == Credentials("alice", SECRET)


def test_parse_splits_at_first_colon() -> None:
    assert Credentials.parse("alice:pa:ss:word") == Credentials("alice", "pa:ss:word")
    assert Credentials.parse("alice:") == Credentials("alice", "")


@pytest.mark.parametrize("text", [f":{SECRET}", SECRET, ""])
def test_parse_rejects_without_echoing(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Credentials.parse(text)
    message = str(info.value)
    assert "USERNAME:PASSWORD" in message
    if text:
        assert SECRET not in message


# --------------------------------------------------------------------------- config: auths


def test_missing_config_means_no_credentials(tmp_path: Path) -> None:
    store = CredentialStore(config_path=tmp_path / "nope" / "config.json")
    assert _lookup(store, "ghcr.io") is None


def test_default_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert CredentialStore().config_path == tmp_path / "dc" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CredentialStore().config_path == tmp_path / "home" / ".docker" / "config.json"


def test_docker_config_env_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "dc"
    directory.mkdir()
    (directory / "config.json").write_text(
        json.dumps({"auths": {"ghcr.io": {"auth": _b64(f"envuser:{SECRET}")}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(directory))
    assert _lookup(CredentialStore(), "ghcr.io") == Credentials("envuser", SECRET)


def test_auths_auth_field(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"ghcr.io": {"auth": _b64(f"alice:{SECRET}:x")}}})
    store = CredentialStore(config_path=path)
    assert _lookup(store, "ghcr.io") == Credentials("alice", f"{SECRET}:x")
    assert _lookup(store, "quay.io") is None


def test_auths_auth_without_padding(tmp_path: Path) -> None:
    encoded = _b64("ab:c").rstrip("=")
    path = _config(tmp_path, {"auths": {"ghcr.io": {"auth": encoded}}})
    assert _lookup(CredentialStore(config_path=path), "ghcr.io") == Credentials("ab", "c")


def test_auths_username_password(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"quay.io": {"username": "bob", "password": SECRET}}})
    assert _lookup(CredentialStore(config_path=path), "quay.io") == Credentials("bob", SECRET)


def test_auths_identity_token(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {"auths": {"myreg.azurecr.io": {"auth": _b64("00000000-0000:"), "identitytoken": TOKEN}}},
    )
    creds = _lookup(CredentialStore(config_path=path), "myreg.azurecr.io")
    assert creds is not None
    assert creds.identity_token == TOKEN
    assert creds.username == "00000000-0000"


def test_auths_identity_token_alone(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"r.example": {"identitytoken": TOKEN}}})
    assert _lookup(CredentialStore(config_path=path), "r.example") == Credentials("", "", TOKEN)


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("http://host:5000", "host:5000"),
        ("https://host:5000/", "host:5000"),
        ("host:5000/v2/", "host:5000"),
        ("HOST:5000", "host:5000"),
        ("localhost:5000", "localhost:5000"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
    ],
)
def test_auths_key_forms(tmp_path: Path, key: str, registry: str) -> None:
    path = _config(tmp_path, {"auths": {key: {"auth": _b64(f"u:{SECRET}")}}})
    assert _lookup(CredentialStore(config_path=path), registry) == Credentials("u", SECRET)


def test_auths_port_and_host_are_distinct(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"host:5000": {"auth": _b64("u:p")}}})
    store = CredentialStore(config_path=path)
    assert _lookup(store, "host") is None
    assert _lookup(store, "host:5001") is None


def test_auths_empty_entry_is_no_credentials(tmp_path: Path) -> None:
    path = _config(tmp_path, {"auths": {"https://index.docker.io/v1/": {}}})
    assert _lookup(CredentialStore(config_path=path), "docker.io") is None


def test_auths_exact_key_preferred(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        {
            "auths": {
                "https://host:5000": {"auth": _b64("url:p")},
                "host:5000": {"auth": _b64("exact:p")},
            }
        },
    )
    assert _lookup(CredentialStore(config_path=path), "host:5000") == Credentials("exact", "p")


# --------------------------------------------------------------------------- malformed config


@pytest.mark.parametrize(
    "content",
    [
        "{not json " + SECRET,
        json.dumps([SECRET]),
        json.dumps({"auths": [SECRET]}),
        json.dumps({"auths": {"ghcr.io": SECRET}}),
        json.dumps({"credHelpers": {"ghcr.io": 5}, "x": SECRET}),
        json.dumps({"credsStore": ["x"], "x": SECRET}),
        "[" * 100_000,
        b"\xff\xfe{}".decode("latin-1"),
    ],
)
def test_malformed_config(tmp_path: Path, content: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(LazyfsError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    message = str(info.value)
    assert str(path) in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "entry",
    [
        {"auth": "!!!not base64 " + SECRET},
        {"auth": _b64("no-colon-" + SECRET)},
        {"auth": base64.b64encode(b"\xff\xfe:" + SECRET.encode()).decode()},
        {"username": ["alice"], "password": SECRET},
    ],
)
def test_malformed_auths_entry(tmp_path: Path, entry: dict[str, object]) -> None:
    path = _config(tmp_path, {"auths": {"ghcr.io": entry}})
    with pytest.raises(LazyfsError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    message = str(info.value)
    assert str(path) in message and "ghcr.io" in message
    assert SECRET not in message
    assert _b64("no-colon-" + SECRET) not in message


def test_unreadable_config_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.mkdir()
    with pytest.raises(LazyfsError, match="cannot read Docker config file"):
        _lookup(CredentialStore(config_path=path), "ghcr.io")


def test_config_not_read_when_not_needed(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{broken")
    store = CredentialStore(config_path=path, default=Credentials("cli", "p"))
    assert _lookup(store, "ghcr.io") == Credentials("cli", "p")


# --------------------------------------------------------------------------- helpers


def test_creds_store_returns_credentials(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "fake", _RETURNING_HELPER, calls)
    path = _config(tmp_path, {"credsStore": "fake", "auths": {"ghcr.io": {}}})
    store = CredentialStore(config_path=path)
    assert _lookup(store, "ghcr.io") == Credentials("helperuser", SECRET)
    assert _calls(calls) == ["ghcr.io"]


def test_helper_gets_docker_hub_server_url(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "fake", _RETURNING_HELPER, calls)
    path = _config(tmp_path, {"credsStore": "fake"})
    assert _lookup(CredentialStore(config_path=path), "docker.io") == Credentials("hubuser", SECRET)
    assert _calls(calls) == ["https://index.docker.io/v1/"]


def test_helper_token_username_means_identity_token(
    tmp_path: Path, bin_dir: Path, calls: Path
) -> None:
    _install(bin_dir, "fake", _RETURNING_HELPER, calls)
    path = _config(tmp_path, {"credHelpers": {"tokenreg.example": "fake"}})
    creds = _lookup(CredentialStore(config_path=path), "tokenreg.example")
    assert creds == Credentials("", "", identity_token=TOKEN)


def test_helper_tries_stored_key_form(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "picky", _PICKY_HELPER, calls)
    path = _config(
        tmp_path,
        {"credHelpers": {"stored.example": "picky"}, "auths": {"https://stored.example": {}}},
    )
    creds = _lookup(CredentialStore(config_path=path), "stored.example")
    assert creds == Credentials("storeduser", SECRET)
    assert _calls(calls) == ["stored.example", "https://stored.example"]


def test_helper_not_found_falls_through(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "nf", _NOT_FOUND_HELPER, calls)
    path = _config(
        tmp_path,
        {
            "credHelpers": {"ghcr.io": "nf"},
            "credsStore": "nf",
            "auths": {"ghcr.io": {"auth": _b64("fileuser:filepass")}},
        },
    )
    assert _lookup(CredentialStore(config_path=path), "ghcr.io") == Credentials(
        "fileuser", "filepass"
    )
    assert _calls(calls) == ["ghcr.io", "ghcr.io"]


def test_helper_not_found_and_nothing_else(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "nf", _NOT_FOUND_HELPER, calls)
    path = _config(tmp_path, {"credsStore": "nf"})
    assert _lookup(CredentialStore(config_path=path), "ghcr.io") is None


def test_helper_failure(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "broken", _FAILING_HELPER, calls)
    path = _config(tmp_path, {"credHelpers": {"ghcr.io": "broken"}})
    with pytest.raises(CredentialHelperError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    message = str(info.value)
    assert "docker-credential-broken" in message
    assert "keychain locked" in message
    assert "exit status 1" in message


def test_failing_helper_output_with_secret_is_withheld(tmp_path: Path, bin_dir: Path) -> None:
    _install(bin_dir, "leaky", _LEAKY_FAILING_HELPER, tmp_path / "unused.log")
    path = _config(tmp_path, {"credsStore": "leaky"})
    with pytest.raises(CredentialHelperError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    assert "docker-credential-leaky" in str(info.value)
    assert SECRET not in str(info.value)


def test_helper_garbage_output(tmp_path: Path, bin_dir: Path) -> None:
    _install(bin_dir, "garbage", _GARBAGE_HELPER, tmp_path / "unused.log")
    path = _config(tmp_path, {"credsStore": "garbage"})
    with pytest.raises(CredentialHelperError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    assert "docker-credential-garbage" in str(info.value)
    assert SECRET not in str(info.value)


def test_helper_timeout(tmp_path: Path, bin_dir: Path) -> None:
    _install(bin_dir, "slow", _SLOW_HELPER, tmp_path / "unused.log")
    path = _config(tmp_path, {"credHelpers": {"ghcr.io": "slow"}})
    store = CredentialStore(config_path=path, helper_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(CredentialHelperError) as info:
        _lookup(store, "ghcr.io")
    assert time.monotonic() - started < 3
    assert "docker-credential-slow" in str(info.value)
    assert "timed out" in str(info.value)


def test_missing_helper(tmp_path: Path, bin_dir: Path) -> None:
    path = _config(tmp_path, {"credsStore": "does-not-exist-anywhere"})
    with pytest.raises(CredentialHelperError) as info:
        _lookup(CredentialStore(config_path=path), "ghcr.io")
    assert "docker-credential-does-not-exist-anywhere" in str(info.value)
    assert "not found" in str(info.value)


def test_helper_name_with_path_is_refused(tmp_path: Path) -> None:
    path = _config(tmp_path, {"credsStore": "../../bin/sh"})
    with pytest.raises(CredentialHelperError, match="invalid credential helper name"):
        _lookup(CredentialStore(config_path=path), "ghcr.io")


def test_lookups_are_cached(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "fake", _RETURNING_HELPER, calls)
    path = _config(tmp_path, {"credsStore": "fake"})
    store = CredentialStore(config_path=path)

    async def main() -> list[Credentials | None]:
        results: list[Credentials | None] = [None] * 4
        async with trio.open_nursery() as nursery:
            for index in range(4):

                async def one(index: int = index) -> None:
                    results[index] = await store.lookup("ghcr.io")

                nursery.start_soon(one)
        results.append(await store.lookup("GHCR.io"))
        return results

    results = trio.run(main)
    assert results == [Credentials("helperuser", SECRET)] * 5
    assert _calls(calls) == ["ghcr.io"]
    # The config file is read once: changing it does not matter any more.
    path.write_text("{broken")
    assert _lookup(store, "quay.io") == Credentials("helperuser", SECRET)


def test_helper_errors_are_not_cached(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    path = _config(tmp_path, {"credsStore": "later"})
    store = CredentialStore(config_path=path)
    with pytest.raises(CredentialHelperError):
        _lookup(store, "ghcr.io")
    _install(bin_dir, "later", _RETURNING_HELPER, calls)
    assert _lookup(store, "ghcr.io") == Credentials("helperuser", SECRET)


# --------------------------------------------------------------------------- precedence


def test_precedence(tmp_path: Path, bin_dir: Path, calls: Path) -> None:
    _install(bin_dir, "fake", _RETURNING_HELPER, calls)
    _install(bin_dir, "store", _RETURNING_HELPER.replace("helperuser", "storeuser"), calls)
    document = {
        "credHelpers": {"ghcr.io": "fake"},
        "credsStore": "store",
        "auths": {"ghcr.io": {"auth": _b64("fileuser:p")}, "quay.io": {"auth": _b64("q:p")}},
    }
    path = _config(tmp_path, document)
    explicit = {"https://ghcr.io/": Credentials("explicit", "p")}
    default = Credentials("default", "p")

    def lookup(registry: str, **kwargs: object) -> Credentials | None:
        return _lookup(CredentialStore(config_path=path, **kwargs), registry)  # type: ignore[arg-type]

    assert lookup("ghcr.io", explicit=explicit, default=default) == Credentials("explicit", "p")
    assert lookup("quay.io", explicit=explicit, default=default) == default
    assert lookup("ghcr.io", default=default) == default
    assert lookup("ghcr.io") == Credentials("helperuser", SECRET)
    assert lookup("quay.io") == Credentials("storeuser", SECRET)
    document["credsStore"] = ""
    path.write_text(json.dumps(document))
    assert lookup("quay.io") == Credentials("q", "p")


def test_explicit_docker_hub_aliases(tmp_path: Path) -> None:
    store = CredentialStore(
        config_path=tmp_path / "none.json",
        explicit={"index.docker.io": Credentials("hub", "p")},
    )
    assert _lookup(store, "docker.io") == Credentials("hub", "p")
    assert _lookup(store, "registry-1.docker.io") == Credentials("hub", "p")
