"""The OCI image model and the registry client.

Most callers need only what is re-exported here::

    from lazyfs.oci import Reference, RegistryClient, Platform

    async with RegistryClient() as client:
        image = await client.resolve(Reference.parse("localhost:5000/app:1.0"))
        data = await client.fetch_range(image.reference, image.manifest.layers[0].digest, 0, 4096)
"""

from .credentials import Credentials, CredentialStore
from .digest import Digest, Verifier
from .hosts import HostPolicy, HostSettings
from .manifest import (
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from .platform import Platform, select_manifest
from .reference import Reference
from .registry import FetchedManifest, RegistryClient, ResolvedImage, TransferStats
from .retry import RetryPolicy

__all__ = [
    "CredentialStore",
    "Credentials",
    "Descriptor",
    "Digest",
    "FetchedManifest",
    "HostPolicy",
    "HostSettings",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "Platform",
    "Reference",
    "RegistryClient",
    "ResolvedImage",
    "RetryPolicy",
    "TransferStats",
    "Verifier",
    "parse_config",
    "parse_manifest",
    "select_manifest",
]
