"""``open_image``: resolve, index and merge, against the real registry (no mount).

The layers' indexes are read while the image config is still coming; the config's diff IDs
still check a layer that has to be streamed whole.
"""

from __future__ import annotations

import inspect
import json
import uuid

import pytest
import trio

from lazyfs.convert import ConvertOptions, convert_image
from lazyfs.errors import LazyfsError
from lazyfs.fs.image import MountOptions, open_image
from lazyfs.oci.reference import Reference
from lazyfs.oci.registry import RegistryClient
from lazyfs.oci.store import open_store
from lazyfs.progress import NullProgress
from tests.harness.images import Blob, BuiltImage, Entry, build_image, push_image

FILES = [Entry("etc", kind="dir"), Entry("etc/motd", data=b"hello\n" * 100)]


class _RecordingReader:
    """A blob reader that notes each read (its async methods) in ``events``."""

    def __init__(self, inner, events: list[str]) -> None:
        self._inner, self._events = inner, events

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def wrapped(*args, **kwargs):
            self._events.append("layer read")
            return await attr(*args, **kwargs)

        return wrapped


async def _push(registry, image: BuiltImage, client: RegistryClient) -> str:
    ref = Reference.parse(f"{registry.host}/image/{uuid.uuid4().hex[:8]}:v1")
    await push_image(client, ref, image)
    return str(ref)


def test_the_indexes_are_read_while_the_config_comes(registry, tmp_path):
    async def main():
        async with RegistryClient() as client:
            src = await _push(registry, build_image([FILES]), client)
            dst = src.rsplit(":", 1)[0] + "-zstd:v1"
            await convert_image(
                open_store(src, client), open_store(dst, client), ConvertOptions(), NullProgress()
            )
            events: list[str] = []
            get_blob = client.get_blob

            async def slow_config(*args, **kwargs):  # only the config is fetched with this
                events.append("config asked")
                await trio.sleep(0.3)
                data = await get_blob(*args, **kwargs)
                events.append("config in")
                return data

            client.get_blob = slow_config
            store = open_store(dst, client)
            blob_reader = store.blob_reader
            store.blob_reader = lambda desc: _RecordingReader(blob_reader(desc), events)
            image = await open_image(store, MountOptions(cache_dir=tmp_path / "cache"))
            try:
                assert image.tree.lookup(1, b"etc") is not None
            finally:
                image.close()
            assert events[0] == "config asked"
            assert "layer read" in events[: events.index("config in")], events
            # The TOC came within the config's 0.3 s: what is left of indexing after it is
            # small (what the verbose "index" phase shows).
            assert image.timings["resolve"] >= 0.3
            assert image.timings["index"] < image.timings["resolve"]

    trio.run(main)


def test_a_store_that_does_not_report_its_manifest_early_still_works(registry, tmp_path):
    class Late:
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        async def resolve(self, platform=None, *, on_manifest=None):
            return await self.inner.resolve(platform)  # never calls on_manifest

    async def main():
        async with RegistryClient() as client:
            ref = await _push(registry, build_image([FILES]), client)
            image = await open_image(
                Late(open_store(ref, client)), MountOptions(cache_dir=tmp_path / "cache")
            )
            try:
                assert image.tree.lookup(1, b"etc") is not None
            finally:
                image.close()

    trio.run(main)


def test_a_streamed_layer_is_still_checked_against_the_config_diff_id(registry, tmp_path):
    # A gzip layer has no index: it is streamed whole and indexed, and its tar must hash to
    # the config's diff ID, which arrives while the layer is being read.
    good = build_image([FILES])
    other = build_image([[*FILES, Entry("etc/other", data=b"x")]])
    manifest = json.loads(good.manifest.data)
    manifest["config"] = other.config.descriptor()
    bad = BuiltImage(
        good.layers,
        other.config,
        Blob(good.manifest.media_type, json.dumps(manifest).encode()),
        other.diff_ids,
    )

    async def main():
        async with RegistryClient() as client:
            ref = await _push(registry, bad, client)
            with pytest.raises(LazyfsError, match="diff ID"):
                await open_image(open_store(ref, client), MountOptions(cache_dir=tmp_path / "c"))
            ref = await _push(registry, good, client)
            image = await open_image(
                open_store(ref, client), MountOptions(cache_dir=tmp_path / "d")
            )
            image.close()

    trio.run(main)
