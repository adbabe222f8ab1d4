"""OCI and Docker image manifests, image indexes and image configs.

:func:`parse_manifest` turns the bytes of a manifest or index (OCI image spec, or Docker's
image manifest v2 schema 2 and manifest list) into an :class:`ImageManifest` or
:class:`ImageIndex`; :func:`parse_config` turns an image config blob into an
:class:`ImageConfig`. Both verify the content digest first when one is given, and report
malformed documents with :class:`ManifestError`, naming the offending field. Docker's
schema 1 manifests are recognised and rejected.

The dataclasses are immutable; their ``to_json``/``to_bytes`` methods serialise them with
the OCI field names, in a fixed field order, with annotation keys sorted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lazyfs.errors import InvalidDigest, ManifestError
from lazyfs.oci import mediatypes as mt
from lazyfs.oci.digest import Digest
from lazyfs.oci.platform import Platform

__all__ = [
    "Descriptor",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "parse_config",
    "parse_manifest",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    """Return a read-only copy of *value* (None gives an empty mapping)."""
    if not value:
        return _EMPTY
    return MappingProxyType(dict(value))


def _sorted_map(value: Mapping[str, str]) -> dict[str, str]:
    return {key: value[key] for key in sorted(value)}


def _dumps(data: Any) -> bytes:
    """Compact JSON: no whitespace, ASCII only, keys in the order the dict has them."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _load_json(data: bytes, where: str) -> Any:
    """Decode UTF-8 JSON *data*, raising :class:`ManifestError` naming *where* if it is not."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ManifestError(f"{where}: expected bytes, got {type(data).__name__}")
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not valid JSON: not UTF-8 ({exc.reason})") from None
    except ValueError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ManifestError(f"{where} is not valid JSON: {detail}") from None
    except RecursionError:
        raise ManifestError(f"{where} is not valid JSON: nested too deeply") from None


# -- field readers: each raises ManifestError("<where>: <key> ...") ---------------------------


def _get_str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{where}: {key} is missing")
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {key} must be a string")
    return value


def _get_str_map(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ManifestError(f"{where}: {key} must be an object with string values")
    return value


def _get_list(obj: Mapping[str, Any], key: str, where: str, *, required: bool) -> list[Any]:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{where}: {key} is missing")
        return []
    if not isinstance(value, list):
        raise ManifestError(f"{where}: {key} must be a list")
    return value


def _get_descriptor(obj: Mapping[str, Any], key: str, where: str) -> Descriptor | None:
    value = obj.get(key)
    if value is None:
        return None
    return Descriptor.from_json(value, f"{where} {key}")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to content: its media type, digest and size, plus optional metadata.

    ``annotations`` is stored as a read-only mapping. ``platform`` is set on image index
    entries. Constructing one converts ``digest`` to :class:`Digest` (raising
    :class:`InvalidDigest` if malformed) and ``urls`` to a tuple. Descriptors are hashable
    (by media type, digest and size).
    """

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", Digest(self.digest))
        object.__setattr__(self, "annotations", _frozen_map(self.annotations))
        object.__setattr__(self, "urls", tuple(self.urls))

    def __hash__(self) -> int:
        # The annotations mapping is unhashable; equal descriptors share these fields.
        return hash((self.media_type, self.digest, self.size))

    @classmethod
    def from_json(cls, data: Any, where: str) -> Descriptor:
        """Build a descriptor from its OCI JSON object.

        Raises :class:`ManifestError` starting with *where* (e.g. ``"manifest layers[2]"``)
        if a field is missing or ill-typed.
        """
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: must be a JSON object")
        media_type = _get_str(data, "mediaType", where, required=True)
        digest_text = data.get("digest")
        if digest_text is None:
            raise ManifestError(f"{where}: digest is missing")
        try:
            digest = Digest(digest_text)
        except InvalidDigest as exc:
            raise ManifestError(f"{where}: digest: {exc}") from None
        size = data.get("size")
        if type(size) is not int or size < 0:
            raise ManifestError(f"{where}: size must be a non-negative integer")
        urls = _get_list(data, "urls", where, required=False)
        if not all(isinstance(u, str) for u in urls):
            raise ManifestError(f"{where}: urls must be a list of strings")
        platform_data = data.get("platform")
        platform = (
            None
            if platform_data is None
            else Platform.from_json(platform_data, f"{where} platform")
        )
        return cls(
            media_type=media_type,  # type: ignore[arg-type]
            digest=digest,
            size=size,
            annotations=_get_str_map(data, "annotations", where),
            urls=tuple(urls),
            platform=platform,
            artifact_type=_get_str(data, "artifactType", where),
        )

    def to_json(self) -> dict[str, Any]:
        """Return the OCI JSON object, omitting empty optional fields."""
        data: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.urls:
            data["urls"] = list(self.urls)
        if self.annotations:
            data["annotations"] = _sorted_map(self.annotations)
        if self.platform is not None:
            data["platform"] = self.platform.to_json()
        if self.artifact_type is not None:
            data["artifactType"] = self.artifact_type
        return data


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """An image manifest: one platform's config and ordered layers.

    ``media_type`` is :data:`~lazyfs.oci.mediatypes.OCI_MANIFEST` or
    :data:`~lazyfs.oci.mediatypes.DOCKER_MANIFEST`.
    """

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    schema_version: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "annotations", _frozen_map(self.annotations))

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's JSON object, omitting empty optional fields."""
        layers = [layer.to_json() for layer in self.layers]
        return _document_json(self, {"config": self.config.to_json(), "layers": layers})

    def to_bytes(self) -> bytes:
        """Return :meth:`to_json` as compact JSON; equal manifests give equal bytes."""
        return _dumps(self.to_json())


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """An image index (Docker: manifest list): manifests for several platforms.

    ``media_type`` is :data:`~lazyfs.oci.mediatypes.OCI_INDEX` or
    :data:`~lazyfs.oci.mediatypes.DOCKER_MANIFEST_LIST`.
    """

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    subject: Descriptor | None = None
    schema_version: int = 2
    artifact_type: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifests", tuple(self.manifests))
        object.__setattr__(self, "annotations", _frozen_map(self.annotations))

    def to_json(self) -> dict[str, Any]:
        """Return the index's JSON object, omitting empty optional fields."""
        return _document_json(self, {"manifests": [d.to_json() for d in self.manifests]})

    def to_bytes(self) -> bytes:
        """Return :meth:`to_json` as compact JSON; equal indexes give equal bytes."""
        return _dumps(self.to_json())


