"""OCI image layouts on disk (``oci:DIR[:TAG]``, as skopeo and umoci name them).

A layout is a directory with an ``oci-layout`` marker, an ``index.json`` listing the tagged
manifests (tag in the ``org.opencontainers.image.ref.name`` annotation) and
``blobs/<algorithm>/<hex>`` files. Blobs are written to a temporary name, verified, then
renamed, so a crash never leaves a blob whose name lies about its content.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import LazyfsError, NotFound
from . import mediatypes
from .digest import Digest, Verifier
from .manifest import Descriptor

__all__ = ["REF_NAME", "OCILayout", "parse_layout_reference"]

REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_FILE = {"imageLayoutVersion": "1.0.0"}


def parse_layout_reference(text: str) -> tuple[Path, str | None] | None:
    """``oci:DIR[:TAG]`` -> (DIR, TAG or None); None if ``text`` is not of that form."""
    if not text.startswith("oci:"):
        return None
    rest = text[4:]
    if not rest:
        raise LazyfsError("oci: reference needs a directory, as in oci:DIR[:TAG]")
    path, sep, tag = rest.rpartition(":")
    if sep and path and "/" not in tag:
        return Path(path), tag or None
    return Path(rest), None


class OCILayout:
    """An OCI image layout directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    @property
    def exists(self) -> bool:
        return (self.root / "oci-layout").is_file() and (self.root / "index.json").is_file()

    def init(self) -> None:
        """Create an empty layout (no-op if one is there)."""
        if self.exists:
            return
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text(json.dumps(_LAYOUT_FILE))
        self._write_index({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []})

    def _read_index(self) -> dict:
        if not self.exists:
            raise NotFound(f"{self.root} is not an OCI image layout (no oci-layout and index.json)")
        try:
            index = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise LazyfsError(f"{self.root}/index.json cannot be read: {exc}") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise LazyfsError(f"{self.root}/index.json is not an OCI index")
        return index

    def _write_index(self, index: dict) -> None:
        tmp = self.root / f".index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, self.root / "index.json")

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: Digest) -> bytes:
        """A blob's bytes, verified."""
        path = self.blob_path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in {self.root}") from None
        digest.verify(data, f"blob {path}")
        return data

    def write_blob(self, digest: Digest, source: bytes | os.PathLike[str]) -> None:
        """Store a blob from bytes or a file; refuses content that does not match ``digest``."""
        target = self.blob_path(digest)
        if target.is_file():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        verifier = Verifier(digest, f"blob for {target}")
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                verifier.update(bytes(source))
                tmp.write_bytes(source)
            else:
                with open(source, "rb") as src, open(tmp, "wb") as dst:
                    while piece := src.read(1 << 20):
                        verifier.update(piece)
                        dst.write(piece)
            verifier.finish()
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()

    def copy_blob_to(self, digest: Digest, path: Path) -> None:
        shutil.copyfile(self.blob_path(digest), path)

    def resolve(self, tag: str | None) -> Descriptor:
        """The descriptor ``index.json`` lists under ``tag`` (or its only one, with no tag)."""
        manifests = self._read_index()["manifests"]
        if tag is None:
            if len(manifests) != 1:
                names = [m.get("annotations", {}).get(REF_NAME) for m in manifests]
                raise LazyfsError(
                    f"{self.root} holds {len(manifests)} images; name one of {names} as oci:DIR:TAG"
                )
            return Descriptor.from_json(manifests[0], f"{self.root}/index.json")
        for m in manifests:
            if (m.get("annotations") or {}).get(REF_NAME) == tag:
                return Descriptor.from_json(m, f"{self.root}/index.json")
        raise NotFound(f"no image tagged {tag!r} in {self.root}")

    def tag(self, descriptor: Descriptor, tag: str | None) -> None:
        """List ``descriptor`` in ``index.json`` under ``tag``, replacing what had that tag."""
        index = self._read_index()
        entry = descriptor.to_json()
        if tag:
            entry["annotations"] = {**entry.get("annotations", {}), REF_NAME: tag}
        kept = [
            m
            for m in index["manifests"]
            if not (tag and (m.get("annotations") or {}).get(REF_NAME) == tag)
            and not (not tag and m.get("digest") == str(descriptor.digest))
        ]
        index["manifests"] = [*kept, entry]
        self._write_index(index)
