"""Image references such as ``python:3.12`` or ``localhost:5000/a/b:t@sha256:…``.

The grammar is Docker's (``distribution/reference``)::

    reference      := name [ ":" tag ] [ "@" digest ]
    name           := [ registry "/" ] repository
    registry       := host [ ":" port ]
    host           := domain-name | "[" IPv6 address "]"
    repository     := path-component ( "/" path-component )*
    path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*
    separator      := "." | "_" | "__" | "-"+
    tag            := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}

with Docker's normalisation: the first path component names a registry only if there is
more than one component and it contains ``.`` or ``:`` or is ``localhost``; otherwise the
registry is Docker Hub, written ``docker.io``, where one-component repositories live under
``library/``. A reference with neither tag nor digest means tag ``latest``. The full name
``registry/repository`` is at most 255 characters long.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from lazyfs.errors import InvalidDigest, InvalidReference
from lazyfs.oci.digest import Digest

__all__ = ["DOCKER_HUB", "Reference", "api_host"]

#: How Docker Hub is written in normalised references.
DOCKER_HUB = "docker.io"
#: The host Docker Hub's registry API is served from.
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DEFAULT_TAG = "latest"
_NAME_MAX = 255

_DOMAIN_RE = re.compile(
    r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
    r"(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*"
)
_IPV6_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]")
_PORT_RE = re.compile(r"[0-9]+")
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_COMPONENT_CHARS_RE = re.compile(r"[a-z0-9._-]*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEX64_RE = re.compile(r"[a-f0-9]{64}")


def _quote(text: str, limit: int = 200) -> str:
    """Return ``repr(text)``, shortened so an error message stays one readable line."""
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _looks_like_registry(component: str) -> bool:
    """Return whether a leading path component names a registry rather than a namespace."""
    return "." in component or ":" in component or component == "localhost"


def _registry_problem(registry: str) -> str | None:
    """Describe what is wrong with *registry* (``host[:port]``), or return None if valid."""
    if not registry:
        return "registry host is empty"
    if registry.startswith("["):
        host, sep, port = registry.partition("]")
        host += sep
        if port:
            if not port.startswith(":"):
                return f"registry {registry!r} is not a valid host[:port]"
            port = port[1:]
        else:
            port = None
        match = _IPV6_RE.fullmatch(host)
        try:
            if match is None:
                raise ValueError
            ipaddress.IPv6Address(match.group(1))
        except ValueError:
            return f"registry {registry!r} does not hold a valid bracketed IPv6 address"
    else:
        host, sep, port = registry.partition(":")
        if not sep:
            port = None
        if not _DOMAIN_RE.fullmatch(host):
            return f"registry {registry!r} is not a valid host[:port]"
    if port is not None and not (_PORT_RE.fullmatch(port) and int(port) <= 65535):
        return f"registry {registry!r} has an invalid port {port!r}"
    if not _looks_like_registry(registry):
        return (
            f"registry {registry!r} must contain '.' or ':' or be 'localhost' "
            "to be recognised as a registry"
        )
    return None


def _repository_problem(repository: str) -> str | None:
    """Describe what is wrong with a repository path, or return None if it is valid."""
    if not repository:
        return "repository name is empty"
    components = repository.split("/")
    if any(not c for c in components):
        return "repository name has an empty path component (leading, trailing or double '/')"
    for component in components:
        if _COMPONENT_RE.fullmatch(component):
            continue
        if component.lower() != component and _COMPONENT_CHARS_RE.fullmatch(component.lower()):
            return f"repository name must be lowercase (path component {component!r})"
        bad = next((c for c in component if not _COMPONENT_CHARS_RE.fullmatch(c.lower())), None)
        if bad is not None:
            return f"repository name contains invalid character {bad!r}"
        return (
            f"path component {component!r} must start and end with a lowercase letter or "
            "digit and separate them only with '.', '_', '__' or runs of '-'"
        )
    return None


def _tag_problem(tag: str) -> str | None:
    """Describe what is wrong with *tag*, or return None if it is valid."""
    if not tag:
        return "tag is empty"
    if len(tag) > 128:
        return f"tag is {len(tag)} characters long; at most 128 are allowed"
    if not _TAG_RE.fullmatch(tag):
        return (
            f"tag {_quote(tag)} may contain only letters, digits, '_', '.' and '-' "
            "and must not start with '.' or '-'"
        )
    return None


def _normalise(registry: str, repository: str) -> tuple[str, str]:
    """Apply Docker Hub's normalisation to a (registry, repository) pair."""
    if registry.lower() in _DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    return registry, repository