def _document_json(doc: ImageManifest | ImageIndex, body: dict[str, Any]) -> dict[str, Any]:
    """*doc*'s JSON object: ``schemaVersion``, ``mediaType``, ``artifactType``, then *body*
    (the kind's own fields), ``subject``, ``annotations``; empty optional fields left out."""
    data: dict[str, Any] = {"schemaVersion": doc.schema_version, "mediaType": doc.media_type}
    if doc.artifact_type is not None:
        data["artifactType"] = doc.artifact_type
    data.update(body)
    if doc.subject is not None:
        data["subject"] = doc.subject.to_json()
    if doc.annotations:
        data["annotations"] = _sorted_map(doc.annotations)
    return data


def _header_type(media_type: str | None) -> str | None:
    """Return the manifest type named by a Content-Type header, or None if it names none.

    Parameters are dropped; generic types such as ``application/json`` count as none.
    """
    if not media_type:
        return None
    base = media_type.split(";", 1)[0].strip().lower()
    if base in mt.MANIFEST_TYPES or base in mt.INDEX_TYPES or base in mt.SCHEMA1_TYPES:
        return base
    return None


def _schema1_error(where: str) -> ManifestError:
    return ManifestError(
        f"{where}: Docker image manifest schema 1 is not supported; "
        "push the image again with a current client to get a schema 2 or OCI manifest"
    )


