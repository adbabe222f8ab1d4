"""Layer annotations that announce a lazily readable format, and what they tell.

At this stage the format of a layer is judged from its descriptor alone. The readers of the
formats (a later part of :mod:`lazyfs.formats`) confirm it from the layer's own index.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..oci import mediatypes

__all__ = [
    "ESTARGZ",
    "ESTARGZ_TOC_DIGEST",
    "ESTARGZ_UNCOMPRESSED_SIZE",
    "LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM",
    "LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION",
    "NONE",
    "ZSTD_CHUNKED",
    "ZSTD_CHUNKED_MANIFEST_CHECKSUM",
    "ZSTD_CHUNKED_MANIFEST_POSITION",
    "ZSTD_CHUNKED_TARSPLIT_POSITION",
    "lazy_format_from_annotations",
]

ESTARGZ = "estargz"
ZSTD_CHUNKED = "zstd:chunked"
NONE = "none"

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ESTARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
ZSTD_CHUNKED_TARSPLIT_POSITION = "io.github.containers.zstd-chunked.tarsplit-position"
LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION = "io.containers.zstd-chunked.manifest-position"


def lazy_format_from_annotations(media_type: str, annotations: Mapping[str, str]) -> str:
    """``"estargz"``, ``"zstd:chunked"`` or ``"none"`` for a layer descriptor.

    A zstd layer with zstd:chunked annotations is zstd:chunked even if it also carries the
    eStargz TOC digest (stargz-snapshotter's zstd variant writes both); a gzip layer with a
    TOC digest is eStargz.
    """
    try:
        compression = mediatypes.layer_compression(media_type)
    except Exception:
        return NONE
    if compression == "zstd" and (
        ZSTD_CHUNKED_MANIFEST_CHECKSUM in annotations
        or LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM in annotations
    ):
        return ZSTD_CHUNKED
    if ESTARGZ_TOC_DIGEST in annotations and compression in ("gzip", "zstd"):
        return ESTARGZ if compression == "gzip" else ZSTD_CHUNKED
    return NONE
