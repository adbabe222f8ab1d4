"""Errors lazyfs reports to its users.

Every error raised on purpose by lazyfs derives from :class:`LazyfsError`; its message is one
line a person can act on, and the command line prints it without a traceback. Messages never
contain credentials or tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class LazyfsError(Exception):
    """Base of every error lazyfs raises on purpose."""


class InvalidReference(LazyfsError, ValueError):
    """An image reference could not be parsed."""


class InvalidDigest(LazyfsError, ValueError):
    """A content digest is malformed or uses an unsupported algorithm."""


class DigestMismatch(LazyfsError):
    """Content did not hash to the digest it was fetched by."""


class ManifestError(LazyfsError):
    """A manifest, index or image config is malformed or of an unsupported kind."""


class PlatformNotFound(LazyfsError):
    """An image index has no manifest for the requested platform."""


class MultipartError(LazyfsError):
    """A multipart/byteranges response body could not be parsed."""


class RegistryError(LazyfsError):
    """The registry answered with an error, or could not be talked to.

    ``status`` is the HTTP status when there was one.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryUnreachable(RegistryError):
    """The registry could not be reached (DNS, connection, TLS, timeouts) after retries."""


class AuthError(RegistryError):
    """Authentication failed or was required and no usable credentials were found."""


class NotFound(RegistryError):
    """The repository, manifest or blob does not exist."""


class CredentialHelperError(LazyfsError):
    """A ``docker-credential-*`` helper failed."""


class LayerIndexError(LazyfsError):
    """A layer's index (footer, TOC, tar headers) is malformed, unsafe or inconsistent.

    The message names the layer and, where there is one, the entry.
    """


class ChunkError(LazyfsError):
    """A chunk could not be decoded or did not match its digest."""


class FetchError(LazyfsError):
    """File content could not be read (local I/O error, a chunk that cannot be fetched)."""


class ReadTimeout(FetchError):
    """A read did not complete within the fetcher's ``read_timeout``."""


def leaf_exceptions(group: BaseExceptionGroup) -> Iterator[BaseException]:
    """Every exception inside ``group`` and its nested groups, in order."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaf_exceptions(exc)
        else:
            yield exc


@contextlib.contextmanager
def unwrap_task_errors() -> Iterator[None]:
    """Turn an exception group from a trio nursery back into one error.

    trio wraps what a nursery's tasks raise in a group; callers of lazyfs expect its own
    errors (the CLI prints a :class:`LazyfsError` as one line). When every error in the group
    is an ordinary exception, the first :class:`LazyfsError` in it (else its first error)
    is raised instead. Groups holding cancellation or KeyboardInterrupt pass unchanged.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(leaf_exceptions(group))
        if not leaves or not all(isinstance(e, Exception) for e in leaves):
            raise
        raise next((e for e in leaves if isinstance(e, LazyfsError)), leaves[0]) from None
