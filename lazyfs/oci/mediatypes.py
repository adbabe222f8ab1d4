"""Media types of OCI and Docker image manifests, indexes, configs and layers.

The values come from the OCI image specification (``application/vnd.oci.*``) and Docker's
image manifest v2 schema 2 (``application/vnd.docker.*``). Docker's schema 1 types are
listed only so they can be recognised and rejected.
"""

from __future__ import annotations

from lazyfs.errors import ManifestError

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER_FOREIGN_GZIP",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V1",
    "DOCKER_MANIFEST_V1_SIGNED",
    "INDEX_TYPES",
    "LAYER_TYPES",
    "MANIFEST_ACCEPT",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDIST_GZIP",
    "OCI_LAYER_NONDIST_TAR",
    "OCI_LAYER_NONDIST_ZSTD",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "SCHEMA1_TYPES",
    "is_layer",
    "layer_compression",
]

# OCI image specification.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# Non-distributable layers are deprecated by the OCI spec but still appear in the wild.
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
#: The empty descriptor's type: the two-byte blob ``{}``.
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# Docker image manifest v2, schema 2.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
#: Uncompressed Docker layer; not in Docker's schema 2 document, but produced by some tools.
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
#: zstd Docker layer; a containerd extension, not in Docker's schema 2 document.
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"

# Docker image manifest v2, schema 1 (unsupported; recognised to reject clearly).
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: Image manifest types lazyfs can mount.
MANIFEST_TYPES: frozenset[str] = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
#: Index types: lists of per-platform manifests.
INDEX_TYPES: frozenset[str] = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
#: Docker schema 1 manifest types.
SCHEMA1_TYPES: frozenset[str] = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED})

#: ``Accept`` header value for fetching a manifest or index by tag or digest.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))

_COMPRESSION: dict[str, str] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_TAR: "none",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
    DOCKER_LAYER_TAR: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_FOREIGN_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
}

#: Every layer media type lazyfs knows how to unpack.
LAYER_TYPES: frozenset[str] = frozenset(_COMPRESSION)


def layer_compression(media_type: str) -> str:
    """Return how a layer of *media_type* is compressed: ``"gzip"``, ``"zstd"`` or ``"none"``.

    Raises :class:`ManifestError` naming the type if it is not a known layer type.
    """
    try:
        return _COMPRESSION[media_type]
    except (KeyError, TypeError):
        raise ManifestError(f"unsupported layer media type {media_type!r}") from None


def is_layer(media_type: str) -> bool:
    """Return whether *media_type* is a layer type :func:`layer_compression` knows."""
    return media_type in LAYER_TYPES
