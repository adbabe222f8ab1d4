"""Which format a layer is in, judged from the layer itself, and its index.

:func:`read_layer_index` is what the rest of lazyfs calls: annotations are a hint (they
save a request for zstd:chunked layers); the footer at the blob's tail decides; a layer with
neither is indexed locally by streaming it once into the cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from ..errors import LayerIndexError
from ..oci import mediatypes
from ..oci.blobs import BlobReader
from ..oci.digest import Digest
from .annotations import LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION, ZSTD_CHUNKED_MANIFEST_POSITION
from .estargz import parse_estargz_footer, read_estargz_index
from .model import LayerIndex
from .plain import build_plain_index
from .toc import TAIL_SIZE
from .zstd_chunked import parse_zstd_chunked_footer, read_zstd_chunked_index

__all__ = ["find_layer_index", "read_layer_index"]


async def find_layer_index(
    blob: BlobReader, *, media_type: str, annotations: Mapping[str, str], layer: str | None = None
) -> LayerIndex | None:
    """The index the layer carries (eStargz or zstd:chunked), or None if it has none.

    Costs one or two range reads: the tail, then the TOC when the tail does not hold it.
    """
    name = layer or str(blob.digest)
    compression = mediatypes.layer_compression(media_type)
    if compression == "zstd" and (
        ZSTD_CHUNKED_MANIFEST_POSITION in annotations
        or LEGACY_ZSTD_CHUNKED_MANIFEST_POSITION in annotations
    ):
        return await read_zstd_chunked_index(blob, annotations=annotations, layer=name)
    if compression == "none" or blob.size == 0:
        return None
    length = min(blob.size, TAIL_SIZE)
    tail = await blob.read(blob.size - length, length)
    if compression == "zstd" and parse_zstd_chunked_footer(tail, blob.size) is not None:
        return await read_zstd_chunked_index(blob, annotations=annotations, layer=name, tail=tail)
    if compression == "gzip" and parse_estargz_footer(tail, blob_size=blob.size) is not None:
        return await read_estargz_index(blob, annotations=annotations, layer=name, tail=tail)
    return None


async def read_layer_index(
    blob: BlobReader,
    *,
    media_type: str,
    annotations: Mapping[str, str],
    layer: str | None = None,
    cache_dir: Path | None = None,
    diff_id: Digest | Callable[[], Awaitable[Digest | None]] | None = None,
) -> LayerIndex:
    """The index of one layer blob, in whatever format it carries one.

    A layer without an index is streamed once into ``cache_dir`` and indexed there
    (``diff_id`` checks that copy); without ``cache_dir`` that is an error. ``diff_id`` may
    be an async function giving it, awaited only for such a layer (the image config that has
    it may still be on its way while indexes are read).
    """
    name = layer or str(blob.digest)
    index = await find_layer_index(blob, media_type=media_type, annotations=annotations, layer=name)
    if index is not None:
        return index
    if cache_dir is None:
        raise LayerIndexError(
            f"layer {name} has no index and no cache directory was given to index it"
        )
    if callable(diff_id):
        diff_id = await diff_id()
    return await build_plain_index(
        blob, media_type=media_type, layer=name, cache_dir=cache_dir, diff_id=diff_id
    )
