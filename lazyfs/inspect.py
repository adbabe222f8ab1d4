"""``lazyfs inspect``: what an image reference resolves to, as a report.

The report is a plain dict (what ``--json`` prints); :func:`render_text` lays it out for
people.
"""

from __future__ import annotations

import shlex

from .formats.annotations import lazy_format_from_annotations
from .formats.detect import find_layer_index
from .oci.platform import Platform
from .oci.resolve import ResolvedImage
from .oci.store import ImageStore

__all__ = ["image_report", "inspect_image", "render_text"]


async def inspect_image(
    store: ImageStore, platform: Platform | None, *, read_indexes: bool = True
) -> dict:
    """Resolve the image ``store`` names and describe it.

    With ``read_indexes``, each layer's own index is read (a range request or two per
    indexed layer; nothing is downloaded for layers without one) and the format reported is
    the one found there; otherwise it is guessed from the annotations.
    """
    image = await store.resolve(platform)
    report = image_report(image)
    if read_indexes:
        for entry, desc in zip(report["layers"], image.manifest.layers, strict=True):
            index = await find_layer_index(
                store.blob_reader(desc),
                media_type=desc.media_type,
                annotations=desc.annotations,
                layer=f"#{entry['index']} {desc.digest}",
            )
            entry["format_source"] = "index"
            if index is None:
                entry["lazy_format"] = "none"
                entry["lazy_index"] = None
            else:
                entry["lazy_format"] = index.format
                entry["lazy_index"] = index.summary()
    return report


def image_report(image: ResolvedImage) -> dict:
    """The report of a resolved image, layer formats from annotations."""
    cfg = image.config
    layers = []
    for i, layer in enumerate(image.manifest.layers):
        diff_id = cfg.diff_ids[i] if i < len(cfg.diff_ids) else None
        layers.append(
            {
                "index": i,
                "digest": str(layer.digest),
                "media_type": layer.media_type,
                "size": layer.size,
                "diff_id": str(diff_id) if diff_id else None,
                "lazy_format": lazy_format_from_annotations(layer.media_type, layer.annotations),
                "format_source": "annotations",
            }
        )
    return {
        "reference": str(image.reference),
        "digest": str(image.digest),
        "index_digest": str(image.index_digest) if image.index_digest else None,
        "media_type": image.manifest.media_type,
        "platform": str(image.platform),
        "compressed_size": sum(layer.size for layer in image.manifest.layers),
        "layers": layers,
        "config": {
            "digest": str(image.manifest.config.digest),
            "created": cfg.created,
            "entrypoint": cfg.entrypoint,
            "cmd": cfg.cmd,
            "env": list(cfg.env),
            "user": cfg.user or "",
            "working_dir": cfg.working_dir or "",
            "labels": dict(cfg.labels or {}),
        },
    }


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _short_type(media_type: str) -> str:
    for prefix in ("application/vnd.oci.image.layer.v1.", "application/vnd.docker.image.rootfs."):
        if media_type.startswith(prefix):
            return media_type[len(prefix) :]
    return media_type


def render_text(report: dict) -> str:
    """The report as aligned text for a terminal."""
    cfg = report["config"]
    lines = [
        f"Reference:   {report['reference']}",
        f"Digest:      {report['digest']}",
    ]
    if report["index_digest"]:
        lines.append(f"Index:       {report['index_digest']}")
    lines += [
        f"Platform:    {report['platform']}",
        f"Media type:  {report['media_type']}",
        f"Size:        {human_size(report['compressed_size'])} compressed in "
        f"{len(report['layers'])} layer(s)",
        "Layers:",
    ]
    rows = [("#", "DIGEST", "TYPE", "SIZE", "LAZY FORMAT", "ENTRIES", "CHUNKS", "INDEX")]
    for layer in report["layers"]:
        index = layer.get("lazy_index") or {}
        rows.append(
            (
                str(layer["index"]),
                layer["digest"][:19],
                _short_type(layer["media_type"]),
                human_size(layer["size"]),
                layer["lazy_format"] + (f" ({index['dialect']})" if index.get("dialect") else ""),
                str(index["entries"]) if index else "-",
                str(index["chunks"]) if index else "-",
                human_size(index["index_size"]) if index else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())

    def show(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return " ".join(shlex.quote(v) for v in value) if value else "[]"
        return value or "-"

    lines += [
        "Config:",
        f"  Entrypoint: {show(cfg['entrypoint'])}",
        f"  Cmd:        {show(cfg['cmd'])}",
        f"  User:       {show(cfg['user'])}",
        f"  WorkingDir: {show(cfg['working_dir'])}",
        "  Env:" + ("" if cfg["env"] else "        -"),
    ]
    lines += [f"    {e}" for e in cfg["env"]]
    return "\n".join(lines)