def _problem(registry: str, repository: str, tag: str | None, digest: str | None) -> str | None:
    """Describe what is wrong with normalised reference parts, or return None."""
    problem = _registry_problem(registry) or _repository_problem(repository)
    length = len(registry) + 1 + len(repository)
    if problem is None and length > _NAME_MAX:
        problem = (
            f"name registry/repository is {length} characters long; at most {_NAME_MAX} allowed"
        )
    if problem is None and tag is not None:
        problem = _tag_problem(tag)
    if problem is None and digest is not None:
        try:
            Digest(digest)
        except InvalidDigest as exc:
            problem = str(exc)
    return problem


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference.

    ``registry`` is a ``host[:port]`` (Docker Hub is ``docker.io``), ``repository`` the
    slash-separated path within it; at least one of ``tag`` and ``digest`` is normally set
    (:meth:`in_repository` makes one with neither). Construction validates every part,
    raising :class:`InvalidReference`, and applies Docker Hub's normalisation
    (``index.docker.io`` becomes ``docker.io``, ``python`` becomes ``library/python``), so
    ``Reference.parse(str(ref)) == ref`` whenever ``ref`` has a tag or a digest.
    """

    registry: str
    repository: str
    tag: str | None
    digest: Digest | None

    def __post_init__(self) -> None:
        for field in ("registry", "repository"):
            if not isinstance(getattr(self, field), str):
                raise InvalidReference(f"{field} must be a string, not {getattr(self, field)!r}")
        for field in ("tag", "digest"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, str):
                raise InvalidReference(f"{field} must be a string or None, not {value!r}")
        registry, repository = _normalise(self.registry, self.repository)
        problem = _problem(registry, repository, self.tag, self.digest)
        if problem is not None:
            shown = f"{self.registry}/{self.repository}"
            shown += f":{self.tag}" if self.tag is not None else ""
            shown += f"@{self.digest}" if self.digest is not None else ""
            raise InvalidReference(f"invalid reference {_quote(shown)}: {problem}")
        object.__setattr__(self, "registry", registry)
        object.__setattr__(self, "repository", repository)
        if self.digest is not None:
            object.__setattr__(self, "digest", Digest(self.digest))

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalise *text*, raising :class:`InvalidReference` if it is malformed."""
        if not isinstance(text, str):
            raise InvalidReference(f"invalid reference {text!r}: a reference must be a string")

        def fail(problem: str) -> InvalidReference:
            return InvalidReference(f"invalid reference {_quote(text)}: {problem}")

        if not text:
            raise fail("reference is empty")
        if any(c.isspace() for c in text):
            raise fail("reference contains whitespace")
        if _HEX64_RE.fullmatch(text):
            raise fail("a 64-character hex string is an image ID, not a repository name")

        name, at, digest_text = text.partition("@")
        if at and not digest_text:
            raise fail("digest after '@' is empty")
        digest = digest_text if at else None

        tag: str | None = None
        colon = name.rfind(":")
        if colon > name.rfind("/"):
            name, tag = name[:colon], name[colon + 1 :]
            if not tag:
                raise fail("tag after ':' is empty")
        if not name:
            raise fail("repository name is empty")

        first, slash, rest = name.partition("/")
        if slash and _looks_like_registry(first):
            registry, repository = first, rest
        else:
            registry, repository = DOCKER_HUB, name
        registry, repository = _normalise(registry, repository)

        problem = _problem(registry, repository, tag, digest)
        if problem is not None:
            raise fail(problem)
        if tag is None and digest is None:
            tag = _DEFAULT_TAG
        return cls(registry, repository, tag, Digest(digest) if digest is not None else None)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def name(self) -> str:
        """``registry/repository``, e.g. ``docker.io/library/python``."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to fetch under ``/v2/<repository>/manifests/``: the digest if set, else the tag.

        Raises :class:`InvalidReference` if neither is set.
        """
        if self.digest is not None:
            return self.digest
        if self.tag is not None:
            return self.tag
        raise InvalidReference(f"reference {self} has neither a tag nor a digest")

    def with_digest(self, digest: Digest | str) -> Reference:
        """Return this reference pinned to *digest*, keeping the tag.

        A malformed *digest* raises :class:`InvalidReference`.
        """
        try:
            checked = Digest(digest)
        except InvalidDigest as exc:
            raise InvalidReference(str(exc)) from None
        return Reference(self.registry, self.repository, self.tag, checked)

    def with_tag(self, tag: str) -> Reference:
        """Return this repository at *tag*, without a digest."""
        return Reference(self.registry, self.repository, tag, None)

    def in_repository(self, repository: str) -> Reference:
        """Return a reference to *repository* on the same registry, with no tag or digest."""
        return Reference(self.registry, repository, None, None)


def api_host(registry: str) -> str:
    """Return the host (with port, if any) to send registry API requests for *registry* to.

    Docker Hub's ``docker.io`` (and its aliases ``index.docker.io`` and
    ``registry-1.docker.io``) is served from ``registry-1.docker.io``; every other registry
    is its own API host.
    """
    return DOCKER_HUB_API if registry.lower() in _DOCKER_HUB_ALIASES else registry
