"""Tests for lazyfs.oci.platform: parsing, normalisation, matching and manifest selection."""

from __future__ import annotations

import dataclasses

import pytest

from lazyfs.errors import ManifestError, PlatformNotFound
from lazyfs.oci import mediatypes as mt
from lazyfs.oci import platform as platform_module
from lazyfs.oci.digest import Digest
from lazyfs.oci.manifest import Descriptor
from lazyfs.oci.platform import Platform, select_manifest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/x86-64", Platform("linux", "amd64")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/amd64/v1", Platform("linux", "amd64")),
        ("linux/amd64/v3", Platform("linux", "amd64", "v3")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/8", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8.0", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8.2", Platform("linux", "arm64", "v8.2")),
        ("linux/arm", Platform("linux", "arm", "v7")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("linux/armel", Platform("linux", "arm", "v6")),
        ("linux/armv7l", Platform("linux", "arm", "v7")),
        ("linux/armv6l", Platform("linux", "arm", "v6")),
        ("linux/i386", Platform("linux", "386")),
        ("linux/i686", Platform("linux", "386")),
        ("linux/386", Platform("linux", "386")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("linux/s390x", Platform("linux", "s390x")),
        ("linux/riscv64", Platform("linux", "riscv64")),
        ("windows/amd64", Platform("windows", "amd64")),
        ("macos/arm64", Platform("darwin", "arm64", "v8")),
    ],
)
def test_parse_normalises(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "linux",
        "linux/",
        "/amd64",
        "linux//v7",
        "linux/arm/v7/extra",
        "linux amd64",
        "linux/amd 64",
        "linux/arm/",
        "linux/-x",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected os/arch or os/arch/variant") as info:
        Platform.parse(text)
    assert repr(text) in str(info.value)


def test_str() -> None:
    assert str(Platform.parse("linux/aarch64")) == "linux/arm64/v8"
    assert str(Platform("linux", "amd64")) == "linux/amd64"
    assert str(Platform("linux", "arm", "v6")) == "linux/arm/v6"


def test_normalized_keeps_os_fields() -> None:
    p = Platform("Windows", "x86_64", None, "10.0.17763.1", ("win32k",))
    assert p.normalized() == Platform("windows", "amd64", None, "10.0.17763.1", ("win32k",))


def test_os_features_become_a_tuple() -> None:
    p = Platform("linux", "amd64", os_features=["a"])  # type: ignore[arg-type]
    assert p.os_features == ("a",)
    assert hash(p) == hash(Platform("linux", "amd64", os_features=("a",)))


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Platform("linux", "amd64").os = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64/v8"),
        ("arm64", "linux/arm64/v8"),
        ("armv7l", "linux/arm/v7"),
        ("armv6l", "linux/arm/v6"),
        ("i686", "linux/386"),
        ("ppc64le", "linux/ppc64le"),
        ("s390x", "linux/s390x"),
    ],
)
def test_host(monkeypatch: pytest.MonkeyPatch, machine: str, expected: str) -> None:
    monkeypatch.setattr(platform_module._host_platform, "machine", lambda: machine)
    assert str(Platform.host()) == expected


def test_host_real_machine() -> None:
    assert Platform.host().os == "linux"
    assert Platform.host() == Platform.host().normalized()


def test_json_round_trip() -> None:
    data = {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.17763.1757",
        "os.features": ["win32k"],
        "variant": "v2",
    }
    p = Platform.from_json(data)
    assert p == Platform("windows", "amd64", "v2", "10.0.17763.1757", ("win32k",))
    assert p.to_json() == data
    assert Platform.from_json({"os": "linux", "architecture": "arm64"}).to_json() == {
        "architecture": "arm64",
        "os": "linux",
    }


