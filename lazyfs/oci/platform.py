"""Platforms (os/architecture/variant) and choosing a platform's manifest from an index.

Platforms are written as in the OCI image index (``os``, ``architecture``, ``variant``,
``os.version``, ``os.features``) and on the command line as ``os/arch[/variant]``.
Architecture names are normalised to Go's (``GOARCH``) spelling, which the OCI spec uses:
``x86_64`` is ``amd64``, ``aarch64`` is ``arm64``, ``i686`` is ``386``, ``armv7l`` and
``armhf`` are ``arm`` variant ``v7``, ``armel`` is ``arm`` variant ``v6``. After
normalisation 32-bit ``arm`` always has a variant (default ``v7``), as does ``arm64``
(default ``v8``); ``amd64`` variant ``v1`` is the same as no variant.

A lower variant runs on a higher one of the same architecture (``arm/v6`` code runs on an
``arm/v7`` machine, ``amd64/v2`` on ``amd64/v3``), which :func:`select_manifest` uses when an
index has no exact match.
"""

from __future__ import annotations

import platform as _host_platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lazyfs.errors import ManifestError, PlatformNotFound

if TYPE_CHECKING:
    from lazyfs.oci.manifest import Descriptor

__all__ = ["ATTESTATION_ANNOTATION", "Platform", "select_manifest"]

#: Annotation BuildKit sets on index entries that hold attestations, not images.
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
_ATTESTATION_VALUE = "attestation-manifest"

_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VERSION_RE = re.compile(r"v?([0-9]+)(?:\.([0-9]+))?")

_OS_ALIASES = {"macos": "darwin"}

# alias -> (architecture, variant implied by the alias or None)
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "x64": ("amd64", None),
    "amd64": ("amd64", None),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "x86": ("386", None),
    "386": ("386", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "armv5l": ("arm", "v5"),
    "armv5": ("arm", "v5"),
    "arm": ("arm", None),
    "ppc64el": ("ppc64le", None),
}

# Variant assumed for matching when none is given; also the lowest, baseline variant.
_DEFAULT_VARIANT = {"arm": "v7", "arm64": "v8", "amd64": "v1"}


def _normalise_variant(architecture: str, variant: str | None) -> str | None:
    """Return *variant* in canonical form for the (already normalised) *architecture*."""
    if variant is not None:
        variant = variant.lower()
    if architecture in _DEFAULT_VARIANT:
        if variant is None:
            variant = _DEFAULT_VARIANT[architecture]
        match = _VERSION_RE.fullmatch(variant)
        if match is not None:
            major, minor = match.groups()
            variant = f"v{int(major)}"
            if minor is not None and int(minor) != 0:
                variant += f".{int(minor)}"
        if architecture == "amd64" and variant == "v1":
            variant = None
    return variant


