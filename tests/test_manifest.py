"""Tests for lazyfs.oci.manifest and lazyfs.oci.mediatypes."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyfs.errors import DigestMismatch, ManifestError
from lazyfs.oci import mediatypes as mt
from lazyfs.oci.digest import Digest
from lazyfs.oci.manifest import (
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from lazyfs.oci.platform import Platform, select_manifest


def _d(n: int) -> str:
    return str(Digest.of(f"blob {n}".encode()))


# -- fixtures: realistic documents, written inline ---------------------------------------------

OCI_INDEX_DOC = f"""{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.index.v1+json",
  "manifests": [
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{_d(1)}",
      "size": 2198,
      "platform": {{"architecture": "amd64", "os": "linux"}}
    }},
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{_d(2)}",
      "size": 2198,
      "platform": {{"architecture": "arm64", "os": "linux", "variant": "v8"}}
    }},
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "digest": "{_d(3)}",
      "size": 566,
      "annotations": {{
        "vnd.docker.reference.digest": "{_d(1)}",
        "vnd.docker.reference.type": "attestation-manifest"
      }},
      "platform": {{"architecture": "unknown", "os": "unknown"}}
    }}
  ],
  "annotations": {{"org.opencontainers.image.ref.name": "3.12"}}
}}""".encode()

DOCKER_LIST_DOC = f"""{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
   "manifests": [
      {{
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "size": 528,
         "digest": "{_d(4)}",
         "platform": {{"architecture": "amd64", "os": "linux"}}
      }},
      {{
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "size": 528,
         "digest": "{_d(5)}",
         "platform": {{"architecture": "arm", "os": "linux", "variant": "v7"}}
      }},
      {{
         "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
         "size": 1125,
         "digest": "{_d(6)}",
         "platform": {{
            "architecture": "amd64",
            "os": "windows",
            "os.version": "10.0.17763.5329",
            "os.features": ["win32k"]
         }}
      }}
   ]
}}""".encode()

DOCKER_MANIFEST_DOC = f"""{{
   "schemaVersion": 2,
   "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
   "config": {{
      "mediaType": "application/vnd.docker.container.image.v1+json",
      "size": 1472,
      "digest": "{_d(7)}"
   }},
   "layers": [
      {{
         "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "size": 3408729,
         "digest": "{_d(8)}"
      }},
      {{
         "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
         "size": 1036,
         "digest": "{_d(9)}",
         "urls": ["https://mcr.microsoft.com/v2/windows/blobs/{_d(9)}"]
      }}
   ]
}}""".encode()

OCI_MANIFEST_DOC = f"""{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {{
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "{_d(10)}",
    "size": 7023
  }},
  "layers": [
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "{_d(11)}",
      "size": 32654
    }},
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
      "digest": "{_d(12)}",
      "size": 16724,
      "annotations": {{"org.opencontainers.image.title": "layer.tar.zst"}}
    }},
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar",
      "digest": "{_d(13)}",
      "size": 73109
    }}
  ],
  "subject": {{
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "{_d(14)}",
    "size": 1234
  }},
  "annotations": {{
    "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
    "com.example.key1": "value1"
  }}
}}""".encode()

ARTIFACT_DOC = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1+json",
        "config": {
            "mediaType": mt.OCI_EMPTY,
            "digest": str(Digest.of(b"{}")),
            "size": 2,
            "data": "e30=",
        },
        "layers": [
            {"mediaType": "application/spdx+json", "digest": _d(15), "size": 999},
        ],
    }
).encode()

DOCKER_CONFIG_DOC = json.dumps(
    {
        "architecture": "amd64",
        "config": {
            "Hostname": "",
            "Domainname": "",
            "User": "",
            "AttachStdin": False,
            "Tty": False,
            "Env": [
                "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ],
            "Cmd": ["python3"],
            "Image": "sha256:" + "0" * 64,
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": None,
            "OnBuild": None,
            "Labels": None,
        },
        "container": "1b2c",
        "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", 'CMD ["python3"]']},
        "created": "2024-02-13T19:59:34.012345678Z",
        "docker_version": "20.10.23",
        "history": [
            {"created": "2024-02-13T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc"},
            {"created": "2024-02-13T00:00:01Z", "created_by": "CMD", "empty_layer": True},
        ],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [_d(20), _d(21)]},
    }
).encode()

OCI_CONFIG_DOC = json.dumps(
    {
        "created": "2024-01-02T03:04:05Z",
        "author": "Alyssa P. Hacker <alyspdev@example.com>",
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "Env": ["FOO=oci-is-a", "BAR=well-written-spec"],
            "Entrypoint": ["/bin/my-app-binary"],
            "Cmd": ["--foreground", "--config", "/etc/my-app.d/default.cfg"],
            "Volumes": {"/var/job-result-data": {}, "/var/log/my-app-logs": {}},
            "WorkingDir": "/home/alice",
            "Labels": {"com.example.project.git.url": "https://example.com/project.git"},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"diff_ids": [_d(22)], "type": "layers"},
        "history": [{"created": "2024-01-02T03:04:05Z", "created_by": "/bin/sh -c #(nop) ADD"}],
    }
).encode()

SCHEMA1_DOC = json.dumps(
    {
        "name": "hello-world",
        "tag": "latest",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": _d(30)}],
        "history": [{"v1Compatibility": "{}"}],
        "schemaVersion": 1,
        "signatures": [],
    }
).encode()


# -- manifests and indexes ---------------------------------------------------------------------


def test_parse_oci_index() -> None:
    index = parse_manifest(OCI_INDEX_DOC)
    assert isinstance(index, ImageIndex)
    assert index.media_type == mt.OCI_INDEX
    assert index.schema_version == 2
    assert len(index.manifests) == 3
    first = index.manifests[0]
    assert first.digest == _d(1)
    assert type(first.digest) is Digest
    assert first.size == 2198
    assert first.platform == Platform("linux", "amd64")
    assert index.manifests[1].platform == Platform("linux", "arm64", "v8")
    assert index.annotations == {"org.opencontainers.image.ref.name": "3.12"}
    assert select_manifest(index.manifests, Platform.parse("linux/arm64")) is index.manifests[1]


def test_parse_docker_manifest_list() -> None:
    index = parse_manifest(DOCKER_LIST_DOC, media_type=mt.DOCKER_MANIFEST_LIST)
    assert isinstance(index, ImageIndex)
    assert index.media_type == mt.DOCKER_MANIFEST_LIST
    windows = index.manifests[2].platform
    assert windows == Platform("windows", "amd64", None, "10.0.17763.5329", ("win32k",))
    assert index.annotations == {}


def test_parse_docker_manifest() -> None:
    manifest = parse_manifest(DOCKER_MANIFEST_DOC)
    assert isinstance(manifest, ImageManifest)
    assert manifest.media_type == mt.DOCKER_MANIFEST
    assert manifest.config.media_type == mt.DOCKER_CONFIG
    assert manifest.config.digest == _d(7)
    assert [layer.size for layer in manifest.layers] == [3408729, 1036]
    assert manifest.layers[1].urls == (f"https://mcr.microsoft.com/v2/windows/blobs/{_d(9)}",)
    assert [mt.layer_compression(layer.media_type) for layer in manifest.layers] == [
        "gzip",
        "gzip",
    ]
    assert manifest.subject is None
    assert manifest.artifact_type is None


def test_parse_oci_manifest() -> None:
    manifest = parse_manifest(OCI_MANIFEST_DOC)
    assert isinstance(manifest, ImageManifest)
    assert manifest.media_type == mt.OCI_MANIFEST
    assert [mt.layer_compression(layer.media_type) for layer in manifest.layers] == [
        "gzip",
        "zstd",
        "none",
    ]
    assert manifest.layers[1].annotations == {"org.opencontainers.image.title": "layer.tar.zst"}
    assert manifest.subject is not None
    assert manifest.subject.digest == _d(14)
    assert manifest.annotations["com.example.key1"] == "value1"


def test_parse_artifact_manifest() -> None:
    manifest = parse_manifest(ARTIFACT_DOC)
    assert isinstance(manifest, ImageManifest)
    assert manifest.artifact_type == "application/vnd.example.sbom.v1+json"
    assert manifest.config.media_type == mt.OCI_EMPTY
    assert not mt.is_layer(manifest.layers[0].media_type)


def test_parse_verifies_digest_first() -> None:
    good = Digest.of(OCI_MANIFEST_DOC)
    assert isinstance(parse_manifest(OCI_MANIFEST_DOC, expected=good), ImageManifest)
    with pytest.raises(DigestMismatch) as info:
        parse_manifest(b"not even json", expected=good, where=f"manifest {good}")
    assert str(info.value).startswith(f"manifest {good}: expected {good}, got sha256:")


def test_type_from_content_type_header() -> None:
    doc = json.loads(DOCKER_MANIFEST_DOC)
    del doc["mediaType"]
    data = json.dumps(doc).encode()
    manifest = parse_manifest(data, media_type=f"{mt.DOCKER_MANIFEST}; charset=utf-8")
    assert manifest.media_type == mt.DOCKER_MANIFEST
    # Without either, the shape decides (OCI).
    assert parse_manifest(data).media_type == mt.OCI_MANIFEST
    # A generic Content-Type says nothing.
    assert parse_manifest(data, media_type="application/json").media_type == mt.OCI_MANIFEST


def test_type_by_shape_index() -> None:
    doc = json.loads(OCI_INDEX_DOC)
    del doc["mediaType"]
    assert parse_manifest(json.dumps(doc).encode()).media_type == mt.OCI_INDEX


def test_body_and_header_agree() -> None:
    manifest = parse_manifest(OCI_MANIFEST_DOC, media_type=mt.OCI_MANIFEST)
    assert manifest.media_type == mt.OCI_MANIFEST


def test_body_and_header_conflict() -> None:
    with pytest.raises(ManifestError, match="conflicts with Content-Type"):
        parse_manifest(OCI_MANIFEST_DOC, media_type=mt.DOCKER_MANIFEST)
    with pytest.raises(ManifestError, match="conflicts"):
        parse_manifest(OCI_INDEX_DOC, media_type=mt.OCI_MANIFEST)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (SCHEMA1_DOC, None),
        (SCHEMA1_DOC, mt.DOCKER_MANIFEST_V1_SIGNED),
        (SCHEMA1_DOC, "application/json"),
        (b'{"schemaVersion": 2}', mt.DOCKER_MANIFEST_V1),
        (json.dumps({"schemaVersion": 1, "mediaType": mt.DOCKER_MANIFEST_V1}).encode(), None),
    ],
)
def test_schema1_rejected(data: bytes, media_type: str | None) -> None:
    with pytest.raises(ManifestError, match="schema 1 is not supported"):
        parse_manifest(data, media_type=media_type, where="manifest hello-world:latest")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"", "is not valid JSON"),
        (b"{", "is not valid JSON"),
        (b"\xff\xfe{}", "is not valid JSON: not UTF-8"),
        (b'{"schemaVersion": NaN}', "is not valid JSON"),
        (b"[" * 100_000, "is not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"{}", "neither manifests nor config and layers"),
        (b'{"schemaVersion": 2, "manifests": [], "config": {}, "layers": []}', "ambiguous"),
        (b'{"schemaVersion": 2, "mediaType": 5}', "mediaType must be a string"),
        (b'{"schemaVersion": 2, "mediaType": "application/x-foo"}', "unsupported media type"),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}',
            "unsupported media type",
        ),
        (b'{"manifests": []}', "schemaVersion is missing"),
        (b'{"schemaVersion": 3, "manifests": []}', "schemaVersion must be 2"),
        (b'{"schemaVersion": "2", "manifests": []}', "schemaVersion must be 2"),
        (b'{"schemaVersion": true, "manifests": []}', "schemaVersion must be 2"),
        (b'{"schemaVersion": 2, "manifests": {}}', "manifests must be a list"),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}',
            "manifests is missing",
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
            b' "layers": []}',
            "config is missing",
        ),
        (b'{"schemaVersion": 2, "config": 1, "layers": []}', "config: must be a JSON object"),
        (b'{"schemaVersion": 2, "manifests": [], "annotations": []}', "annotations must be"),
        (
            b'{"schemaVersion": 2, "manifests": [], "annotations": {"a": 1}}',
            "annotations must be an object with string values",
        ),
        (b'{"schemaVersion": 2, "manifests": [], "subject": "x"}', "subject: must be a JSON"),
        (b'{"schemaVersion": 2, "manifests": [], "artifactType": 1}', "artifactType must be"),
    ],
)
def test_malformed_manifests(doc: bytes, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(doc, where="manifest x")
    assert str(info.value).startswith("manifest x")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def _layer(**overrides: Any) -> dict[str, Any]:
    layer: dict[str, Any] = {"mediaType": mt.OCI_LAYER_GZIP, "digest": _d(40), "size": 10}
    layer.update(overrides)
    return {key: value for key, value in layer.items() if value is not ...}


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        (_layer(size=-1), "size must be a non-negative integer"),
        (_layer(size=1.5), "size must be a non-negative integer"),
        (_layer(size="10"), "size must be a non-negative integer"),
        (_layer(size=True), "size must be a non-negative integer"),
        (_layer(size=...), "size must be a non-negative integer"),
        (_layer(digest=...), "digest is missing"),
        (_layer(digest="sha256:short"), "digest: invalid digest 'sha256:short'"),
        (_layer(digest=7), "digest: invalid digest"),
        (_layer(mediaType=...), "mediaType is missing"),
        (_layer(mediaType=["x"]), "mediaType must be a string"),
        (_layer(urls="http://x"), "urls must be a list"),
        (_layer(urls=[1]), "urls must be a list of strings"),
        (_layer(annotations={"a": None}), "annotations must be an object with string values"),
        (_layer(platform={"os": "linux"}), "layers[2] platform: architecture must be"),
        (_layer(artifactType=1), "artifactType must be a string"),
        ("layer", "must be a JSON object"),
    ],
)
def test_malformed_descriptor_names_where(layer: Any, fragment: str) -> None:
    doc = json.loads(OCI_MANIFEST_DOC)
    doc["layers"][2] = layer
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc).encode(), where="manifest sha256:abc")
    message = str(info.value)
    assert message.startswith("manifest sha256:abc layers[2]")
    assert fragment in message


def test_malformed_index_entry_names_where() -> None:
    doc = json.loads(OCI_INDEX_DOC)
    doc["manifests"][1]["size"] = -5
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(doc).encode())
    assert str(info.value) == "manifest manifests[1]: size must be a non-negative integer"


# -- serialisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc", [OCI_INDEX_DOC, DOCKER_LIST_DOC, DOCKER_MANIFEST_DOC, OCI_MANIFEST_DOC, ARTIFACT_DOC]
)
def test_to_json_round_trip(doc: bytes) -> None:
    parsed = parse_manifest(doc)
    original = json.loads(doc)
    if "data" in original.get("config", {}):
        del original["config"]["data"]  # embedded data is not kept
    assert parsed.to_json() == original
    again = parse_manifest(parsed.to_bytes())
    assert again == parsed
    assert again.to_bytes() == parsed.to_bytes()


def test_to_bytes_is_compact_and_stable() -> None:
    manifest = parse_manifest(OCI_MANIFEST_DOC)
    data = manifest.to_bytes()
    assert b" " not in data and b"\n" not in data
    assert data.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest')
    # Annotations come out sorted regardless of input order.
    assert data.index(b"com.example.key1") < data.index(b"org.opencontainers.image.created")
    reordered = dataclasses.replace(
        manifest, annotations=dict(reversed(list(manifest.annotations.items())))
    )
    assert reordered.to_bytes() == data


def test_to_bytes_non_ascii() -> None:
    manifest = ImageManifest(
        media_type=mt.OCI_MANIFEST,
        config=Descriptor(mt.OCI_CONFIG, Digest.of(b"c"), 1),
        layers=(),
        annotations={"org.opencontainers.image.description": "caf\u00e9 \U0001f600"},
    )
    data = manifest.to_bytes()
    data.decode("ascii")
    assert parse_manifest(data) == manifest


def test_descriptor_round_trip() -> None:
    data = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": _d(50),
        "size": 7,
        "urls": ["https://example.com/blob"],
        "annotations": {"b": "2", "a": "1"},
        "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        "artifactType": "application/vnd.example+type",
    }
    descriptor = Descriptor.from_json(data, "x")
    assert descriptor == Descriptor(
        media_type=mt.OCI_MANIFEST,
        digest=Digest(_d(50)),
        size=7,
        annotations={"a": "1", "b": "2"},
        urls=("https://example.com/blob",),
        platform=Platform("linux", "arm", "v7"),
        artifact_type="application/vnd.example+type",
    )
    assert descriptor.to_json() == data
    assert list(descriptor.to_json()["annotations"]) == ["a", "b"]
    assert Descriptor.from_json(descriptor.to_json(), "x") == descriptor


def test_descriptor_minimal_to_json() -> None:
    descriptor = Descriptor(mt.OCI_LAYER_TAR, Digest.of(b""), 0)
    assert descriptor.to_json() == {
        "mediaType": mt.OCI_LAYER_TAR,
        "digest": str(Digest.of(b"")),
        "size": 0,
    }


def test_descriptor_is_immutable() -> None:
    source = {"a": "1"}
    descriptor = Descriptor(mt.OCI_LAYER_TAR, Digest.of(b""), 0, annotations=source)
    source["b"] = "2"
    assert descriptor.annotations == {"a": "1"}
    with pytest.raises(TypeError):
        descriptor.annotations["c"] = "3"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        descriptor.size = 3  # type: ignore[misc]


def test_descriptor_is_hashable() -> None:
    a = Descriptor(mt.OCI_LAYER_TAR, Digest.of(b""), 0, annotations={"a": "1"})
    b = Descriptor(mt.OCI_LAYER_TAR, Digest.of(b""), 0, annotations={"a": "1"})
    c = Descriptor(mt.OCI_LAYER_TAR, Digest.of(b""), 0, annotations={"a": "2"})
    assert a == b
    assert a != c
    assert len({a, b, c}) == 2


def test_descriptor_converts_digest() -> None:
    descriptor = Descriptor(mt.OCI_LAYER_TAR, _d(1), 0)  # type: ignore[arg-type]
    assert type(descriptor.digest) is Digest


# -- image configs -------------------------------------------------------------------------------


def test_parse_docker_config() -> None:
    config = parse_config(DOCKER_CONFIG_DOC, expected=Digest.of(DOCKER_CONFIG_DOC))
    assert isinstance(config, ImageConfig)
    assert (config.os, config.architecture, config.variant) == ("linux", "amd64", None)
    assert config.created == "2024-02-13T19:59:34.012345678Z"
    assert config.author is None
    assert config.user == ""
    assert config.working_dir == ""
    assert config.entrypoint is None
    assert config.cmd == ["python3"]
    assert config.env[1] == "LANG=C.UTF-8"
    assert config.labels == {}
    assert config.volumes == ()
    assert config.exposed_ports == ()
    assert config.stop_signal is None
    assert config.diff_ids == (_d(20), _d(21))
    assert all(type(d) is Digest for d in config.diff_ids)
    assert len(config.history) == 2
    assert config.history[1]["empty_layer"] is True
    assert config.platform == Platform("linux", "amd64")
    assert config.raw["docker_version"] == "20.10.23"


def test_parse_oci_config() -> None:
    config = parse_config(OCI_CONFIG_DOC)
    assert config.platform == Platform("linux", "arm64", "v8")
    assert config.author == "Alyssa P. Hacker <alyspdev@example.com>"
    assert config.user == "1000:1000"
    assert config.exposed_ports == ("8080/tcp", "53/udp")
    assert config.volumes == ("/var/job-result-data", "/var/log/my-app-logs")
    assert config.entrypoint == ["/bin/my-app-binary"]
    assert config.cmd == ["--foreground", "--config", "/etc/my-app.d/default.cfg"]
    assert config.env == ["FOO=oci-is-a", "BAR=well-written-spec"]
    assert config.working_dir == "/home/alice"
    assert config.labels == {"com.example.project.git.url": "https://example.com/project.git"}
    assert config.stop_signal == "SIGTERM"
    assert config.diff_ids == (_d(22),)


def test_config_nulls_and_missing_sections() -> None:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": None, "Cmd": None, "Labels": None, "ExposedPorts": None},
        "rootfs": {"type": "layers", "diff_ids": None},
        "history": None,
    }
    config = parse_config(json.dumps(doc).encode())
    assert config.env == []
    assert config.cmd is None
    assert config.labels == {}
    assert config.exposed_ports == ()
    assert config.diff_ids == ()
    assert config.history == []
    bare = parse_config(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}')
    assert bare.env == []
    assert bare.user is None
    assert bare.entrypoint is None


def test_config_string_cmd_is_one_element_list() -> None:
    doc = json.loads(OCI_CONFIG_DOC)
    doc["config"]["Cmd"] = "/bin/sh"
    assert parse_config(json.dumps(doc).encode()).cmd == ["/bin/sh"]


def test_config_constructor_validates() -> None:
    raw = json.loads(OCI_CONFIG_DOC)
    assert ImageConfig(raw) == parse_config(OCI_CONFIG_DOC)
    assert ImageConfig(raw).user == "1000:1000"
    del raw["os"]
    with pytest.raises(ManifestError, match="image config: os is missing"):
        ImageConfig(raw)


def test_config_verifies_digest() -> None:
    with pytest.raises(DigestMismatch, match=r"^image config: expected sha256:"):
        parse_config(OCI_CONFIG_DOC, expected=Digest.of(b"other"))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d.pop("architecture"), "architecture is missing"),
        (lambda d: d.update(os=1), "os must be a string"),
        (lambda d: d.update(config=[]), "config must be an object"),
        (lambda d: d["config"].update(Env="A=1"), "config: Env must be a list of strings"),
        (lambda d: d["config"].update(Entrypoint=[1]), "Entrypoint must be a list of strings"),
        (lambda d: d["config"].update(User=0), "config: User must be a string"),
        (lambda d: d["config"].update(Labels={"a": 1}), "Labels must be an object"),
        (lambda d: d["config"].update(ExposedPorts=["80"]), "ExposedPorts must be an object"),
        (lambda d: d.pop("rootfs"), "rootfs must be an object"),
        (lambda d: d["rootfs"].update(type="bad"), "rootfs.type must be 'layers'"),
        (lambda d: d["rootfs"].update(diff_ids="x"), "rootfs.diff_ids must be a list"),
        (lambda d: d["rootfs"].update(diff_ids=["sha256:x"]), "rootfs.diff_ids[0]: invalid"),
        (lambda d: d.update(history=[1]), "history must be a list of objects"),
        (lambda d: d.__setitem__("os.features", "x"), "os.features must be a list"),
    ],
)
def test_malformed_configs(change: Any, fragment: str) -> None:
    doc = json.loads(OCI_CONFIG_DOC)
    change(doc)
    with pytest.raises(ManifestError) as info:
        parse_config(json.dumps(doc).encode(), where="config sha256:abc")
    assert str(info.value).startswith("config sha256:abc")
    assert fragment in str(info.value)


@pytest.mark.parametrize("doc", [b"[]", b"1", b"{", b"\xff"])
def test_config_must_be_json_object(doc: bytes) -> None:
    with pytest.raises(ManifestError, match=r"^image config"):
        parse_config(doc)


# -- media types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "compression"),
    [
        (mt.OCI_LAYER_TAR, "none"),
        (mt.OCI_LAYER_GZIP, "gzip"),
        (mt.OCI_LAYER_ZSTD, "zstd"),
        (mt.OCI_LAYER_NONDIST_TAR, "none"),
        (mt.OCI_LAYER_NONDIST_GZIP, "gzip"),
        (mt.OCI_LAYER_NONDIST_ZSTD, "zstd"),
        (mt.DOCKER_LAYER_GZIP, "gzip"),
        (mt.DOCKER_LAYER_FOREIGN_GZIP, "gzip"),
        ("application/vnd.docker.image.rootfs.diff.tar", "none"),
        (mt.DOCKER_LAYER_ZSTD, "zstd"),
    ],
)
def test_layer_compression(media_type: str, compression: str) -> None:
    assert mt.layer_compression(media_type) == compression
    assert mt.is_layer(media_type)


@pytest.mark.parametrize("media_type", [mt.OCI_CONFIG, mt.OCI_EMPTY, mt.OCI_MANIFEST, "x/y", ""])
def test_layer_compression_unknown(media_type: str) -> None:
    with pytest.raises(ManifestError, match=re.escape(repr(media_type))):
        mt.layer_compression(media_type)
    assert not mt.is_layer(media_type)


def test_media_type_sets() -> None:
    assert {mt.OCI_MANIFEST, mt.DOCKER_MANIFEST} == mt.MANIFEST_TYPES
    assert {mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST} == mt.INDEX_TYPES
    assert mt.MANIFEST_ACCEPT.split(", ") == [
        mt.OCI_INDEX,
        mt.OCI_MANIFEST,
        mt.DOCKER_MANIFEST_LIST,
        mt.DOCKER_MANIFEST,
    ]
    assert mt.OCI_EMPTY == "application/vnd.oci.empty.v1+json"


# -- property tests ------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "schemaVersion",
                    "mediaType",
                    "manifests",
                    "config",
                    "layers",
                    "digest",
                    "size",
                    "platform",
                    "os",
                    "architecture",
                    "annotations",
                    "subject",
                    "urls",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200)
    | _json.map(lambda v: json.dumps(v).encode())
    | st.sampled_from([OCI_INDEX_DOC, OCI_MANIFEST_DOC, DOCKER_MANIFEST_DOC]).flatmap(
        lambda doc: st.integers(0, len(doc)).map(lambda n: doc[:n])
    ),
    st.sampled_from([None, mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST_V1, "text/plain"]),
)
def test_parse_manifest_only_raises_manifest_errors(data: bytes, media_type: str | None) -> None:
    try:
        parsed = parse_manifest(data, media_type=media_type)
    except ManifestError:
        return
    assert parse_manifest(parsed.to_bytes()) == parsed


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100) | _json.map(lambda v: json.dumps(v).encode()))
def test_parse_manifest_with_expected_digest(data: bytes) -> None:
    with pytest.raises(DigestMismatch):
        parse_manifest(data + b" ", expected=Digest.of(data))
    try:
        parse_manifest(data, expected=Digest.of(data))
    except ManifestError:
        pass


@settings(max_examples=100, deadline=None)
@given(_json.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100))
def test_parse_config_only_raises_manifest_errors(data: bytes) -> None:
    try:
        parse_config(data)
    except ManifestError:
        pass
