"""Our readers against layers written by a peer: stargz-snapshotter's ``ctr-remote``.

An image with every kind of tar entry is pushed to the test registry, pulled into a private
containerd, converted by ``ctr-remote image convert`` (eStargz; zstd:chunked), pushed back,
and each converted layer is read through our index readers with real range requests. Every
file read through the index must equal both a plain unpack of the converted blob (minus the
TOC and the landmark entries the readers hide) and the original layer.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
import uuid
from dataclasses import dataclass

import pytest
import trio
import zstandard

from lazyfs.errors import DigestMismatch, LayerIndexError, LazyfsError
from lazyfs.formats.annotations import (
    ESTARGZ_TOC_DIGEST,
    ESTARGZ_UNCOMPRESSED_SIZE,
    LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM,
)
from lazyfs.formats.estargz import parse_estargz_footer, read_estargz_index
from lazyfs.formats.model import CODEC_GZIP, EntryType, LayerIndex
from lazyfs.formats.toc import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME
from lazyfs.formats.zstd_chunked import read_zstd_chunked_index
from lazyfs.oci import mediatypes
from lazyfs.oci.blobs import RegistryBlob
from lazyfs.oci.digest import Digest
from lazyfs.oci.manifest import Descriptor
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from tests.harness.containerd import ContainerdServer
from tests.harness.images import Entry, build_image, push_image, tar_layer
from tests.harness.indexcheck import assert_index_matches_tar
from tests.harness.registry import RegistryServer

#: Entries the readers interpret and hide.
HIDDEN = {TOC_TAR_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}
BIG_SIZE = 9 * 1024 * 1024 + 123
MiB = 1024 * 1024


# ---------------------------------------------------------------- fixtures


def source_layers() -> list[list[Entry]]:
    """Three layers: every entry type, whiteouts, and an empty layer."""
    big = random.Random(42).randbytes(BIG_SIZE)
    long_dir = "deep/" + "d" * 120
    return [
        [
            Entry("bin", "dir"),
            Entry(
                "bin/sh",
                data=b"#!fake shell\n",
                mode=0o755,
                uid=1000,
                gid=1001,
                uname="alice",
                gname="staff",
            ),
            Entry("bin/su", data=b"setuid\n", mode=0o4755),
            Entry("etc", "dir", mode=0o750),
            Entry("etc/hostname", data=b"peer\n"),
            Entry("etc/empty", data=b""),
            Entry("usr/lib/big.bin", data=big),  # parent directories left implicit
            Entry("bin/sh-link", "symlink", linkname="sh"),
            Entry("long-link", "symlink", linkname="/" + long_dir + "/file"),
            Entry("bin/sh-hard", "hardlink", linkname="bin/sh"),
            Entry("dev", "dir"),
            Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
            Entry("dev/sda", "block", devmajor=8, devminor=0, mode=0o660),
            Entry("run/fifo", "fifo", mode=0o600),
            Entry(long_dir + "/file", data=b"a long path\n", mtime=1_600_000_000),
            Entry("xattrs", data=b"x\n", xattrs={"user.foo": b"bar", "user.utf8": "é".encode()}),
            Entry("opt", "dir"),
            Entry("opt/old", data=b"old\n"),
        ],
        [
            Entry("etc/.wh.hostname"),
            Entry("opt/.wh..wh..opq"),
            Entry("opt/new", data=b"new\n", uid=7, gid=8),
            Entry(".wh.long-link"),
        ],
        [],
    ]


@dataclass(frozen=True)
class SourceImage:
    """The pushed and pulled source image, and its original uncompressed layers."""

    registry: RegistryServer
    repository: str
    ref: str
    tars: tuple[bytes, ...]


@pytest.fixture(scope="module")
def source_image(registry: RegistryServer, containerd: ContainerdServer) -> SourceImage:
    layers = source_layers()
    image = build_image(layers, compression="gzip")
    repository = f"peer/{uuid.uuid4().hex[:12]}"
    ref = f"{registry.host}/{repository}:source"

    async def push() -> None:
        async with RegistryClient() as client:
            await push_image(client, Reference.parse(ref), image)

    trio.run(push)
    containerd.ctr_remote("image", "pull", "--plain-http", ref)
    return SourceImage(registry, repository, ref, tuple(tar_layer(entries) for entries in layers))


def convert_and_push(
    containerd: ContainerdServer, source: SourceImage, tag: str, *opts: str
) -> str:
    """``ctr-remote image convert --oci OPTS`` the source image and push the result."""
    target = f"{source.registry.host}/{source.repository}:{tag}"
    containerd.ctr_remote("image", "convert", "--oci", *opts, source.ref, target)
    containerd.ctr_remote("image", "push", "--plain-http", target)
    return target


# ---------------------------------------------------------------- helpers


def without_hidden(tar: bytes) -> bytes:
    """``tar`` rewritten without the entries the readers hide (TOC, landmarks)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src:
            if info.name in HIDDEN:
                continue
            dst.addfile(info, src.extractfile(info) if info.isreg() else None)
    return out.getvalue()