def _variant_rank(architecture: str, variant: str | None) -> tuple[int, int] | None:
    """Order the normalised variants of *architecture*; None if they are not ordered."""
    if architecture not in _DEFAULT_VARIANT:
        return None
    match = _VERSION_RE.fullmatch(variant or _DEFAULT_VARIANT[architecture])
    if match is None:
        return None
    major, minor = match.groups()
    return int(major), int(minor or 0)


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS and CPU architecture, with optional variant, OS version and OS features.

    Instances hold what they were given; :meth:`parse` and :meth:`host` return normalised
    platforms and :meth:`normalized` normalises any other.
    """

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "os_features", tuple(self.os_features))

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/arch`` or ``os/arch/variant`` and return it normalised.

        Raises :class:`ValueError` if *text* does not have that form.
        """
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) not in (2, 3) or not all(_PART_RE.fullmatch(p) for p in parts):
            raise ValueError(
                f"invalid platform {text!r}: expected os/arch or os/arch/variant, "
                "e.g. linux/amd64 or linux/arm64/v8"
            )
        variant = parts[2] if len(parts) == 3 else None
        return cls(parts[0], parts[1], variant).normalized()

    @classmethod
    def host(cls) -> Platform:
        """Return the normalised platform of this machine (always ``linux``)."""
        machine = _host_platform.machine() or "unknown"
        return cls("linux", machine).normalized()

    @classmethod
    def from_json(cls, data: Any, where: str = "platform") -> Platform:
        """Build a platform from an OCI ``platform`` object, without normalising it.

        Raises :class:`ManifestError` naming *where* when a field is missing or ill-typed.
        """
        if not isinstance(data, Mapping):
            raise ManifestError(f"{where}: must be a JSON object")

        def text(key: str, required: bool) -> str | None:
            value = data.get(key)
            if value is None and not required:
                return None
            if not isinstance(value, str) or (required and not value):
                need = "a non-empty string" if required else "a string"
                raise ManifestError(f"{where}: {key} must be {need}")
            return value

        features = data.get("os.features")
        if features is None:
            features = []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ManifestError(f"{where}: os.features must be a list of strings")
        return cls(
            os=text("os", True),  # type: ignore[arg-type]
            architecture=text("architecture", True),  # type: ignore[arg-type]
            variant=text("variant", False),
            os_version=text("os.version", False),
            os_features=tuple(features),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the OCI ``platform`` object, omitting unset optional fields."""
        data: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version is not None:
            data["os.version"] = self.os_version
        if self.os_features:
            data["os.features"] = list(self.os_features)
        if self.variant is not None:
            data["variant"] = self.variant
        return data

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        if self.variant is not None:
            text += f"/{self.variant}"
        return text

    def normalized(self) -> Platform:
        """Return this platform with canonical os, architecture and variant names."""
        os = self.os.lower()
        os = _OS_ALIASES.get(os, os)
        arch = self.architecture.lower()
        arch, implied = _ARCH_ALIASES.get(arch, (arch, None))
        variant = _normalise_variant(arch, self.variant if self.variant is not None else implied)
        return Platform(os, arch, variant, self.os_version, self.os_features)

    def matches(self, other: Platform) -> bool:
        """Return whether *other* is this (wanted) platform.

        The os and architecture must be equal after normalisation. If this platform has a
        variant, *other*'s normalised variant must equal it (``arm64`` without a variant
        counts as ``v8``); if it has none, any variant matches.
        """
        mine, theirs = self.normalized(), other.normalized()
        if (mine.os, mine.architecture) != (theirs.os, theirs.architecture):
            return False
        return self.variant is None or mine.variant == theirs.variant


def _is_attestation(descriptor: Descriptor) -> bool:
    platform = descriptor.platform
    if platform is not None and (platform.os, platform.architecture) == ("unknown", "unknown"):
        return True
    return descriptor.annotations.get(ATTESTATION_ANNOTATION) == _ATTESTATION_VALUE


def select_manifest(manifests: Sequence[Descriptor], wanted: Platform) -> Descriptor:
    """Return the entry of an index's *manifests* to run on the *wanted* platform.

    Entries without a platform and attestation entries (platform ``unknown/unknown`` or the
    ``vnd.docker.reference.type: attestation-manifest`` annotation) are skipped. The first
    entry whose normalised os, architecture and variant equal *wanted*'s is chosen; failing
    that, the entry with the highest variant that still runs on *wanted*'s (e.g. ``arm/v6``
    for ``arm/v7``; ``arm64`` with no variant or ``v8`` for ``arm64``); failing that, if
    *wanted* has no variant and its architecture has no variant order, the first entry of
    its os and architecture. Otherwise :class:`PlatformNotFound` lists what is available.
    """
    want = wanted.normalized()
    want_rank = _variant_rank(want.architecture, want.variant)
    available: list[str] = []
    candidates: list[tuple[Descriptor, Platform]] = []
    for descriptor in manifests:
        if descriptor.platform is None or _is_attestation(descriptor):
            continue
        shown = str(descriptor.platform)
        if shown not in available:
            available.append(shown)
        have = descriptor.platform.normalized()
        if (have.os, have.architecture) == (want.os, want.architecture):
            candidates.append((descriptor, have))

    for descriptor, have in candidates:
        if have.variant == want.variant:
            return descriptor

    if want_rank is not None:
        best: tuple[tuple[int, int], Descriptor] | None = None
        for descriptor, have in candidates:
            rank = _variant_rank(have.architecture, have.variant)
            if rank is not None and rank <= want_rank and (best is None or rank > best[0]):
                best = (rank, descriptor)
        if best is not None:
            return best[1]
    elif wanted.variant is None and candidates:
        return candidates[0][0]

    listed = ", ".join(available) if available else "none"
    raise PlatformNotFound(f"no manifest for {wanted} in index; available: {listed}")