def parse_manifest(
    data: bytes,
    *,
    media_type: str | None = None,
    expected: Digest | None = None,
    where: str = "manifest",
) -> ImageManifest | ImageIndex:
    """Parse an image manifest or index.

    If *expected* is given, *data* must hash to it (:class:`DigestMismatch` otherwise). The
    kind is taken from the body's ``mediaType``, else from *media_type* (the HTTP
    Content-Type; parameters and generic types like ``application/json`` are ignored), else
    from the shape: a ``manifests`` list means an OCI index, ``config`` and ``layers`` an
    OCI manifest. Conflicting body and header types, Docker schema 1, an unsupported type,
    a ``schemaVersion`` other than 2 and missing or ill-typed fields raise
    :class:`ManifestError` starting with *where*.
    """
    if expected is not None:
        Digest(expected).verify(data, where)
    obj = _load_json(data, where)
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: must be a JSON object")

    schema_version = obj.get("schemaVersion")
    body_type = _get_str(obj, "mediaType", where)
    header_type = _header_type(media_type)
    if (
        (type(schema_version) is int and schema_version == 1)
        or body_type in mt.SCHEMA1_TYPES
        or header_type in mt.SCHEMA1_TYPES
    ):
        raise _schema1_error(where)
    if body_type is not None and header_type is not None and body_type != header_type:
        raise ManifestError(
            f"{where}: mediaType {body_type!r} conflicts with Content-Type {header_type!r}"
        )

    kind = body_type or header_type
    if kind is None:
        has_index_shape = "manifests" in obj
        has_manifest_shape = "config" in obj and "layers" in obj
        if has_index_shape and has_manifest_shape:
            raise ManifestError(
                f"{where}: has no mediaType and both manifests and config/layers, "
                "so its kind is ambiguous"
            )
        if has_index_shape:
            kind = mt.OCI_INDEX
        elif has_manifest_shape:
            kind = mt.OCI_MANIFEST
        else:
            raise ManifestError(
                f"{where}: has no mediaType and neither manifests nor config and layers"
            )
    if kind not in mt.MANIFEST_TYPES and kind not in mt.INDEX_TYPES:
        raise ManifestError(f"{where}: unsupported media type {kind!r}")

    if schema_version is None:
        raise ManifestError(f"{where}: schemaVersion is missing")
    if type(schema_version) is not int or schema_version != 2:
        raise ManifestError(f"{where}: schemaVersion must be 2, not {schema_version!r}")

    annotations = _get_str_map(obj, "annotations", where)
    subject = _get_descriptor(obj, "subject", where)
    artifact_type = _get_str(obj, "artifactType", where)

    if kind in mt.INDEX_TYPES:
        entries = _get_list(obj, "manifests", where, required=True)
        return ImageIndex(
            media_type=kind,
            manifests=tuple(
                Descriptor.from_json(entry, f"{where} manifests[{i}]")
                for i, entry in enumerate(entries)
            ),
            annotations=annotations,
            subject=subject,
            schema_version=schema_version,
            artifact_type=artifact_type,
        )

    config_data = obj.get("config")
    if config_data is None:
        raise ManifestError(f"{where}: config is missing")
    config = Descriptor.from_json(config_data, f"{where} config")
    layers = _get_list(obj, "layers", where, required=True)
    return ImageManifest(
        media_type=kind,
        config=config,
        layers=tuple(
            Descriptor.from_json(layer, f"{where} layers[{i}]") for i, layer in enumerate(layers)
        ),
        annotations=annotations,
        subject=subject,
        artifact_type=artifact_type,
        schema_version=schema_version,
    )


# -- image config --------------------------------------------------------------------------


def _str_list(value: Any, name: str, where: str, *, allow_string: bool = False) -> list[str]:
    """Validate a list of strings; Docker also accepts a single string for Cmd/Entrypoint."""
    if allow_string and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"{where}: {name} must be a list of strings")
    return list(value)


