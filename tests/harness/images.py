"""Small OCI images built in memory, for tests.

A test describes each layer as a list of :class:`Entry` (every tar entry type, xattrs,
hardlinks, whiteouts are just names), :func:`build_image` turns the layers into compressed
blobs, a config with the right ``diff_ids`` and a manifest, and :func:`push_image` uploads
it all with lazyfs's own registry client.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import zstandard

from lazyfs.oci import mediatypes
from lazyfs.oci.digest import Digest
from lazyfs.oci.platform import Platform
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient

_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


@dataclass
class Entry:
    """One tar entry. ``kind`` is one of file, dir, symlink, hardlink, char, block, fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 1_700_000_000
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


def tar_layer(entries: Iterable[Entry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            default_mode = 0o755 if e.kind == "dir" else 0o777 if e.kind == "symlink" else 0o644
            info.mode = default_mode if e.mode is None else e.mode
            info.uid, info.gid, info.uname, info.gname = e.uid, e.gid, e.uname, e.gname
            info.mtime = e.mtime
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                    for k, v in e.xattrs.items()
                }
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


@dataclass(frozen=True)
class Blob:
    """Content with its media type and digest."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> Digest:
        return Digest.of(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, annotations: dict[str, str] | None = None) -> dict:
        d = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if annotations:
            d["annotations"] = annotations
        return d


@dataclass(frozen=True)
class BuiltImage:
    """An image ready to push: its layer blobs, config and manifest."""

    layers: tuple[Blob, ...]
    config: Blob
    manifest: Blob
    diff_ids: tuple[Digest, ...]

    @property
    def digest(self) -> Digest:
        return self.manifest.digest


def compress(tar: bytes, compression: str) -> Blob:
    """A layer blob of ``tar`` compressed with gzip, zstd or none."""
    if compression == "gzip":
        return Blob(mediatypes.OCI_LAYER_GZIP, gzip.compress(tar, mtime=0))
    if compression == "zstd":
        return Blob(mediatypes.OCI_LAYER_ZSTD, zstandard.ZstdCompressor(level=3).compress(tar))
    if compression == "none":
        return Blob(mediatypes.OCI_LAYER_TAR, tar)
    raise ValueError(compression)


def build_image(
    layers: Sequence[Sequence[Entry] | bytes],
    *,
    compression: str = "gzip",
    platform: Platform | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    env: list[str] | None = None,
    user: str = "",
    working_dir: str = "",
    labels: dict[str, str] | None = None,
    docker: bool = False,
    layer_annotations: Sequence[dict[str, str] | None] = (),
) -> BuiltImage:
    """An image whose layers hold the given entries (or raw tar bytes), bottom first.

    ``docker=True`` makes a Docker schema 2 manifest instead of an OCI one;
    ``layer_annotations`` go on the layer descriptors, in order.
    """
    platform = platform or Platform("linux", "amd64")
    tars = [layer if isinstance(layer, bytes) else tar_layer(layer) for layer in layers]
    blobs = [compress(t, compression) for t in tars]
    if docker:
        blobs = [Blob(mediatypes.DOCKER_LAYER_GZIP, b.data) for b in blobs]
    diff_ids = tuple(Digest.of(t) for t in tars)
    config = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": env
            if env is not None
            else ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint,
            "Cmd": cmd if cmd is not None else ["/bin/sh"],
            "User": user,
            "WorkingDir": working_dir,
            "Labels": labels or {},
        },
        "rootfs": {"type": "layers", "diff_ids": [str(d) for d in diff_ids]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"}
            for i in range(len(tars))
        ],
    }
    if platform.variant:
        config["variant"] = platform.variant
    config_blob = Blob(
        mediatypes.DOCKER_CONFIG if docker else mediatypes.OCI_CONFIG,
        json.dumps(config, sort_keys=True).encode(),
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": mediatypes.DOCKER_MANIFEST if docker else mediatypes.OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [
            b.descriptor(layer_annotations[i] if i < len(layer_annotations) else None)
            for i, b in enumerate(blobs)
        ],
    }
    manifest_blob = Blob(manifest["mediaType"], json.dumps(manifest).encode())
    return BuiltImage(tuple(blobs), config_blob, manifest_blob, diff_ids)


def build_index(
    images: Sequence[tuple[BuiltImage, Platform]], *, extra: Sequence[dict] = ()
) -> Blob:
    """An OCI index of per-platform images; ``extra`` descriptors are appended as given."""
    manifests = []
    for image, plat in images:
        d = image.manifest.descriptor()
        d["platform"] = plat.to_json()
        manifests.append(d)
    manifests.extend(extra)
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
    return Blob(mediatypes.OCI_INDEX, json.dumps(index).encode())


async def push_image(
    client: RegistryClient, ref: Reference, image: BuiltImage, *, tag: bool = True
) -> Digest:
    """Upload the blobs and the manifest of ``image`` to ``ref`` (by tag, or by digest)."""
    for blob in (*image.layers, image.config):
        await client.push_blob(ref, blob.digest, blob.data)
    target = ref if tag else Reference(ref.registry, ref.repository, None, image.digest)
    return await client.push_manifest(target, image.manifest.data, image.manifest.media_type)


async def push_index(
    client: RegistryClient, ref: Reference, images: Sequence[tuple[BuiltImage, Platform]]
) -> Digest:
    """Push every image by digest, then an index of them under ``ref``'s tag."""
    for image, _ in images:
        await push_image(client, ref, image, tag=False)
    index = build_index(images)
    return await client.push_manifest(ref, index.data, index.media_type)


def sample_layers() -> list[list[Entry]]:
    """Two layers with a bit of everything, for tests that only need *an* image."""
    return [
        [
            Entry("bin", "dir"),
            Entry("bin/sh", data=b"#!fake shell\n", mode=0o755),
            Entry("etc", "dir"),
            Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
            Entry("etc/hostname", data=b"sample\n"),
            Entry("usr/lib/big.bin", data=bytes(range(256)) * 4096),
        ],
        [
            Entry("etc/motd", data=b"hello from layer 1\n"),
            Entry("etc/.wh.hostname", data=b""),
            Entry("bin/link", "symlink", linkname="sh"),
        ],
    ]
