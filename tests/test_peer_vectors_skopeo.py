"""Peer vectors: zstd:chunked layers written by the real skopeo (Debian's 1.9.3).

An image with every kind of tar entry is written as an OCI layout, converted by
``skopeo copy --dest-compress-format zstd:chunked`` into a second layout (pushing straight to
a registry would silently keep gzip), and that layout pushed to the ``registry`` fixture by
skopeo. Our reader then reads each layer's index over HTTP ranges and every file through it,
compared with a plain unpack of the same blob and with the original image.

What skopeo 1.9.3 writes, pinned down here (the legacy dialect):

* annotations ``io.containers.zstd-chunked.manifest-checksum`` (sha256 of the compressed TOC)
  and ``...manifest-position`` = ``offset:compressedLen:uncompressedLen:1``, nothing else;
* the blob ends with ``50 2a 4d 18 | 28 00 00 00`` and the 40-byte footer ``tocOffset,
  compressedLen, uncompressedLen, 1`` (u64 LE) + ``GnUlInUx``, just after the TOC's skippable
  frame; no tar-split;
* TOC entries in containers/storage keys, always with ``accesstime``/``changetime`` (Go's zero
  time), no ``userName``/``groupName`` (owner names are lost); directory names end in ``/``;
  whiteouts are plain ``reg`` entries; hardlinks are ``hardlink`` entries with ``linkName``;
* big files are cut by a rolling checksum into ``chunk`` entries that have an ``offset`` but no
  ``endOffset`` (the file entry's ``endOffset`` is the end of the whole file); a run of zeros
  becomes a ``chunkType: zeros`` chunk whose zeros are still stored as a zstd frame at its
  ``offset``;
* the uncompressed tar is the original re-serialised: byte-identical up to the end-of-archive
  blocks, but the record padding after them is dropped, so its diffID differs from the
  original's while skopeo keeps the config (and its ``diff_ids``) unchanged.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import shutil
import struct
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import zstandard

from lazyfs.formats.annotations import ZSTD_CHUNKED, lazy_format_from_annotations
from lazyfs.formats.model import CODEC_ZEROS, EntryType
from lazyfs.formats.zstd_chunked import (
    footer_from_annotations,
    parse_zstd_chunked_footer,
    read_zstd_chunked,
)
from lazyfs.oci import mediatypes
from lazyfs.oci.blobs import RegistryBlob
from lazyfs.oci.digest import Digest
from lazyfs.oci.manifest import Descriptor
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.retry import RetryPolicy
from tests.harness.images import BuiltImage, Entry, build_image
from tests.harness.indexcheck import assert_index_matches_tar, tar_members

if shutil.which("skopeo") is None:  # scripts/test installs it: missing means a broken set-up
    pytest.fail("skopeo is missing (Debian package skopeo); run scripts/test", pytrace=False)

LEGACY_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_POSITION = "io.containers.zstd-chunked.manifest-position"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def _payloads() -> dict[str, bytes]:
    rnd = random.Random(1234)
    noise = rnd.randbytes(3 << 20)
    words = b" ".join(rnd.choice([b"alpha", b"beta", b"gamma", b"delta\n"]) for _ in range(300_000))
    return {
        # Incompressible data, a 2 MiB run of zeros, then the start of the data again.
        "big": noise + bytes(2 << 20) + noise[:100_000],
        "text": words,
    }


def layers() -> list[list[Entry]]:
    """Two layers with every entry type skopeo must carry through."""
    data = _payloads()
    long_dir = "deep/" + "d" * 120
    return [
        [
            Entry("bin", "dir", mode=0o755),
            Entry("bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o4755, uid=0, gid=0),
            Entry("etc", "dir", mode=0o750, uid=3, gid=4, uname="adm", gname="adm"),
            Entry("etc/empty"),
            Entry("etc/conf", data=b"key=value\n", uid=100_000, gid=100_001),
            Entry("etc/caps", data=b"x", xattrs={"security.capability": b"\x01\x00\x00\x02"}),
            Entry("etc/xattrs", data=b"y", xattrs={"user.one": b"1", "user.two": b"deux"}),
            Entry("etc/conf.hl", "hardlink", linkname="etc/conf"),
            Entry("etc/link", "symlink", linkname="conf"),
            Entry("dev/null", "char", devmajor=1, devminor=3, mode=0o666),
            Entry("dev/sda1", "block", devmajor=8, devminor=1, mode=0o660),
            Entry("run/pipe", "fifo", mode=0o600),
            Entry("data/big.bin", data=data["big"]),
            Entry("data/text.txt", data=data["text"]),
            Entry("data/big.hl", "hardlink", linkname="data/big.bin"),
            Entry(f"{long_dir}/" + "f" * 150, data=b"long name\n"),
            Entry("deep/long-link", "symlink", linkname="../" + long_dir + "/" + "f" * 150),
            Entry("unicode/gr\u00fc\u00dfe.txt", data="gr\u00fc\u00dfe\n".encode()),
        ],
        [
            Entry("etc/.wh.conf"),
            Entry("data/.wh..wh..opq"),
            Entry("etc/motd", data=b"layer two\n", mtime=1_600_000_000),
            Entry("etc/motd.hl", "hardlink", linkname="etc/motd"),
        ],
    ]


@dataclass
class Converted:
    """The original image, and where skopeo's zstd:chunked version of it lives."""

    original: BuiltImage
    original_tars: list[bytes]
    layout: Path
    ref: Reference


