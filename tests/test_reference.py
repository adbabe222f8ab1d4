"""Tests for lazyfs.oci.reference: parsing, normalisation, validation and formatting."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import InvalidReference
from lazyfs.oci.digest import Digest
from lazyfs.oci.reference import Reference, api_host

D = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("python", "docker.io", "library/python", "latest", None),
        ("python:3.12-slim", "docker.io", "library/python", "3.12-slim", None),
        ("user/repo", "docker.io", "user/repo", "latest", None),
        ("user/repo:v1", "docker.io", "user/repo", "v1", None),
        ("a/b/c/d", "docker.io", "a/b/c/d", "latest", None),
        ("docker.io/python", "docker.io", "library/python", "latest", None),
        ("docker.io/library/python", "docker.io", "library/python", "latest", None),
        ("index.docker.io/python", "docker.io", "library/python", "latest", None),
        ("index.docker.io/user/repo:t", "docker.io", "user/repo", "t", None),
        ("registry-1.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None),
        ("localhost/foo", "localhost", "foo", "latest", None),
        ("localhost:5000/foo/bar:t", "localhost:5000", "foo/bar", "t", None),
        ("ghcr.io/owner/image:1.0", "ghcr.io", "owner/image", "1.0", None),
        ("quay.io/x", "quay.io", "x", "latest", None),
        ("myhost:5000/x", "myhost:5000", "x", "latest", None),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None),
        ("[::1]:5000/x/y:z", "[::1]:5000", "x/y", "z", None),
        ("[::1]/x", "[::1]", "x", "latest", None),
        ("[2001:db8::1]:443/team/app", "[2001:db8::1]:443", "team/app", "latest", None),
        ("Registry.Example.COM/app", "Registry.Example.COM", "app", "latest", None),
        (f"python@{D}", "docker.io", "library/python", None, D),
        (f"python:3@{D}", "docker.io", "library/python", "3", D),
        (f"localhost:5000/a/b:t@{D}", "localhost:5000", "a/b", "t", D),
        (f"host.example:5000/ns/repo:tag@{D}", "host.example:5000", "ns/repo", "tag", D),
        ("localhost", "docker.io", "library/localhost", "latest", None),
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
        ("foo/localhost", "docker.io", "foo/localhost", "latest", None),
        ("x/a.b_c__d-e--f", "docker.io", "x/a.b_c__d-e--f", "latest", None),
        ("a_b__c-d--e/g", "docker.io", "a_b__c-d--e/g", "latest", None),
        ("x:_", "docker.io", "library/x", "_", None),
        ("x:A.b-C_1", "docker.io", "library/x", "A.b-C_1", None),
        ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, None),
    ],
)
def test_parse_normalises(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    if digest is not None:
        assert type(ref.digest) is Digest


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        (" ", "whitespace"),
        ("python ", "whitespace"),
        ("py thon", "whitespace"),
        ("python\n", "whitespace"),
        ("Python", "lowercase"),
        ("user/Repo", "lowercase"),
        ("docker.io/Library/python", "lowercase"),
        ("a//b", "empty path component"),
        ("/a", "empty path component"),
        ("a/", "empty path component"),
        ("docker.io/", "empty path component"),
        ("localhost:5000//a", "empty path component"),
        ("-a", "must start and end"),
        ("a-", "must start and end"),
        ("a.", "must start and end"),
        ("_a", "must start and end"),
        ("a___b", "must start and end"),
        ("a._b", "must start and end"),
        ("a/.b", "must start and end"),
        ("a$b", "invalid character '$'"),
        ("a/b\x00", "invalid character"),
        ("café", "invalid character"),
        ("a:", "tag after ':' is empty"),
        ("a:.t", "tag"),
        ("a:-t", "tag"),
        ("a:t!", "tag"),
        ("a:" + "t" * 129, "at most 128"),
        ("a@", "digest after '@' is empty"),
        ("a@sha256:abc", "64 lowercase hex"),
        ("a@sha256:" + "AB" * 32, "64 lowercase hex"),
        ("a@md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm"),
        (f"a@{D}@{D}", "invalid digest"),
        (":tag", "repository name is empty"),
        (f"@{D}", "repository name is empty"),
        ("-host.example/x", "not a valid host"),
        ("host..example/x", "not a valid host"),
        ("host.example:/x", "invalid port"),
        ("host.example:abc/x", "invalid port"),
        ("host.example:99999/x", "invalid port"),
        ("[::1/x", "IPv6"),
        ("[::g]:5000/x", "IPv6"),
        ("[::1]x/y", "host[:port]"),
        ("[]/x", "invalid character"),
        ("a" * 64, "image ID"),
        ("a/" + "b" * 250, "at most 255"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    message = str(info.value)
    assert fragment in message
    assert message.startswith("invalid reference ")
    assert repr(text)[:30] in message
    assert "\n" not in message


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse(None)  # type: ignore[arg-type]


def test_name_length_limit_counts_normalised_name() -> None:
    # docker.io/ (10) + library/ (8) + 237 = 255
    assert Reference.parse("a" * 237).repository == "library/" + "a" * 237
    with pytest.raises(InvalidReference, match="at most 255"):
        Reference.parse("a" * 238)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("python", "docker.io/library/python:latest"),
        ("user/repo:v2", "docker.io/user/repo:v2"),
        (f"localhost:5000/a/b:t@{D}", f"localhost:5000/a/b:t@{D}"),
        (f"python@{D}", f"docker.io/library/python@{D}"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
    ],
)
def test_str_is_canonical(text: str, canonical: str) -> None:
    ref = Reference.parse(text)
    assert str(ref) == canonical
    assert Reference.parse(canonical) == ref


def test_name_and_reference() -> None:
    ref = Reference.parse("python:3")
    assert ref.name == "docker.io/library/python"
    assert ref.reference == "3"
    pinned = Reference.parse(f"python:3@{D}")
    assert pinned.reference == D


def test_reference_without_tag_or_digest_raises() -> None:
    bare = Reference.parse("python").in_repository("library/ruby")
    with pytest.raises(InvalidReference, match="neither"):
        _ = bare.reference


def test_with_digest_keeps_tag() -> None:
    ref = Reference.parse("ghcr.io/o/i:1").with_digest(Digest(D))
    assert (ref.tag, ref.digest) == ("1", D)
    assert str(ref) == f"ghcr.io/o/i:1@{D}"
    again = ref.with_digest(D2)
    assert again.digest == D2
    assert type(again.digest) is Digest


def test_with_digest_validates() -> None:
    with pytest.raises(InvalidReference):
        Reference.parse("python").with_digest("sha256:nope")  # type: ignore[arg-type]


def test_with_tag_drops_digest() -> None:
    ref = Reference.parse(f"python:3@{D}").with_tag("4")
    assert (ref.tag, ref.digest) == ("4", None)
    with pytest.raises(InvalidReference):
        ref.with_tag("-bad")
    with pytest.raises(InvalidReference):
        ref.with_tag("")


def test_in_repository() -> None:
    ref = Reference.parse(f"localhost:5000/a/b:t@{D}").in_repository("c/d")
    assert ref == Reference("localhost:5000", "c/d", None, None)
    assert str(ref) == "localhost:5000/c/d"
    with pytest.raises(InvalidReference, match="lowercase"):
        ref.in_repository("C")
    hub = Reference.parse("python").in_repository("ruby")
    assert hub.repository == "library/ruby"


def test_constructor_validates_and_normalises() -> None:
    assert Reference("index.docker.io", "python", "latest", None) == Reference.parse("python")
    digest_ref = Reference("ghcr.io", "a", None, D)  # type: ignore[arg-type]
    assert type(digest_ref.digest) is Digest
    for bad in [
        ("myhost", "a", "t", None),  # would read back as a Docker Hub namespace
        ("ghcr.io", "A", "t", None),
        ("ghcr.io", "a", "-t", None),
        ("ghcr.io", "a", None, "sha256:x"),
        ("ghcr.io", "", "t", None),
        ("", "a", "t", None),
        (None, "a", "t", None),
    ]:
        with pytest.raises(InvalidReference):
            Reference(*bad)  # type: ignore[arg-type]


def test_frozen() -> None:
    ref = Reference.parse("python")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "x"  # type: ignore[misc]
    assert hash(ref) == hash(Reference.parse("docker.io/library/python:latest"))


def test_api_host() -> None:
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("index.docker.io") == "registry-1.docker.io"
    assert api_host("ghcr.io") == "ghcr.io"
    assert api_host("localhost:5000") == "localhost:5000"
    assert api_host("[::1]:5000") == "[::1]:5000"


# -- property tests -------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]{1,8}(?:-[a-z0-9]{1,4})?(?:\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
_port = st.integers(0, 65535).map(str)


@st.composite
def _registries(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["hub", "localhost", "dotted", "port", "ipv6"]))
    if kind == "hub":
        return "docker.io"
    if kind == "localhost":
        return "localhost" + draw(st.sampled_from(["", ":5000"]))
    if kind == "dotted":
        return draw(_domain) + "." + draw(st.sampled_from(["io", "com", "example"]))
    if kind == "port":
        return draw(_domain) + ":" + draw(_port)
    return "[" + draw(st.sampled_from(["::1", "2001:db8::1", "fe80::a:b"])) + "]:" + draw(_port)


@st.composite
def _references(draw: st.DrawFn) -> Reference:
    registry = draw(_registries())
    repository = "/".join(draw(st.lists(_component, min_size=1, max_size=4)))
    if registry == "docker.io" and "/" not in repository:
        repository = "library/" + repository
    tag = draw(st.none() | st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
    digest = draw(st.none() | st.binary(max_size=8).map(Digest.of))
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


@settings(max_examples=150, deadline=None)
@given(_references())
def test_round_trip(ref: Reference) -> None:
    assert Reference.parse(str(ref)) == ref
    assert str(Reference.parse(str(ref))) == str(ref)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("aZ0:/@._-[]% \n") | st.characters(), max_size=80)
    | st.builds(lambda r, junk: str(r) + junk, _references(), st.text(max_size=4))
)
def test_parse_only_raises_invalid_reference(text: str) -> None:
    try:
        ref = Reference.parse(text)
    except InvalidReference as exc:
        assert "\n" not in str(exc)
        return
    # Whatever parses is in canonical form once printed.
    assert Reference.parse(str(ref)) == ref
