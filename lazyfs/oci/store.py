"""Where images are read from and written to: a registry repository or an OCI layout.

Commands that take an image (``inspect``, ``convert``, and later ``mount`` and ``run``)
accept a registry reference or ``oci:DIR[:TAG]``; :func:`open_store` gives either as an
:class:`ImageStore`, the same small interface: resolve, manifests, blobs (whole, streamed to
a file, or random access), and writing blobs and manifests.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from ..errors import NotFound
from .blobs import BlobReader, FileBlob, RegistryBlob
from .digest import Digest, Verifier
from .layout import OCILayout, parse_layout_reference
from .manifest import Descriptor, ImageManifest, parse_manifest
from .platform import Platform
from .reference import Reference
from .registry import MAX_CONFIG_SIZE, RegistryClient
from .resolve import FetchedManifest, ResolvedImage, resolve_image

#: What a blob is stored from: its bytes, a file, or an async function giving either.
BlobSource = bytes | Path | Callable[[], Awaitable[bytes | Path]]

__all__ = ["BlobSource", "ImageStore", "LayoutStore", "RegistryStore", "open_store"]


class ImageStore(Protocol):
    """One image location (a repository and tag/digest, or a layout and tag)."""

    name: str

    async def top(self) -> FetchedManifest:
        """The manifest or index the location names, verified."""
        ...

    async def manifest(self, desc: Descriptor) -> FetchedManifest: ...

    async def resolve(
        self,
        platform: Platform | None = None,
        *,
        on_manifest: Callable[[ImageManifest], object] | None = None,
    ) -> ResolvedImage:
        """The image for ``platform``, verified (``on_manifest``: see
        :func:`~lazyfs.oci.resolve.resolve_image`)."""
        ...

    async def blob(self, desc: Descriptor) -> bytes:
        """A small blob (a config) in memory, verified."""
        ...

    async def blob_to_file(self, desc: Descriptor, path: Path, progress=None) -> None:
        """A blob copied into ``path``, verified; ``progress(n)`` after each piece."""
        ...

    def blob_reader(self, desc: Descriptor) -> BlobReader: ...

    async def has_blob(self, digest: Digest) -> bool: ...

    async def put_blob(
        self, digest: Digest, source: BlobSource, *, mount_from: ImageStore | None = None
    ) -> str:
        """Store a blob; returns "exists", "mounted" or "uploaded".

        ``source``: the bytes, a file, or an async function giving either, called only when
        the blob must really be copied (not when it exists or can be mounted).
        """
        ...

    async def put_manifest(self, data: bytes, media_type: str, *, tagged: bool) -> Digest:
        """Store a manifest or index by digest, and under the location's tag if ``tagged``."""
        ...


class RegistryStore:
    """A repository in a registry, at a tag or digest."""

    def __init__(self, client: RegistryClient, ref: Reference) -> None:
        self.client, self.ref = client, ref
        self.name = str(ref)

    async def top(self) -> FetchedManifest:
        return await self.client.get_manifest(self.ref)

    async def manifest(self, desc: Descriptor) -> FetchedManifest:
        return await self.client.get_manifest(self.ref.with_digest(desc.digest))

    async def resolve(
        self,
        platform: Platform | None = None,
        *,
        on_manifest: Callable[[ImageManifest], object] | None = None,
    ) -> ResolvedImage:
        return await self.client.resolve(self.ref, platform, on_manifest=on_manifest)

    async def blob(self, desc: Descriptor) -> bytes:
        return await self.client.get_blob(
            self.ref, desc.digest, size=desc.size, max_size=MAX_CONFIG_SIZE
        )

    async def blob_to_file(self, desc: Descriptor, path: Path, progress=None) -> None:
        with open(path, "wb") as f:

            def sink(piece: bytes) -> None:
                f.write(piece)
                if progress:
                    progress(len(piece))

            await self.client.stream_blob(self.ref, desc.digest, sink, size=desc.size)

    def blob_reader(self, desc: Descriptor) -> BlobReader:
        return RegistryBlob(self.client, self.ref, desc.digest, desc.size)

    async def has_blob(self, digest: Digest) -> bool:
        return await self.client.blob_size(self.ref, digest) is not None

    async def put_blob(
        self, digest: Digest, source: BlobSource, *, mount_from: ImageStore | None = None
    ) -> str:
        mounts = []
        if (
            isinstance(mount_from, RegistryStore)
            and mount_from.ref.registry == self.ref.registry
            and mount_from.ref.repository != self.ref.repository
        ):
            mounts.append(mount_from.ref.repository)
        return await self.client.push_blob(self.ref, digest, source, mount_from=mounts)

    async def put_manifest(self, data: bytes, media_type: str, *, tagged: bool) -> Digest:
        target = (
            self.ref
            if tagged and self.ref.tag
            else Reference(self.ref.registry, self.ref.repository, None, Digest.of(data))
        )
        return await self.client.push_manifest(target, data, media_type)


