"""Layers with no index: streamed once into the cache, indexed there, served from it."""

from __future__ import annotations

import gzip
import uuid

import pytest
import trio

from lazyfs.errors import LayerIndexError
from lazyfs.formats.detect import find_layer_index, read_layer_index
from lazyfs.formats.plain import build_plain_index, cached_tar_path
from lazyfs.oci import Reference, RegistryClient, RetryPolicy, mediatypes
from lazyfs.oci.blobs import BytesBlob, FileBlob, RegistryBlob
from lazyfs.oci.digest import Digest
from tests.harness.faultproxy import Truncate
from tests.harness.images import build_image, push_image, sample_layers, tar_layer
from tests.harness.indexcheck import assert_index_matches_tar


def pushed(registry, compression):
    image = build_image(sample_layers(), compression=compression)
    ref = Reference.parse(f"{registry.host}/plain/{uuid.uuid4().hex[:10]}:1")

    async def main():
        async with RegistryClient() as c:
            await push_image(c, ref, image)

    trio.run(main)
    return image, ref


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_plain_layers_are_indexed_from_a_local_copy(registry, tmp_path, compression):
    image, ref = pushed(registry, compression)
    tars = [tar_layer(layer) for layer in sample_layers()]

    async def main():
        async with RegistryClient() as c:
            for blob, tar, diff_id in zip(image.layers, tars, image.diff_ids, strict=True):
                reader = RegistryBlob(c, ref, blob.digest, blob.size)
                assert (
                    await find_layer_index(reader, media_type=blob.media_type, annotations={})
                    is None
                )
                index = await read_layer_index(
                    reader,
                    media_type=blob.media_type,
                    annotations={},
                    cache_dir=tmp_path,
                    diff_id=diff_id,
                )
                assert index.format == "tar"
                assert index.local_path == str(cached_tar_path(tmp_path, blob.digest))
                local = FileBlob(index.local_path, diff_id)
                await assert_index_matches_tar(local, index, tar)
                # Indexed again: from the cache, no request.
                before = c.stats.requests
                await read_layer_index(
                    reader,
                    media_type=blob.media_type,
                    annotations={},
                    cache_dir=tmp_path,
                    diff_id=diff_id,
                )
                tail_reads = 0 if compression == "none" else 1  # the footer probe
                assert c.stats.requests - before == tail_reads

    trio.run(main)


def test_diff_id_mismatch_leaves_nothing_in_the_cache(registry, tmp_path):
    image, ref = pushed(registry, "gzip")
    blob = image.layers[0]

    async def main():
        async with RegistryClient() as c:
            reader = RegistryBlob(c, ref, blob.digest, blob.size)
            with pytest.raises(LayerIndexError, match="diff ID"):
                await read_layer_index(
                    reader,
                    media_type=blob.media_type,
                    annotations={},
                    cache_dir=tmp_path,
                    diff_id=Digest.of(b"something else"),
                )
        assert not cached_tar_path(tmp_path, blob.digest).exists()
        assert not any(p.is_file() for p in tmp_path.rglob("*"))

    trio.run(main)


def test_truncated_download_resumes(registry, fault_proxy, tmp_path):
    image, ref = pushed(registry, "gzip")
    blob = image.layers[0]
    via = Reference(fault_proxy.host, ref.repository, ref.tag, None)
    fault_proxy.add_fault(
        None, Truncate(after=1000), method="GET", path_contains=str(blob.digest), times=1
    )

    async def main():
        async with RegistryClient(retry=RetryPolicy(attempts=3, base_delay=0.01)) as c:
            reader = RegistryBlob(c, via, blob.digest, blob.size)
            index = await build_plain_index(
                reader,
                media_type=blob.media_type,
                layer="l",
                cache_dir=tmp_path,
                diff_id=image.diff_ids[0],
            )
            local = FileBlob(index.local_path, image.diff_ids[0])
            await assert_index_matches_tar(local, index, tar_layer(sample_layers()[0]))
        # The first GET was cut short, the second resumed where it stopped.
        gets = [r for r in fault_proxy.requests if str(blob.digest) in r.path and r.method == "GET"]
        assert (
            gets[0].fault is not None and gets[1].range is not None and gets[1].range != "bytes=0-"
        )

    trio.run(main)


def test_concatenated_gzip_members(tmp_path):
    tar = tar_layer(sample_layers()[0])
    data = gzip.compress(tar[:3000], mtime=0) + gzip.compress(tar[3000:], mtime=0)

    async def main():
        index = await build_plain_index(
            BytesBlob(data),
            media_type=mediatypes.OCI_LAYER_GZIP,
            layer="l",
            cache_dir=tmp_path,
            diff_id=Digest.of(tar),
        )
        assert len(index.entries) == len(sample_layers()[0])

    trio.run(main)
