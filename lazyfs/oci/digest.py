"""Content digests as defined by the OCI image specification.

A digest is written ``algorithm ":" encoded``. The grammar allows many algorithms; lazyfs
accepts the two registered ones, ``sha256`` (64 lowercase hex characters) and ``sha512``
(128 lowercase hex characters), and rejects everything else with :class:`InvalidDigest`.

:class:`Digest` is a ``str`` subclass, so it compares, hashes and serialises exactly like
its text. :class:`Verifier` checks streamed content against a digest and an optional size.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from lazyfs.errors import DigestMismatch, InvalidDigest

__all__ = ["SUPPORTED_ALGORITHMS", "Digest", "Verifier"]

#: Supported algorithms and the number of hex characters their encoded part has.
SUPPORTED_ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

# The OCI digest grammar: algorithm components joined by one of "+._-", then ":", then
# the encoded part. Used only to tell "malformed" from "unsupported" in error messages.
_ALGORITHM_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED_RE = re.compile(r"[a-zA-Z0-9=_-]+")
_LOWER_HEX_RE = re.compile(r"[0-9a-f]+")


def _quote(text: str, limit: int = 200) -> str:
    """Return ``repr(text)``, shortened so an error message stays readable."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


class Digest(str):
    """A validated ``algorithm:hex`` content digest.

    ``Digest(text)`` raises :class:`InvalidDigest` unless *text* is a ``sha256`` digest with
    64 lowercase hex characters or a ``sha512`` digest with 128. The instance *is* the text:
    ``Digest(t) == t`` and ``hash(Digest(t)) == hash(t)``.
    """

    __slots__ = ()

    def __new__(cls, text: Any) -> Digest:
        if type(text) is cls:
            return text
        if not isinstance(text, str):
            raise InvalidDigest(f"invalid digest {text!r}: a digest must be a string")
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise InvalidDigest(
                f"invalid digest {_quote(text)}: expected 'algorithm:hex', e.g. 'sha256:<64 hex>'"
            )
        length = SUPPORTED_ALGORITHMS.get(algorithm)
        if length is None:
            if _ALGORITHM_RE.fullmatch(algorithm) and _ENCODED_RE.fullmatch(encoded):
                supported = ", ".join(SUPPORTED_ALGORITHMS)
                raise InvalidDigest(
                    f"invalid digest {_quote(text)}: unsupported algorithm {algorithm!r} "
                    f"(supported: {supported})"
                )
            raise InvalidDigest(f"invalid digest {_quote(text)}: malformed algorithm or encoding")
        if len(encoded) != length or not _LOWER_HEX_RE.fullmatch(encoded):
            raise InvalidDigest(
                f"invalid digest {_quote(text)}: a {algorithm} digest needs exactly {length} "
                "lowercase hex characters after the colon"
            )
        return super().__new__(cls, text)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, algorithm: str = "sha256") -> Digest:
        """Return the digest of *data* computed with *algorithm*."""
        if algorithm not in SUPPORTED_ALGORITHMS:
            supported = ", ".join(SUPPORTED_ALGORITHMS)
            raise InvalidDigest(
                f"unsupported digest algorithm {algorithm!r} (supported: {supported})"
            )
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    @property
    def algorithm(self) -> str:
        """The algorithm name, e.g. ``"sha256"``."""
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        """The encoded part: the lowercase hex digest value."""
        return self.partition(":")[2]

    def hasher(self) -> Any:
        """Return a new, empty :mod:`hashlib` object for this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def verify(self, data: bytes | bytearray | memoryview, what: str) -> None:
        """Raise :class:`DigestMismatch` unless *data* hashes to this digest.

        The message reads ``"<what>: expected <digest>, got <actual>"``.
        """
        actual = self.hasher()
        actual.update(data)
        if actual.hexdigest() != self.hex:
            raise DigestMismatch(
                f"{what}: expected {self}, got {self.algorithm}:{actual.hexdigest()}"
            )


class Verifier:
    """Check streamed content against an expected digest and, optionally, a size.

    Feed the content in order with :meth:`update`, then call :meth:`finish`, which raises
    :class:`DigestMismatch` if the size (when one was given) or the hash differs.
    """

    __slots__ = ("_hasher", "bytes_seen", "expected", "size", "what")

    def __init__(self, expected: Digest, what: str, size: int | None = None) -> None:
        self.expected = Digest(expected)
        self.what = what
        self.size = size
        #: Number of bytes passed to :meth:`update` so far.
        self.bytes_seen = 0
        self._hasher = self.expected.hasher()

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next *chunk* of content."""
        self._hasher.update(chunk)
        self.bytes_seen += memoryview(chunk).nbytes

    def finish(self) -> None:
        """Raise :class:`DigestMismatch` if the content seen does not match.

        A size mismatch (checked first, when a size was given) reads ``"<what>: expected
        <size> bytes, got <n> bytes"``; a hash mismatch reads ``"<what>: expected <digest>,
        got <actual>"``.
        """
        if self.size is not None and self.bytes_seen != self.size:
            raise DigestMismatch(
                f"{self.what}: expected {self.size} bytes, got {self.bytes_seen} bytes"
            )
        actual = self._hasher.hexdigest()
        if actual != self.expected.hex:
            raise DigestMismatch(
                f"{self.what}: expected {self.expected}, got {self.expected.algorithm}:{actual}"
            )
