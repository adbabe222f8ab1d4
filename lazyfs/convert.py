"""``lazyfs convert``: rewrite an image's layers as zstd:chunked.

Every platform of an index is converted. Per layer: the blob is fetched (verified), made a
plain tar (checked against the config's diff ID), and written again as zstd:chunked by
:func:`~lazyfs.formats.zstd_chunked_writer.write_zstd_chunked`. Layers that are zstd:chunked
of the current dialect already, and foreign layers, are kept as they are. The config gets the
new diff IDs and keeps everything else (history, env, labels...); manifests become OCI
manifests. Blobs the destination has are not sent again, and within one registry they are
mounted from the source repository instead of uploaded.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio
import zstandard

from .errors import LazyfsError, ManifestError
from .formats.annotations import ZSTD_CHUNKED_MANIFEST_POSITION, ZSTD_CHUNKED_TARSPLIT_POSITION
from .formats.zstd_chunked_writer import DEFAULT_CHUNK_SIZE, WriteResult, write_zstd_chunked
from .oci import mediatypes
from .oci.digest import Digest, Verifier
from .oci.manifest import Descriptor, ImageIndex, ImageManifest, parse_config, parse_manifest
from .oci.store import ImageStore
from .progress import Progress

__all__ = ["ConvertOptions", "ConvertReport", "convert_image"]

log = logging.getLogger("lazyfs.convert")

#: Annotations of the formats a converted layer no longer has.
_STALE_ANNOTATION_PREFIXES = (
    "containerd.io/snapshot/stargz/",
    "io.containers.estargz.",
    "io.github.containers.zstd-chunked.",
    "io.containers.zstd-chunked.",
    "io.lazyfs.",
)


@dataclass
class ConvertOptions:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    level: int = 3
    prioritize: Sequence[str] = ()


@dataclass
class LayerReport:
    source: str
    result: str  # "converted" or "kept"
    digest: str
    tar_bytes: int = 0
    blob_bytes: int = 0
    source_bytes: int = 0
    seconds: float = 0.0


@dataclass
class ConvertReport:
    digest: Digest | None = None
    media_type: str = ""
    layers: list[LayerReport] = field(default_factory=list)
    uploads: dict[str, int] = field(default_factory=dict)

    @property
    def tar_bytes(self) -> int:
        return sum(layer.tar_bytes for layer in self.layers)

    @property
    def seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers)


def _is_current_zstd_chunked(desc: Descriptor) -> bool:
    return (
        mediatypes.layer_compression(desc.media_type) == "zstd"
        and ZSTD_CHUNKED_MANIFEST_POSITION in desc.annotations
        and ZSTD_CHUNKED_TARSPLIT_POSITION in desc.annotations
    )


def _keep_layer(desc: Descriptor, options: ConvertOptions) -> bool:
    if desc.media_type in (
        mediatypes.DOCKER_LAYER_FOREIGN_GZIP,
        mediatypes.OCI_LAYER_NONDIST_TAR,
        mediatypes.OCI_LAYER_NONDIST_GZIP,
        mediatypes.OCI_LAYER_NONDIST_ZSTD,
    ):
        return True
    return _is_current_zstd_chunked(desc) and not options.prioritize


def _decompress_to(
    compression: str, src: Path, dst: Path, expected: Digest | None, what: str
) -> int:
    """Write the tar inside a layer blob to ``dst``; check it against the diff ID."""
    verifier = Verifier(expected, what) if expected else None
    total = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        if compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(fin, read_across_frames=True)
        elif compression == "gzip":
            reader = _GzipMembers(fin)
        else:
            reader = fin
        while piece := reader.read(1 << 20):
            if verifier:
                verifier.update(piece)
            fout.write(piece)
            total += len(piece)
    if verifier:
        verifier.finish()
    return total


class _GzipMembers:
    """A reader of the concatenated members of a gzip file (eStargz has many)."""

    def __init__(self, f) -> None:
        self.f = f
        self.d = zlib.decompressobj(wbits=31)
        self.pending = b""

    def read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self.pending:
                self.pending = self.f.read(1 << 20)
                if not self.pending:
                    break
            out += self.d.decompress(self.pending, n - len(out))
            self.pending = self.d.unconsumed_tail
            if self.d.eof:
                self.pending = self.d.unused_data + self.pending
                self.d = zlib.decompressobj(wbits=31)
        return bytes(out)


async def convert_image(
    src: ImageStore, dst: ImageStore, options: ConvertOptions, progress: Progress
) -> ConvertReport:
    """Convert the image (or every platform of the index) ``src`` names into ``dst``."""
    report = ConvertReport()
    top = await src.top()
    parsed = parse_manifest(top.data, media_type=top.media_type or None, expected=top.digest)
    with tempfile.TemporaryDirectory(prefix="lazyfs-convert-") as tmp:
        work = Path(tmp)
        if isinstance(parsed, ImageIndex):
            manifests = []
            for desc in parsed.manifests:
                if (
                    desc.media_type not in mediatypes.MANIFEST_TYPES
                    or desc.platform is None
                    or (desc.platform.os == "unknown")
                ):
                    log.warning(
                        "leaving out %s (%s): not an image for a platform",
                        desc.digest,
                        desc.media_type,
                    )
                    continue
                new = await _convert_manifest(src, dst, desc, options, progress, work, report)
                manifests.append(
                    Descriptor(
                        new.media_type,
                        new.digest,
                        new.size,
                        desc.annotations,
                        platform=desc.platform,
                    )
                )
            if not manifests:
                raise ManifestError(f"{src.name}: the index lists no image to convert")
            index = ImageIndex(mediatypes.OCI_INDEX, tuple(manifests), parsed.annotations)
            data = index.to_bytes()
            report.digest = await dst.put_manifest(data, index.media_type, tagged=True)
            report.media_type = index.media_type
        else:
            desc = Descriptor(parsed.media_type, top.digest, len(top.data))
            new = await _convert_manifest(
                src, dst, desc, options, progress, work, report, tagged=True
            )
            report.digest, report.media_type = new.digest, new.media_type
    return report


async def _convert_manifest(
    src: ImageStore,
    dst: ImageStore,
    desc: Descriptor,
    options: ConvertOptions,
    progress: Progress,
    work: Path,
    report: ConvertReport,
    *,
    tagged: bool = False,
) -> Descriptor:
    fetched = await src.manifest(desc)
    manifest = parse_manifest(fetched.data, media_type=desc.media_type, expected=desc.digest)
    if not isinstance(manifest, ImageManifest):
        raise ManifestError(f"{desc.digest} is not an image manifest")
    config_bytes = await src.blob(manifest.config)
    config = parse_config(config_bytes, expected=manifest.config.digest)
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(
            f"manifest {desc.digest} has {len(manifest.layers)} layers "
            f"but its config {len(config.diff_ids)} diff IDs"
        )
    diff_ids = list(config.diff_ids)
    layers = []
    for i, layer in enumerate(manifest.layers):
        name = f"{i + 1}/{len(manifest.layers)} {layer.digest.hex[:12]}"
        started = trio.current_time()
        if _keep_layer(layer, options):
            outcome = await dst.put_blob(
                layer.digest,
                functools.partial(_blob_file, src, layer, work, progress, name),  # if needed
                mount_from=src,
            )
            report.uploads[outcome] = report.uploads.get(outcome, 0) + 1
            layers.append(layer)
            report.layers.append(
                LayerReport(str(layer.digest), "kept", str(layer.digest), source_bytes=layer.size)
            )
            continue
        result = await _convert_layer(src, layer, diff_ids[i], options, progress, work, name)
        outcome = await dst.put_blob(result.digest, result.path)
        report.uploads[outcome] = report.uploads.get(outcome, 0) + 1
        result.path.unlink()
        kept = {
            k: v
            for k, v in layer.annotations.items()
            if not k.startswith(_STALE_ANNOTATION_PREFIXES)
        }
        layers.append(
            Descriptor(
                mediatypes.OCI_LAYER_ZSTD,
                result.digest,
                result.size,
                {**kept, **result.annotations},
            )
        )
        diff_ids[i] = result.diff_id
        report.layers.append(
            LayerReport(
                str(layer.digest),
                "converted",
                str(result.digest),
                tar_bytes=result.tar_size,
                blob_bytes=result.size,
                source_bytes=layer.size,
                seconds=trio.current_time() - started,
            )
        )

    if diff_ids == list(config.diff_ids):
        new_config = config_bytes
    else:
        raw = json.loads(config_bytes)
        raw.setdefault("rootfs", {"type": "layers"})["diff_ids"] = [str(d) for d in diff_ids]
        new_config = json.dumps(raw, separators=(",", ":")).encode()
    config_desc = Descriptor(mediatypes.OCI_CONFIG, Digest.of(new_config), len(new_config))
    await dst.put_blob(config_desc.digest, new_config, mount_from=src)
    new_manifest = ImageManifest(
        mediatypes.OCI_MANIFEST,
        config_desc,
        tuple(layers),
        manifest.annotations,
        subject=manifest.subject,
    )
    data = new_manifest.to_bytes()
    digest = await dst.put_manifest(data, new_manifest.media_type, tagged=tagged)
    return Descriptor(new_manifest.media_type, digest, len(data))


async def _blob_file(
    src: ImageStore, layer: Descriptor, work: Path, progress: Progress, name: str
) -> Path:
    path = work / f"blob-{layer.digest.hex}"
    if not path.exists():
        task = progress.add(f"fetch {name}", layer.size)
        await src.blob_to_file(layer, path, lambda n: progress.advance(task, n))
        progress.finish(task)
    return path


async def _convert_layer(
    src: ImageStore,
    layer: Descriptor,
    diff_id: Digest,
    options: ConvertOptions,
    progress: Progress,
    work: Path,
    name: str,
) -> WriteResult:
    blob = await _blob_file(src, layer, work, progress, name)
    tar = work / f"tar-{layer.digest.hex}"
    compression = mediatypes.layer_compression(layer.media_type)
    what = f"layer {layer.digest} (diff ID {diff_id})"
    try:
        tar_size = await trio.to_thread.run_sync(
            _decompress_to, compression, blob, tar, diff_id, what
        )
    except (zlib.error, zstandard.ZstdError) as exc:
        raise LazyfsError(f"{what}: cannot decompress: {exc}") from None
    blob.unlink()
    task = progress.add(f"convert {name}", tar_size)
    out = work / f"out-{layer.digest.hex}"
    result = await trio.to_thread.run_sync(
        lambda: write_zstd_chunked(
            tar,
            out,
            layer=str(layer.digest),
            chunk_size=options.chunk_size,
            level=options.level,
            prioritize=options.prioritize,
            progress=lambda n: progress.advance(task, n),
        )
    )
    progress.finish(task)
    tar.unlink()
    return result