def _key_set(value: Any, name: str, where: str) -> tuple[str, ...]:
    """Validate a Docker "set" (an object whose values are ``{}``) and return its keys."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: {name} must be an object")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config (OCI ``application/vnd.oci.image.config.v1+json`` or Docker's).

    ``raw`` is the whole parsed document, kept so converters can rewrite fields and keep
    everything else; treat it as read-only. The other attributes are derived from it when
    the config is constructed (which validates them, raising :class:`ManifestError`). The
    run-time settings come from the ``config`` object (``User``, ``WorkingDir``,
    ``Entrypoint``, ``Cmd``, ``Env``, ``ExposedPorts``, ``Volumes``, ``Labels``,
    ``StopSignal``); ``null`` values read as empty (``env``, ``labels``, ``exposed_ports``,
    ``volumes``, ``history``) or None (the rest).
    """

    raw: dict[str, Any]
    architecture: str = field(init=False, repr=False, compare=False)
    os: str = field(init=False, repr=False, compare=False)
    variant: str | None = field(init=False, repr=False, compare=False)
    os_version: str | None = field(init=False, repr=False, compare=False)
    os_features: tuple[str, ...] = field(init=False, repr=False, compare=False)
    created: str | None = field(init=False, repr=False, compare=False)
    author: str | None = field(init=False, repr=False, compare=False)
    user: str | None = field(init=False, repr=False, compare=False)
    working_dir: str | None = field(init=False, repr=False, compare=False)
    entrypoint: list[str] | None = field(init=False, repr=False, compare=False)
    cmd: list[str] | None = field(init=False, repr=False, compare=False)
    env: list[str] = field(init=False, repr=False, compare=False)
    exposed_ports: tuple[str, ...] = field(init=False, repr=False, compare=False)
    volumes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    labels: dict[str, str] = field(init=False, repr=False, compare=False)
    stop_signal: str | None = field(init=False, repr=False, compare=False)
    diff_ids: tuple[Digest, ...] = field(init=False, repr=False, compare=False)
    history: list[dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._load("image config")

    def _load(self, where: str) -> None:
        raw = self.raw
        if not isinstance(raw, dict):
            raise ManifestError(f"{where}: must be a JSON object")
        values: dict[str, Any] = {
            "architecture": _get_str(raw, "architecture", where, required=True),
            "os": _get_str(raw, "os", where, required=True),
            "variant": _get_str(raw, "variant", where),
            "os_version": _get_str(raw, "os.version", where),
            "created": _get_str(raw, "created", where),
            "author": _get_str(raw, "author", where),
        }
        features = raw.get("os.features")
        values["os_features"] = (
            () if features is None else tuple(_str_list(features, "os.features", where))
        )

        run = raw.get("config")
        if run is None:
            run = {}
        if not isinstance(run, dict):
            raise ManifestError(f"{where}: config must be an object")
        run_where = f"{where} config"
        values["user"] = _get_str(run, "User", run_where)
        values["working_dir"] = _get_str(run, "WorkingDir", run_where)
        values["stop_signal"] = _get_str(run, "StopSignal", run_where)
        for attr, key in (("entrypoint", "Entrypoint"), ("cmd", "Cmd")):
            value = run.get(key)
            values[attr] = (
                None if value is None else _str_list(value, key, run_where, allow_string=True)
            )
        env = run.get("Env")
        values["env"] = [] if env is None else _str_list(env, "Env", run_where)
        values["labels"] = dict(_get_str_map(run, "Labels", run_where))
        values["exposed_ports"] = _key_set(run.get("ExposedPorts"), "ExposedPorts", run_where)
        values["volumes"] = _key_set(run.get("Volumes"), "Volumes", run_where)

        rootfs = raw.get("rootfs")
        if not isinstance(rootfs, dict):
            raise ManifestError(f"{where}: rootfs must be an object")
        if rootfs.get("type") != "layers":
            raise ManifestError(f"{where}: rootfs.type must be 'layers'")
        diff_ids = rootfs.get("diff_ids")
        if diff_ids is None:
            diff_ids = []
        if not isinstance(diff_ids, list):
            raise ManifestError(f"{where}: rootfs.diff_ids must be a list")
        checked: list[Digest] = []
        for i, diff_id in enumerate(diff_ids):
            try:
                checked.append(Digest(diff_id))
            except InvalidDigest as exc:
                raise ManifestError(f"{where}: rootfs.diff_ids[{i}]: {exc}") from None
        values["diff_ids"] = tuple(checked)

        history = raw.get("history")
        if history is None:
            history = []
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ManifestError(f"{where}: history must be a list of objects")
        values["history"] = list(history)

        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def platform(self) -> Platform:
        """The platform the image was built for, as recorded (not normalised)."""
        return Platform(
            os=self.os,
            architecture=self.architecture,
            variant=self.variant,
            os_version=self.os_version,
            os_features=self.os_features,
        )


def parse_config(
    data: bytes, *, expected: Digest | None = None, where: str = "image config"
) -> ImageConfig:
    """Parse an image config blob.

    If *expected* is given, *data* must hash to it (:class:`DigestMismatch` otherwise). The
    body must be a JSON object with string ``os`` and ``architecture`` and a
    ``rootfs`` of type ``layers`` whose ``diff_ids`` are valid digests; other problems with
    the fields :class:`ImageConfig` exposes raise :class:`ManifestError` starting with
    *where*.
    """
    if expected is not None:
        Digest(expected).verify(data, where)
    obj = _load_json(data, where)
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: must be a JSON object")
    config = ImageConfig.__new__(ImageConfig)
    object.__setattr__(config, "raw", obj)
    config._load(where)
    return config