def member_names(tar: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return tf.getnames()


def toc_json_of(tar: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        return tf.extractfile(TOC_TAR_NAME).read()  # type: ignore[union-attr]


def big_file(index: LayerIndex):
    return next(e for e in index.entries if e.path == "usr/lib/big.bin")


@dataclass
class LayerRead:
    """One converted layer, its index as we read it, and what reading it cost."""

    desc: Descriptor
    blob: RegistryBlob
    index: LayerIndex
    requests: int
    data: bytes


async def read_layers(client: RegistryClient, target: str, reader) -> list[LayerRead]:
    """Each layer of ``target`` indexed by ``reader``, counting its requests, plus its bytes."""
    ref = Reference.parse(target)
    resolved = await client.resolve(ref)
    out = []
    for i, desc in enumerate(resolved.manifest.layers):
        blob = RegistryBlob(client, ref, desc.digest, desc.size)
        before = client.stats.requests
        index = await reader(blob, annotations=desc.annotations, layer=f"#{i} {desc.digest}")
        requests = client.stats.requests - before
        data = await client.get_blob(ref, desc.digest)
        out.append(LayerRead(desc, blob, index, requests, data))
    return out


async def check_layers(layers: list[LayerRead], source: SourceImage, decompress) -> None:
    """Every layer's index matches the converted tar and the original one."""
    assert len(layers) == len(source.tars)
    for layer, original in zip(layers, source.tars, strict=True):
        converted = decompress(layer.data)
        assert layer.desc.annotations[ESTARGZ_UNCOMPRESSED_SIZE] == str(len(converted))
        plain = without_hidden(converted)
        await assert_index_matches_tar(layer.blob, layer.index, plain)
        await assert_index_matches_tar(layer.blob, layer.index, original)
        assert not {e.path for e in layer.index.entries} & HIDDEN
        assert layer.index.no_prefetch  # ctr-remote marks "prefetch nothing" without a record
        assert layer.index.prefetch_offset is None


# ---------------------------------------------------------------- eStargz


def test_ctr_remote_estargz(containerd: ContainerdServer, source_image: SourceImage) -> None:
    target = convert_and_push(containerd, source_image, "estargz", "--estargz")

    async def main() -> None:
        async with RegistryClient() as client:
            layers = await read_layers(client, target, read_estargz_index)
            await check_layers(layers, source_image, gzip.decompress)
            for layer in layers:
                desc, index = layer.desc, layer.index
                assert desc.media_type == mediatypes.OCI_LAYER_GZIP
                assert parse_estargz_footer(layer.data[-51:], blob_size=desc.size) is not None
                assert (index.format, index.dialect) == ("estargz", "estargz")
                assert layer.requests <= 2, layer.requests  # the tail, maybe the TOC
                # The annotation is the sha256 of the TOC JSON the blob holds.
                toc_json = toc_json_of(gzip.decompress(layer.data))
                assert desc.annotations[ESTARGZ_TOC_DIGEST] == Digest.of(toc_json)
                assert index.index_size == len(toc_json)
                names = member_names(gzip.decompress(layer.data))
                assert names[0] == NO_PREFETCH_LANDMARK and names[-1] == TOC_TAR_NAME
            big = big_file(layers[0].index)
            # The default chunk size is 4 MiB, each chunk in its own gzip member.
            assert [c.size for c in big.chunks] == [4 * MiB, 4 * MiB, BIG_SIZE - 8 * MiB]
            assert all(c.codec == CODEC_GZIP and c.inner_offset == 0 for c in big.chunks)
            # A tampered annotation is caught.
            layer = layers[0]
            tampered = dict(layer.desc.annotations)
            tampered[ESTARGZ_TOC_DIGEST] = str(Digest.of(b"not the TOC"))
            with pytest.raises(DigestMismatch, match="#0"):
                await read_estargz_index(layer.blob, annotations=tampered, layer="#0")
            tampered[ESTARGZ_TOC_DIGEST] = "sha256:nothex"
            with pytest.raises(LayerIndexError, match="#0"):
                await read_estargz_index(layer.blob, annotations=tampered, layer="#0")

    trio.run(main)


def test_ctr_remote_estargz_small_chunks_from_given_tail(
    containerd: ContainerdServer, source_image: SourceImage
) -> None:
    target = convert_and_push(
        containerd, source_image, "estargz-1m", "--estargz", "--estargz-chunk-size", str(MiB)
    )

    async def main() -> None:
        async with RegistryClient() as client:
            ref = Reference.parse(target)
            desc = (await client.resolve(ref)).manifest.layers[0]
            blob = RegistryBlob(client, ref, desc.digest, desc.size)
            tail = await blob.read(desc.size - 51, 51)  # too short to hold the TOC
            before = client.stats.requests
            index = await read_estargz_index(
                blob, annotations=desc.annotations, layer="#0", tail=tail
            )
            assert client.stats.requests - before == 1  # the TOC alone
            big = big_file(index)
            assert [c.size for c in big.chunks] == [MiB] * 9 + [BIG_SIZE - 9 * MiB]
            await assert_index_matches_tar(blob, index, source_image.tars[0])
            types = {e.type for e in index.entries}
            assert types == set(EntryType), types

    trio.run(main)


# ---------------------------------------------------------------- zstd:chunked


def _zstd_decompress(data: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with reader:
        return reader.read()


def test_ctr_remote_zstdchunked(containerd: ContainerdServer, source_image: SourceImage) -> None:
    target = convert_and_push(
        containerd,
        source_image,
        "zstdchunked",
        "--zstdchunked",
        "--estargz-chunk-size",
        str(MiB),
    )

    async def main() -> None:
        async with RegistryClient() as client:
            layers = await read_layers(client, target, read_zstd_chunked_index)
            await check_layers(layers, source_image, _zstd_decompress)
            for layer in layers:
                assert layer.desc.media_type == mediatypes.OCI_LAYER_ZSTD
                assert layer.index.format == "zstd:chunked"
                assert layer.requests <= 2, layer.requests
                # The blob is the tar without the TOC; the TOC lives in a skippable frame.
                assert TOC_TAR_NAME not in member_names(_zstd_decompress(layer.data))
            big = big_file(layers[0].index)
            assert [c.size for c in big.chunks] == [MiB] * 9 + [BIG_SIZE - 9 * MiB]
            layer = layers[0]
            tampered = dict(layer.desc.annotations)
            tampered[LEGACY_ZSTD_CHUNKED_MANIFEST_CHECKSUM] = str(Digest.of(b"not the TOC"))
            tampered[ESTARGZ_TOC_DIGEST] = str(Digest.of(b"not the TOC"))
            with pytest.raises(LazyfsError):
                await read_zstd_chunked_index(layer.blob, annotations=tampered, layer="#0")

    trio.run(main)
