"""Checks that a layer index describes exactly what a plain read of the layer's tar gives.

Used by the tests of every format reader: read each regular file's bytes through the index
alone (chunk ranges fetched from the blob, decoded and verified), and compare them, and the
metadata, with Python's own reading of the uncompressed tar.
"""

from __future__ import annotations

import io
import tarfile

from lazyfs.formats.chunks import decode_chunk
from lazyfs.formats.model import Entry, EntryType, LayerIndex, normalize_path
from lazyfs.oci.blobs import BlobReader

_KIND = {
    tarfile.REGTYPE: EntryType.REG,
    tarfile.AREGTYPE: EntryType.REG,
    tarfile.CONTTYPE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}


async def read_entry(blob: BlobReader, entry: Entry) -> bytes:
    """A regular file's whole content, read through its chunks alone."""
    ranges = [(c.blob_offset, c.blob_length) for c in entry.chunks]
    datas = await blob.read_ranges(ranges)
    out = bytearray()
    for chunk, data in zip(entry.chunks, datas, strict=True):
        assert chunk.file_offset == len(out), (entry.path, chunk.file_offset, len(out))
        out += decode_chunk(chunk, data, what=f"{entry.path}@{chunk.file_offset}")
    assert len(out) == entry.size, (entry.path, len(out), entry.size)
    return bytes(out)


def tar_members(tar: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """Each member of an uncompressed tar by normalised path: (info, content)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for info in tf:
            data = tf.extractfile(info).read() if info.isreg() else b""
            out[normalize_path(info.name, layer="test")] = (info, data)
    return out


async def assert_index_matches_tar(
    blob: BlobReader, index: LayerIndex, tar: bytes, *, check_owner_names: bool = True
) -> int:
    """Every entry of ``tar`` is in ``index`` with the same metadata and content.

    Returns the number of regular files whose content was compared.
    """
    members = tar_members(tar)
    entries = {e.path: e for e in index.entries}
    missing = sorted(set(members) - set(entries) - {""})
    assert not missing, f"entries missing from the index: {missing[:10]}"
    extra = sorted(set(entries) - set(members))
    assert not extra, f"entries in the index but not in the tar: {extra[:10]}"
    compared = 0
    for path, (info, data) in members.items():
        if path == "":
            continue
        e = entries[path]
        assert e.type == _KIND[info.type], (path, e.type, info.type)
        assert e.mode == info.mode & 0o7777, (path, oct(e.mode), oct(info.mode))
        assert (e.uid, e.gid) == (info.uid, info.gid), path
        if check_owner_names:
            assert (e.uname, e.gname) == (info.uname, info.gname), path
        assert e.mtime_ns // 1_000_000_000 == int(info.mtime), (path, e.mtime_ns, info.mtime)
        if info.issym():
            assert e.link == info.linkname, path
        if info.islnk():
            assert e.link == normalize_path(info.linkname, layer="test"), path
        if info.ischr() or info.isblk():
            assert (e.dev_major, e.dev_minor) == (info.devmajor, info.devminor), path
        xattrs = {
            k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
            for k, v in info.pax_headers.items()
            if k.startswith("SCHILY.xattr.")
        }
        assert e.xattrs == xattrs, (path, e.xattrs, xattrs)
        if info.isreg():
            assert e.size == len(data), path
            assert await read_entry(blob, e) == data, path
            compared += 1
    return compared