def write_layout(image: BuiltImage, path: Path, tag: str) -> None:
    """An OCI image layout holding ``image`` under ``tag``."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in (*image.layers, image.config, image.manifest):
        (blobs / blob.digest.hex).write_bytes(blob.data)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    desc = image.manifest.descriptor({"org.opencontainers.image.ref.name": tag})
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))


def skopeo(*args: str) -> None:
    result = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr}"


@pytest.fixture(scope="module")
def converted(registry, tmp_path_factory) -> Converted:
    """skopeo's zstd:chunked conversion of :func:`layers`, pushed to ``registry``."""
    work = tmp_path_factory.mktemp("skopeo")
    image = build_image(layers(), compression="gzip")
    write_layout(image, work / "src", "v1")
    skopeo(
        "copy", "--dest-compress-format", "zstd:chunked", f"oci:{work}/src:v1", f"oci:{work}/dst:v1"
    )
    ref = Reference.parse(f"{registry.host}/peer/skopeo-{uuid.uuid4().hex[:8]}:v1")
    skopeo("copy", "--dest-tls-verify=false", f"oci:{work}/dst:v1", f"docker://{ref}")
    tars = [gzip.decompress(layer.data) for layer in image.layers]
    return Converted(image, tars, work / "dst", ref)


def _unzstd(data: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as r:
        return r.read()


async def _resolve(ref: Reference):
    async with RegistryClient(retry=FAST) as client:
        return await client.resolve(ref)


def _layers(converted: Converted) -> tuple[Descriptor, ...]:
    return trio.run(_resolve, converted.ref).manifest.layers


# ---------------------------------------------------------------- what skopeo wrote


def test_pushed_layers_are_zstd_chunked_legacy(converted):
    resolved = trio.run(_resolve, converted.ref)
    layout_manifest = json.loads(
        (converted.layout / "blobs" / "sha256" / resolved.digest.hex).read_bytes()
    )
    assert [d["digest"] for d in layout_manifest["layers"]] == [
        d.digest for d in resolved.manifest.layers
    ]
    for desc in resolved.manifest.layers:
        assert desc.media_type == mediatypes.OCI_LAYER_ZSTD
        assert set(desc.annotations) == {LEGACY_CHECKSUM, LEGACY_POSITION}
        assert lazy_format_from_annotations(desc.media_type, desc.annotations) == ZSTD_CHUNKED
    # skopeo keeps the config as it was: the diff_ids are the original tars' ones.
    assert resolved.config_bytes == converted.original.config.data


def test_blob_ends_with_the_legacy_footer_in_a_skippable_frame(converted):
    async def main():
        async with RegistryClient(retry=FAST) as client:
            for desc in (await client.resolve(converted.ref)).manifest.layers:
                blob = RegistryBlob(client, converted.ref, desc.digest, desc.size)
                tail = await blob.read(desc.size - 48, 48)
                magic, length = struct.unpack("<II", tail[:8])
                assert (magic, length) == (0x184D2A50, 40)
                off, clen, ulen, kind, end = struct.unpack("<4Q8s", tail[8:])
                assert (kind, end) == (1, b"GnUlInUx")
                position = desc.annotations[LEGACY_POSITION]
                assert position == f"{off}:{clen}:{ulen}:1"
                footer = parse_zstd_chunked_footer(tail, desc.size)
                assert footer == footer_from_annotations(desc.annotations, desc.size)
                assert footer.dialect == "legacy" and not footer.has_tar_split
                # The TOC frame sits right before the footer frame.
                assert off + clen == desc.size - 48
                header = await blob.read(off - 8, 8)
                assert struct.unpack("<II", header) == (0x184D2A50, clen)

    trio.run(main)


def test_toc_key_facts(converted):
    async def main():
        async with RegistryClient(retry=FAST) as client:
            tocs = []
            for desc in (await client.resolve(converted.ref)).manifest.layers:
                off, clen, ulen, _ = map(int, desc.annotations[LEGACY_POSITION].split(":"))
                data = await client.fetch_range(converted.ref, desc.digest, off, clen)
                assert Digest.of(data) == desc.annotations[LEGACY_CHECKSUM]
                blob = await client.get_blob(converted.ref, desc.digest)
                tocs.append((json.loads(zstandard.decompress(data, ulen)), blob))
            return tocs

    (toc0, blob0), (toc1, _) = trio.run(main)
    assert set(toc0) == {"version", "entries"} and toc0["version"] == 1
    by_name = {}
    for e in toc0["entries"]:
        by_name.setdefault(e["name"], []).append(e)
        assert "userName" not in e and "groupName" not in e
        if e["type"] != "chunk":
            assert e["accesstime"] == e["changetime"] == "0001-01-01T00:00:00Z"
    assert by_name["etc/"][0]["type"] == "dir" and "etc" not in by_name
    assert by_name["bin/tool"][0]["mode"] == 0o4755
    assert by_name["etc/conf.hl"][0]["type"] == "hardlink"
    assert by_name["etc/conf.hl"][0]["linkName"] == "etc/conf"
    assert (by_name["dev/sda1"][0]["devMajor"], by_name["dev/sda1"][0]["devMinor"]) == (8, 1)
    assert by_name["run/pipe"][0]["type"] == "fifo"
    big = by_name["data/big.bin"]
    assert big[0]["type"] == "reg" and all(c["type"] == "chunk" for c in big[1:])
    assert len(big) > 10 and all("endOffset" not in c for c in big[1:])
    zeros = [c for c in big if c.get("chunkType") == "zeros"]
    assert len(zeros) == 1 and zeros[0]["chunkSize"] == 2 << 20
    # The zeros are still stored, as one small frame at the chunk's offset.
    frame = zstandard.ZstdDecompressor().decompressobj().decompress(blob0[zeros[0]["offset"] :])
    assert frame == bytes(2 << 20)
    whiteouts = {e["name"]: e for e in toc1["entries"] if "/.wh." in e["name"]}
    assert {e["type"] for e in whiteouts.values()} == {"reg"}
    assert set(whiteouts) == {"etc/.wh.conf", "data/.wh..wh..opq"}


# ---------------------------------------------------------------- reading it back


def test_index_reads_every_file_like_a_plain_unpack(converted):
    async def main():
        async with RegistryClient(retry=FAST) as client:
            resolved = await client.resolve(converted.ref)
            for i, desc in enumerate(resolved.manifest.layers):
                blob = RegistryBlob(client, converted.ref, desc.digest, desc.size)
                result = await read_zstd_chunked(
                    blob, annotations=desc.annotations, layer=f"skopeo#{i}"
                )
                index = result.index
                assert (index.format, index.dialect) == ("zstd:chunked", "legacy")
                assert result.tar_split is None
                plain = _unzstd(await client.get_blob(converted.ref, desc.digest))
                compared = await assert_index_matches_tar(
                    blob, index, plain, check_owner_names=False
                )
                assert compared == sum(1 for e in index.entries if e.type == EntryType.REG)
                check_same_as_original(plain, converted.original_tars[i])
                if i == 0:
                    entries = {e.path: e for e in index.entries}
                    assert (entries["etc"].uname, entries["etc"].gname) == ("", "")  # lost
                    assert entries["bin/tool"].mode == 0o4755
                    big = entries["data/big.bin"]
                    assert len(big.chunks) > 10
                    assert [c.codec for c in big.chunks].count(CODEC_ZEROS) == 1
                    assert all(c.digest is not None for c in big.chunks)

    trio.run(main)


def check_same_as_original(plain: bytes, original: bytes) -> None:
    """skopeo's tar is the original minus the record padding after the end of the archive."""
    assert len(plain) < len(original)
    assert original[: len(plain)] == plain
    assert not any(original[len(plain) :])
    assert Digest.of(plain) != Digest.of(original)  # hence a diffID the config does not list
    ours, theirs = tar_members(plain), tar_members(original)
    assert ours.keys() == theirs.keys()
    for path, (info, data) in theirs.items():
        mine, my_data = ours[path]
        assert my_data == data, path
        assert mine.get_info() == info.get_info(), path