def test_from_json_does_not_normalise() -> None:
    p = Platform.from_json({"os": "linux", "architecture": "aarch64"})
    assert p == Platform("linux", "aarch64")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([], "must be a JSON object"),
        ({"architecture": "amd64"}, "os must be a non-empty string"),
        ({"os": "linux"}, "architecture must be a non-empty string"),
        ({"os": "linux", "architecture": 1}, "architecture must be"),
        ({"os": "linux", "architecture": ""}, "architecture must be"),
        ({"os": "linux", "architecture": "arm", "variant": 7}, "variant must be a string"),
        ({"os": "linux", "architecture": "a", "os.features": "x"}, "os.features"),
        ({"os": "linux", "architecture": "a", "os.features": [1]}, "os.features"),
    ],
)
def test_from_json_rejects(data: object, fragment: str) -> None:
    with pytest.raises(ManifestError) as info:
        Platform.from_json(data, "index manifests[3] platform")  # type: ignore[arg-type]
    assert str(info.value).startswith("index manifests[3] platform: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("wanted", "other", "result"),
    [
        (Platform("linux", "amd64"), Platform("linux", "x86_64"), True),
        (Platform("linux", "amd64"), Platform("linux", "amd64", "v3"), True),
        (Platform("linux", "amd64"), Platform("linux", "arm64"), False),
        (Platform("linux", "amd64"), Platform("windows", "amd64"), False),
        (Platform("linux", "arm64"), Platform("linux", "arm64", "v8"), True),
        (Platform("linux", "arm64", "v8"), Platform("linux", "arm64"), True),
        (Platform("linux", "arm64", "v8"), Platform("linux", "aarch64", "8"), True),
        (Platform("linux", "arm64", "v8"), Platform("linux", "arm64", "v9"), False),
        (Platform("linux", "arm", "v7"), Platform("linux", "arm"), True),
        (Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6"), False),
        (Platform("linux", "arm"), Platform("linux", "arm", "v6"), True),
        (Platform.parse("linux/arm64"), Platform("linux", "arm64"), True),
        (Platform.parse("linux/amd64"), Platform("linux", "amd64", "v1"), True),
    ],
)
def test_matches(wanted: Platform, other: Platform, result: bool) -> None:
    assert wanted.matches(other) is result


# -- select_manifest --------------------------------------------------------------------------


def _entry(
    n: int,
    platform: Platform | None,
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    return Descriptor(
        media_type=mt.OCI_MANIFEST,
        digest=Digest.of(str(n).encode()),
        size=100 + n,
        annotations=annotations or {},
        platform=platform,
    )


def _p(text: str) -> Platform:
    os, arch, *variant = text.split("/")
    return Platform(os, arch, variant[0] if variant else None)


DOCKER_HUB_LIKE = [
    _entry(0, _p("linux/amd64")),
    _entry(1, _p("linux/arm/v5")),
    _entry(2, _p("linux/arm/v7")),
    _entry(3, _p("linux/arm64/v8")),
    _entry(4, _p("linux/386")),
    _entry(5, _p("linux/ppc64le")),
    _entry(6, _p("unknown/unknown"), {"vnd.docker.reference.type": "attestation-manifest"}),
    _entry(7, _p("unknown/unknown"), {"vnd.docker.reference.type": "attestation-manifest"}),
]


@pytest.mark.parametrize(
    ("wanted", "index"),
    [
        ("linux/amd64", 0),
        ("linux/x86_64", 0),
        ("linux/arm64", 3),
        ("linux/arm64/v8", 3),
        ("linux/aarch64", 3),
        ("linux/arm", 2),
        ("linux/arm/v7", 2),
        ("linux/arm/v6", 1),  # v5 runs on v6; v7 does not
        ("linux/arm/v8", 2),  # 32-bit arm v8 runs v7 code
        ("linux/i686", 4),
        ("linux/ppc64le", 5),
    ],
)
def test_select_from_docker_hub_like_index(wanted: str, index: int) -> None:
    assert select_manifest(DOCKER_HUB_LIKE, Platform.parse(wanted)) is DOCKER_HUB_LIKE[index]


def test_select_prefers_exact_variant_over_earlier_compatible() -> None:
    entries = [_entry(0, _p("linux/arm/v6")), _entry(1, _p("linux/arm/v7"))]
    assert select_manifest(entries, Platform.parse("linux/arm/v7")) is entries[1]


def test_select_picks_highest_compatible_variant() -> None:
    entries = [
        _entry(0, _p("linux/arm/v5")),
        _entry(1, _p("linux/arm/v6")),
        _entry(2, _p("linux/arm/v8")),
    ]
    assert select_manifest(entries, Platform.parse("linux/arm/v7")) is entries[1]


def test_select_first_of_equal_entries() -> None:
    entries = [_entry(0, _p("linux/amd64")), _entry(1, _p("linux/amd64"))]
    assert select_manifest(entries, Platform.parse("linux/amd64")) is entries[0]


def test_select_arm64_without_variant_in_index() -> None:
    entries = [_entry(0, _p("linux/amd64")), _entry(1, _p("linux/arm64"))]
    assert select_manifest(entries, Platform.parse("linux/arm64/v8")) is entries[1]
    assert select_manifest(entries, Platform("linux", "arm64")) is entries[1]


def test_select_arm64_higher_variant_is_not_compatible() -> None:
    entries = [_entry(0, _p("linux/arm64/v9"))]
    with pytest.raises(PlatformNotFound, match="available: linux/arm64/v9"):
        select_manifest(entries, Platform.parse("linux/arm64"))
    assert select_manifest(entries, Platform.parse("linux/arm64/v9")) is entries[0]
    assert select_manifest([_entry(1, _p("linux/arm64/v8"))], Platform.parse("linux/arm64/v9"))


def test_select_amd64_micro_architecture_levels() -> None:
    entries = [_entry(0, _p("linux/amd64/v3")), _entry(1, _p("linux/amd64/v2"))]
    assert select_manifest(entries, Platform.parse("linux/amd64/v3")) is entries[0]
    assert select_manifest(entries, Platform.parse("linux/amd64/v4")) is entries[0]
    assert select_manifest(entries, Platform.parse("linux/amd64/v2")) is entries[1]
    with pytest.raises(PlatformNotFound):
        select_manifest(entries, Platform.parse("linux/amd64"))
    baseline = [*entries, _entry(2, _p("linux/amd64"))]
    assert select_manifest(baseline, Platform.parse("linux/amd64")) is baseline[2]


def test_select_unordered_architecture_without_variant_takes_any() -> None:
    entries = [_entry(0, _p("linux/riscv64/rva22u64"))]
    assert select_manifest(entries, Platform.parse("linux/riscv64")) is entries[0]
    with pytest.raises(PlatformNotFound):
        select_manifest(entries, Platform.parse("linux/riscv64/rva23u64"))


def test_select_skips_entries_without_platform() -> None:
    entries = [_entry(0, None), _entry(1, _p("linux/amd64"))]
    assert select_manifest(entries, Platform.parse("linux/amd64")) is entries[1]


def test_select_skips_attestations() -> None:
    by_annotation = _entry(
        0, _p("linux/amd64"), {"vnd.docker.reference.type": "attestation-manifest"}
    )
    real = _entry(1, _p("linux/amd64"))
    assert select_manifest([by_annotation, real], Platform.parse("linux/amd64")) is real
    with pytest.raises(PlatformNotFound, match="available: none"):
        select_manifest([by_annotation], Platform.parse("linux/amd64"))


def test_select_error_lists_available_platforms() -> None:
    entries = [
        _entry(0, _p("linux/amd64")),
        _entry(1, _p("linux/arm64/v8")),
        _entry(2, _p("linux/amd64")),
        _entry(3, _p("unknown/unknown")),
        _entry(4, None),
    ]
    with pytest.raises(PlatformNotFound) as info:
        select_manifest(entries, Platform.parse("linux/s390x"))
    assert str(info.value) == (
        "no manifest for linux/s390x in index; available: linux/amd64, linux/arm64/v8"
    )


def test_select_empty_index() -> None:
    with pytest.raises(PlatformNotFound, match="no manifest for linux/amd64 in index"):
        select_manifest([], Platform.parse("linux/amd64"))


def test_select_does_not_cross_os() -> None:
    entries = [_entry(0, _p("windows/amd64"))]
    with pytest.raises(PlatformNotFound, match="available: windows/amd64"):
        select_manifest(entries, Platform.parse("linux/amd64"))
