"""Snapshots of a directory tree's metadata and content, and their comparison.

Used to check that two ways of materialising an image give the same file system: umoci's
unpack of an original and of a converted image, and (later) a lazyfs FUSE mount against
umoci's unpack.

:func:`snapshot_tree` walks a tree with ``lstat`` only (it never follows a symlink and never
leaves the root, nor crosses into another file system unless asked) and records, per path
relative to the root (the root itself is ``"."``), a :class:`NodeInfo`.
:func:`compare_trees` lists the differences between two snapshots as readable lines, and
:func:`assert_same_tree` fails with the first of them.

Hardlinks are recorded as groups of paths (those of the tree sharing an inode), so snapshots
of different file systems compare equal whatever their inode numbers.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import hashlib
import os
import stat
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

__all__ = [
    "FIELDS",
    "HOST_XATTRS",
    "NodeInfo",
    "Tree",
    "assert_same_tree",
    "compare_trees",
    "format_node",
    "snapshot_tree",
]

#: xattrs a host may put on files by itself (SELinux labels, IMA/EVM, AppArmor): not content.
HOST_XATTRS: tuple[str, ...] = (
    "security.selinux",
    "security.ima",
    "security.evm",
    "security.apparmor",
)

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class NodeInfo:
    """What a tree holds at one path.

    ``size`` and ``sha256`` are set for regular files only, ``target`` for symlinks only,
    ``rdev`` (major, minor) for character and block devices only. ``hardlinks`` is the set of
    paths of the tree sharing this node's inode (itself included) when there are two or more,
    else None. ``mtime`` is whole seconds (floor), ``mtime_ns`` the full timestamp.
    """

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    mtime_ns: int
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    hardlinks: frozenset[str] | None = None


#: A snapshot: relative path -> node, the root being ``"."``.
Tree = dict[str, NodeInfo]

#: The fields :func:`compare_trees` compares (and that ``ignore`` may name).
FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(NodeInfo) if f.name not in ("path", "kind", "mtime_ns")
)


def _sha256(path: str) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        # O_NOATIME is refused on files of other users when not root.
        fd = os.open(path, flags)
    h = hashlib.sha256()
    with open(fd, "rb") as f:
        while piece := f.read(1 << 20):
            h.update(piece)
    return h.hexdigest()


def _xattrs(path: str, ignore: tuple[str, ...]) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return {}
        raise
    out = {}
    for name in sorted(names):
        if name.startswith(ignore):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed meanwhile
                continue
            raise
    return out


def snapshot_tree(
    root: str | os.PathLike[str],
    *,
    ignore_xattrs: Iterable[str] = HOST_XATTRS,
    hash_content: bool = True,
    one_file_system: bool = True,
) -> Tree:
    """Every node under ``root`` (``root`` itself as ``"."``), never following symlinks.

    ``ignore_xattrs``: prefixes of xattr names not to record (default :data:`HOST_XATTRS`;
    pass ``("security.",)`` to drop every security xattr). ``hash_content=False`` skips
    reading regular files. With ``one_file_system``, directories on another device than the
    root are recorded but not entered.
    """
    root = os.fspath(root)
    prefixes = tuple(ignore_xattrs)
    top = os.lstat(root)
    if not stat.S_ISDIR(top.st_mode):
        raise NotADirectoryError(root)
    tree: Tree = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    stack = [(".", root, top)]
    while stack:
        rel, full, st = stack.pop()
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), f"unknown-{stat.S_IFMT(st.st_mode):o}")
        info: dict = {
            "path": rel,
            "kind": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime_ns // 1_000_000_000,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": _xattrs(full, prefixes),
        }
        if kind == "file":
            info["size"] = st.st_size
            if hash_content:
                info["sha256"] = _sha256(full)
        elif kind == "symlink":
            info["target"] = os.readlink(full)
        elif kind in ("char", "block"):
            info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if kind != "dir":
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        tree[rel] = NodeInfo(**info)
        if kind == "dir" and (not one_file_system or st.st_dev == top.st_dev or rel == "."):
            with os.scandir(full) as it:
                children = sorted(it, key=lambda e: e.name)
            for entry in reversed(children):
                child = entry.name if rel == "." else f"{rel}/{entry.name}"
                stack.append((child, entry.path, entry.stat(follow_symlinks=False)))
    for paths in inodes.values():
        if len(paths) > 1:
            group = frozenset(paths)
            for p in paths:
                tree[p] = dataclasses.replace(tree[p], hardlinks=group)
    return tree


def format_node(node: NodeInfo) -> str:
    """One ``ls -l``-like line for ``node``."""
    extra = ""
    if node.kind == "file":
        extra = f" size={node.size}" + (f" sha256={node.sha256[:12]}" if node.sha256 else "")
    elif node.kind == "symlink":
        extra = f" -> {node.target!r}"
    elif node.rdev is not None:
        extra = f" dev={node.rdev[0]}:{node.rdev[1]}"
    if node.xattrs:
        extra += f" xattrs={sorted(node.xattrs)}"
    if node.hardlinks:
        extra += f" links={sorted(node.hardlinks)}"
    return (
        f"{node.kind} {node.mode:04o} {node.uid}:{node.gid} mtime={node.mtime_ns / 1e9:.9f}"
        f"{extra} {node.path!r}"
    )


def _show(name: str, value) -> str:
    if name == "mode":
        return f"{value:04o}"
    if name == "mtime":
        return str(value)
    if name == "xattrs":
        return repr(dict(sorted(value.items())))
    if name == "hardlinks":
        return repr(sorted(value)) if value else "none"
    return repr(value)


def compare_trees(
    a: Tree,
    b: Tree,
    *,
    ignore: Collection[str | tuple[str, str]] = (),
    ignore_paths: Iterable[str] = (),
    ignore_root: bool = False,
    exact_mtime: bool = False,
    names: tuple[str, str] = ("a", "b"),
) -> list[str]:
    """The differences between two snapshots, one readable line each (empty when equal).

    ``ignore``: fields of :data:`FIELDS` not to compare, each for every node (``"mtime"``),
    for one kind of node (``"dir:mtime"``, ``"symlink:mode"``), or for the paths matching an
    :mod:`fnmatch` pattern (``("implicit/*", "mtime")``).
    ``ignore_paths``: :mod:`fnmatch` patterns of paths left out entirely.
    ``ignore_root``: leave out the root directory's own metadata (its contents still count).
    ``exact_mtime``: compare modification times to the nanosecond, not the second.
    """
    patterns = tuple(ignore_paths)
    everywhere: set[str] = set()
    by_kind: set[tuple[str, str]] = set()
    by_path: list[tuple[str, str]] = []
    for item in ignore:
        if isinstance(item, tuple):
            pattern, name = item
            by_path.append((pattern, name))
        else:
            kind, _, name = item.rpartition(":")
            if kind:
                by_kind.add((kind, name))
            else:
                everywhere.add(name)
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r} in ignore (known: {', '.join(FIELDS)})")

    def skipped(path: str) -> bool:
        return (ignore_root and path == ".") or any(fnmatch.fnmatchcase(path, p) for p in patterns)

    def ignored(node: NodeInfo, name: str) -> bool:
        return (
            name in everywhere
            or (node.kind, name) in by_kind
            or any(n == name and fnmatch.fnmatchcase(node.path, p) for p, n in by_path)
        )

    na, nb = names
    out: list[str] = []
    for path in sorted(a.keys() | b.keys()):
        if skipped(path):
            continue
        x, y = a.get(path), b.get(path)
        if x is None or y is None:
            present, node = (na, x) if y is None else (nb, y)
            out.append(f"{path!r}: only in {present} ({format_node(node)})")
            continue
        if x.kind != y.kind:
            out.append(f"{path!r}: {x.kind} in {na}, {y.kind} in {nb}")
            continue
        for name in FIELDS:
            if ignored(x, name):
                continue
            if name == "mtime" and exact_mtime:
                va, vb = f"{x.mtime_ns}ns", f"{y.mtime_ns}ns"
            elif name == "hardlinks":
                # Only links to paths both sides compare count.
                va = frozenset(p for p in x.hardlinks or () if not skipped(p))
                vb = frozenset(p for p in y.hardlinks or () if not skipped(p))
            else:
                va, vb = getattr(x, name), getattr(y, name)
            if va != vb:
                if name == "sha256":
                    out.append(f"{path!r}: content differs ({na} {va}, {nb} {vb})")
                else:
                    shown = _show(name, va), _show(name, vb)
                    out.append(f"{path!r}: {name} {shown[0]} in {na}, {shown[1]} in {nb}")
    return out


def assert_same_tree(
    a: Tree | str | os.PathLike[str],
    b: Tree | str | os.PathLike[str],
    *,
    limit: int = 20,
    ignore_xattrs: Iterable[str] = HOST_XATTRS,
    **options,
) -> None:
    """Fail, listing the first ``limit`` differences, unless the two trees are the same.

    ``a`` and ``b`` are snapshots or directories (snapshotted with ``ignore_xattrs``);
    ``options`` are those of :func:`compare_trees`.
    """
    prefixes = tuple(ignore_xattrs)
    ta = a if isinstance(a, dict) else snapshot_tree(Path(a), ignore_xattrs=prefixes)
    tb = b if isinstance(b, dict) else snapshot_tree(Path(b), ignore_xattrs=prefixes)
    diffs = compare_trees(ta, tb, **options)
    if diffs:
        names = options.get("names", ("a", "b"))
        lines = [f"{len(diffs)} difference(s) between {names[0]} and {names[1]}:"]
        lines += [f"  {d}" for d in diffs[:limit]]
        if len(diffs) > limit:
            lines.append(f"  ... and {len(diffs) - limit} more")
        raise AssertionError("\n".join(lines))
