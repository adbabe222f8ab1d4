"""Tests for lazyfs.oci.digest: Digest validation, hashing, verification and Verifier."""

from __future__ import annotations

import hashlib
import itertools
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import DigestMismatch, InvalidDigest
from lazyfs.oci.digest import Digest, Verifier

EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
HELLO_SHA256 = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_valid_sha256() -> None:
    d = Digest(EMPTY_SHA256)
    assert d == EMPTY_SHA256
    assert isinstance(d, str)
    assert d.algorithm == "sha256"
    assert d.hex == EMPTY_SHA256.split(":")[1]
    assert hash(d) == hash(EMPTY_SHA256)
    assert {d: 1}[EMPTY_SHA256] == 1


def test_valid_sha512() -> None:
    text = "sha512:" + hashlib.sha512(b"").hexdigest()
    d = Digest(text)
    assert d.algorithm == "sha512"
    assert len(d.hex) == 128


def test_digest_of_digest_is_itself() -> None:
    d = Digest(EMPTY_SHA256)
    assert Digest(d) is d


def test_pickle_round_trip() -> None:
    d = Digest(EMPTY_SHA256)
    again = pickle.loads(pickle.dumps(d))
    assert again == d
    assert type(again) is Digest


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected 'algorithm:hex'"),
        ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "algorithm:hex"),
        ("sha256:", "64 lowercase hex"),
        ("sha256:abc", "64 lowercase hex"),
        ("sha256:" + "A" * 64, "64 lowercase hex"),
        ("sha256:" + "g" * 64, "64 lowercase hex"),
        ("sha256:" + "a" * 65, "64 lowercase hex"),
        ("sha256:" + "a" * 64 + "\n", "64 lowercase hex"),
        ("sha512:" + "a" * 64, "128 lowercase hex"),
        ("SHA256:" + "a" * 64, "malformed"),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", "unsupported algorithm 'md5'"),
        ("blake3:" + "a" * 64, "unsupported algorithm 'blake3'"),
        ("sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", "unsupported algorithm"),
        (":" + "a" * 64, "malformed"),
        ("sha256 :" + "a" * 64, "malformed"),
    ],
)
def test_invalid_digests(text: str, fragment: str) -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text)[:40] in message
    assert "\n" not in message


def test_invalid_digest_non_string() -> None:
    with pytest.raises(InvalidDigest, match="must be a string"):
        Digest(123)  # type: ignore[arg-type]


def test_invalid_digest_is_value_error() -> None:
    with pytest.raises(ValueError):
        Digest("nope")


def test_long_input_is_shortened_in_message() -> None:
    with pytest.raises(InvalidDigest) as info:
        Digest("x" * 10_000)
    assert len(str(info.value)) < 400


def test_of() -> None:
    assert Digest.of(b"") == EMPTY_SHA256
    assert Digest.of(b"hello") == HELLO_SHA256
    assert Digest.of(bytearray(b"hello")) == HELLO_SHA256
    assert Digest.of(memoryview(b"hello")) == HELLO_SHA256
    assert Digest.of(b"hello", "sha512") == "sha512:" + hashlib.sha512(b"hello").hexdigest()
    assert type(Digest.of(b"x")) is Digest


def test_of_unsupported_algorithm() -> None:
    with pytest.raises(InvalidDigest, match="md5"):
        Digest.of(b"", "md5")


def test_hasher_is_fresh() -> None:
    d = Digest(HELLO_SHA256)
    h = d.hasher()
    h.update(b"hello")
    assert h.hexdigest() == d.hex
    assert d.hasher().hexdigest() == Digest(EMPTY_SHA256).hex
    assert Digest.of(b"hello", "sha512").hasher().name == "sha512"


def test_verify() -> None:
    Digest(HELLO_SHA256).verify(b"hello", "blob x")
    with pytest.raises(DigestMismatch) as info:
        Digest(HELLO_SHA256).verify(b"hellO", "blob x")
    assert str(info.value) == f"blob x: expected {HELLO_SHA256}, got {Digest.of(b'hellO')}"


def test_verifier_accepts_matching_content() -> None:
    v = Verifier(Digest(HELLO_SHA256), "blob", size=5)
    v.update(b"he")
    v.update(memoryview(b"ll"))
    v.update(bytearray(b"o"))
    assert v.bytes_seen == 5
    v.finish()


def test_verifier_without_size() -> None:
    v = Verifier(Digest(EMPTY_SHA256), "blob")
    assert v.bytes_seen == 0
    v.finish()


def test_verifier_hash_mismatch() -> None:
    v = Verifier(Digest(HELLO_SHA256), "layer 3", size=5)
    v.update(b"HELLO")
    with pytest.raises(DigestMismatch) as info:
        v.finish()
    assert str(info.value) == f"layer 3: expected {HELLO_SHA256}, got {Digest.of(b'HELLO')}"


@pytest.mark.parametrize("content", [b"hell", b"hello!"])
def test_verifier_size_mismatch(content: bytes) -> None:
    v = Verifier(Digest(HELLO_SHA256), "layer 3", size=5)
    v.update(content)
    with pytest.raises(DigestMismatch) as info:
        v.finish()
    assert str(info.value) == f"layer 3: expected 5 bytes, got {len(content)} bytes"


def test_verifier_size_given_but_content_right_and_size_wrong() -> None:
    # The declared size is checked even when the hash would match.
    v = Verifier(Digest(HELLO_SHA256), "blob", size=6)
    v.update(b"hello")
    with pytest.raises(DigestMismatch, match="expected 6 bytes, got 5 bytes"):
        v.finish()


def test_verifier_validates_expected() -> None:
    with pytest.raises(InvalidDigest):
        Verifier("sha256:nope", "blob")  # type: ignore[arg-type]


def test_verifier_sha512() -> None:
    v = Verifier(Digest.of(b"abc", "sha512"), "blob", size=3)
    v.update(b"abc")
    v.finish()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512), st.lists(st.integers(0, 512), max_size=5))
def test_verifier_chunking_does_not_matter(data: bytes, cuts: list[int]) -> None:
    d = Digest.of(data)
    d.verify(data, "x")
    v = Verifier(d, "x", size=len(data))
    points = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    for start, end in itertools.pairwise(points):
        v.update(data[start:end])
    assert v.bytes_seen == len(data)
    v.finish()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=150))
def test_arbitrary_text_is_valid_or_invalid_digest(text: str) -> None:
    try:
        d = Digest(text)
    except InvalidDigest:
        return
    assert d == text
    assert d.algorithm in ("sha256", "sha512")
