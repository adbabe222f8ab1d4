"""From a reference to one platform's verified manifest and config, wherever images live.

:func:`resolve_image` is the logic shared by registries and OCI layouts: it is given ways to
fetch manifests and blobs and does the rest (index narrowing to a platform, size and digest
checks, config parsing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import ManifestError, PlatformNotFound
from .digest import Digest
from .manifest import (
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from .platform import Platform, select_manifest
from .reference import Reference

__all__ = ["FetchedManifest", "ResolvedImage", "resolve_image"]


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as it was stored, with its verified digest."""

    data: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """An image resolved to one platform's verified manifest and config.

    ``reference`` is the registry reference, or the ``oci:DIR[:TAG]`` text for a layout.
    """

    reference: Reference | str
    digest: Digest
    manifest: ImageManifest
    manifest_bytes: bytes
    config: ImageConfig
    config_bytes: bytes
    platform: Platform
    index: ImageIndex | None = None
    index_digest: Digest | None = None


async def resolve_image(
    name: Reference | str,
    top: FetchedManifest,
    fetch_manifest: Callable[[Descriptor], Awaitable[FetchedManifest]],
    fetch_config: Callable[[Descriptor], Awaitable[bytes]],
    platform: Platform | None,
    on_manifest: Callable[[ImageManifest], object] | None = None,
) -> ResolvedImage:
    """Narrow ``top`` to one platform's manifest and fetch its config.

    An index (or Docker manifest list) is narrowed to the manifest for ``platform``
    (default: this host's). A single manifest is used as it is, unless a platform was asked
    for explicitly and the image's config says it is another one.

    ``on_manifest(manifest)`` is called with the verified image manifest before its config
    is fetched, so that a caller can start on the layers meanwhile (the image may still turn
    out to be for another platform: then this raises after the call).
    """
    parsed = parse_manifest(
        top.data, media_type=top.media_type or None, expected=top.digest, where=f"manifest {name}"
    )
    fetched = top
    index = index_digest = None
    if isinstance(parsed, ImageIndex):
        index, index_digest = parsed, top.digest
        desc = select_manifest(parsed.manifests, platform or Platform.host())
        fetched = await fetch_manifest(desc)
        if len(fetched.data) != desc.size:
            raise ManifestError(
                f"manifest {desc.digest} is {len(fetched.data)} bytes, the index says {desc.size}"
            )
        parsed = parse_manifest(
            fetched.data,
            media_type=desc.media_type,
            expected=desc.digest,
            where=f"manifest {desc.digest}",
        )
        if not isinstance(parsed, ImageManifest):
            raise ManifestError(f"index {index_digest} points to another index for {desc.platform}")
    manifest = parsed
    if on_manifest is not None:
        on_manifest(manifest)
    config_bytes = await fetch_config(manifest.config)
    config = parse_config(config_bytes, expected=manifest.config.digest)
    actual = config.platform
    if index is None and platform is not None and not platform.matches(actual):
        raise PlatformNotFound(f"{name} is a single-platform image for {actual}, not {platform}")
    return ResolvedImage(
        reference=name,
        digest=fetched.digest,
        manifest=manifest,
        manifest_bytes=fetched.data,
        config=config,
        config_bytes=config_bytes,
        platform=actual,
        index=index,
        index_digest=index_digest,
    )