class LayoutStore:
    """An image in an OCI layout directory, under a tag (or its only image)."""

    def __init__(self, layout: OCILayout, tag: str | None) -> None:
        self.layout, self.tag = layout, tag
        self.name = f"oci:{layout.root}" + (f":{tag}" if tag else "")

    async def top(self) -> FetchedManifest:
        desc = self.layout.resolve(self.tag)
        return FetchedManifest(self.layout.read_blob(desc.digest), desc.media_type, desc.digest)

    async def manifest(self, desc: Descriptor) -> FetchedManifest:
        data = self.layout.read_blob(desc.digest)
        parsed = parse_manifest(data, media_type=desc.media_type, expected=desc.digest)
        return FetchedManifest(data, parsed.media_type, desc.digest)

    async def resolve(
        self,
        platform: Platform | None = None,
        *,
        on_manifest: Callable[[ImageManifest], object] | None = None,
    ) -> ResolvedImage:
        top = await self.top()
        return await resolve_image(self.name, top, self.manifest, self.blob, platform, on_manifest)

    async def blob(self, desc: Descriptor) -> bytes:
        return self.layout.read_blob(desc.digest)

    async def blob_to_file(self, desc: Descriptor, path: Path, progress=None) -> None:
        source = self.layout.blob_path(desc.digest)
        if not source.is_file():
            raise NotFound(f"blob {desc.digest} is not in {self.layout.root}")
        verifier = Verifier(desc.digest, f"blob {source}", desc.size)
        with open(source, "rb") as src, open(path, "wb") as dst:
            while piece := src.read(1 << 20):
                verifier.update(piece)
                dst.write(piece)
                if progress:
                    progress(len(piece))
        verifier.finish()

    def blob_reader(self, desc: Descriptor) -> BlobReader:
        path = self.layout.blob_path(desc.digest)
        if not path.is_file():
            raise NotFound(f"blob {desc.digest} is not in {self.layout.root}")
        return FileBlob(path, desc.digest, desc.size)

    async def has_blob(self, digest: Digest) -> bool:
        return self.layout.has_blob(digest)

    async def put_blob(
        self, digest: Digest, source: BlobSource, *, mount_from: ImageStore | None = None
    ) -> str:
        if self.layout.has_blob(digest):
            return "exists"
        self.layout.write_blob(digest, await source() if callable(source) else source)
        return "uploaded"

    async def put_manifest(self, data: bytes, media_type: str, *, tagged: bool) -> Digest:
        digest = Digest.of(data)
        self.layout.write_blob(digest, data)
        if tagged:
            self.layout.tag(Descriptor(media_type, digest, len(data)), self.tag)
        return digest


def open_store(text: str, client: RegistryClient, *, create: bool = False) -> ImageStore:
    """The store ``text`` names: ``oci:DIR[:TAG]`` or a registry reference.

    With ``create``, a missing layout directory is made (for writing to it).
    """
    parsed = parse_layout_reference(text)
    if parsed is None:
        return RegistryStore(client, Reference.parse(text))
    root, tag = parsed
    layout = OCILayout(root)
    if create:
        os.makedirs(root, exist_ok=True)
        layout.init()
    return LayoutStore(layout, tag)
