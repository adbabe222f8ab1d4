"""What a program needs to start, found in a merged tree before it is executed.

``lazyfs run`` knows the command it is about to run long before the container executes it:
the image is merged, then mounted, then the container is set up (the overlay, the
namespaces, ``pivot_root``), and only then does ``execve`` open the program, the kernel
load its ELF interpreter, and the interpreter open each shared library, one after the
other, each open waiting for its file to come from the registry. :func:`prefetch_program`
starts fetching all of them as soon as the mount is up, while the container is being set
up: the program (found through the container's ``PATH`` as ``execvp`` would), its ELF
interpreter (``PT_INTERP``) and the libraries it needs (``DT_NEEDED``, looked up in its
``DT_RUNPATH``/``DT_RPATH`` and the usual library directories), and theirs in turn. Each
file is fetched whole (the kernel maps these files and faults their pages in).

Everything here is a hint: a name not found, a file that is not ELF or is malformed, a
read that fails, all just mean less is prefetched; the reads the program then makes are
served as any other. Paths are resolved inside the tree only (symlinks with absolute
targets are taken from the tree's root, as in the container), never on the host.
"""

from __future__ import annotations

import logging
import stat
import struct
from collections.abc import Awaitable, Callable, Iterable

from ..errors import LazyfsError
from .tree import ROOT_INODE, MergedTree

__all__ = ["elf_dependencies", "find_program", "library_dirs", "prefetch_program", "resolve"]

log = logging.getLogger("lazyfs.programs")

#: Symlinks followed while resolving one path (Linux's limit).
MAX_SYMLINKS = 40
#: Files :func:`prefetch_program` starts fetching for one program, at most.
MAX_FILES = 64
#: The most of an ELF file's headers, dynamic section or string table read to parse it.
MAX_TABLE_BYTES = 1024 * 1024

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29

#: Reads ``size`` bytes at ``offset`` of a regular file of the tree (short at its end).
Reader = Callable[[int, int, int], Awaitable[bytes]]


def _is_dir(tree: MergedTree, ino: int) -> bool:
    return stat.S_ISDIR(tree.attr(ino).mode)


def resolve(tree: MergedTree, path: str, *, cwd: str = "/") -> int | None:
    """The inode ``path`` names in ``tree``, symlinks followed (the last one too), or None.

    A relative ``path`` is taken from ``cwd``. ``..`` of the root is the root, and an
    absolute symlink target starts again at the tree's root, as inside the container.
    """
    if not path.startswith("/"):
        path = cwd.rstrip("/") + "/" + path
    pending = [p for p in path.encode("utf-8", "surrogateescape").split(b"/") if p]
    pending.reverse()
    stack = [ROOT_INODE]  # the directories from the root to where we are
    links = 0
    while pending:
        name = pending.pop()
        if name == b".":
            continue
        if name == b"..":
            if len(stack) > 1:
                stack.pop()
            continue
        child = tree.lookup(stack[-1], name)
        if child is None:
            return None
        mode = tree.attr(child).mode
        if stat.S_ISLNK(mode):
            links += 1
            if links > MAX_SYMLINKS:
                return None
            target = tree.readlink(child)
            if target.startswith(b"/"):
                stack = [ROOT_INODE]
            parts = [p for p in target.split(b"/") if p]
            pending.extend(reversed(parts))
            continue
        if pending and not stat.S_ISDIR(mode):
            return None
        stack.append(child)
    return stack[-1]


def _regular(tree: MergedTree, ino: int | None, *, executable: bool = False) -> bool:
    if ino is None:
        return False
    mode = tree.attr(ino).mode
    return stat.S_ISREG(mode) and (not executable or bool(mode & 0o111))


def find_program(tree: MergedTree, name: str, search_path: str, *, cwd: str = "/") -> int | None:
    """The executable regular file ``execvp(name)`` would run, with ``PATH=search_path``."""
    if "/" in name:
        ino = resolve(tree, name, cwd=cwd)
        return ino if _regular(tree, ino, executable=True) else None
    for directory in search_path.split(":"):
        ino = resolve(tree, f"{directory or '.'}/{name}", cwd=cwd)
        if _regular(tree, ino, executable=True):
            return ino
    return None


def library_dirs(tree: MergedTree) -> list[str]:
    """The directories the dynamic loader searches by default, as far as the tree has them:
    the multiarch ones (``/lib/x86_64-linux-gnu``...) first, then ``/lib64``, ``/usr/lib64``,
    ``/lib``, ``/usr/lib``; each directory once (``/lib`` is often ``/usr/lib``)."""
    candidates = []
    for base in ("/lib", "/usr/lib"):
        ino = resolve(tree, base)
        if ino is not None and _is_dir(tree, ino):
            candidates += [
                f"{base}/{name.decode('utf-8', 'surrogateescape')}"
                for name, _child in tree.children(ino)
                if b"-linux-" in name
            ]
    candidates += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    found, seen = [], set()
    for directory in candidates:
        ino = resolve(tree, directory)
        if ino is not None and ino not in seen and _is_dir(tree, ino):
            seen.add(ino)
            found.append(directory)
    return found


async def elf_dependencies(read: Reader, ino: int) -> tuple[str | None, list[str], list[str]]:
    """``(interpreter, needed, search_dirs)`` of ELF file ``ino``: its ``PT_INTERP`` path
    (None if it has none), its ``DT_NEEDED`` names and its ``DT_RUNPATH`` (else
    ``DT_RPATH``) directories, ``$ORIGIN`` left in. ValueError if it is not ELF or
    its tables cannot be read."""
    ident = await read(ino, 0, 64)
    if (
        len(ident) < 52
        or ident[:4] != b"\x7fELF"
        or ident[4] not in (1, 2)
        or ident[5] not in (1, 2)
    ):
        raise ValueError("not an ELF file")
    wide = ident[4] == 2
    order = "<" if ident[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", ident, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", ident, 0x36)
        phdr = struct.Struct(order + "IIQQQQQQ")
    else:
        (phoff,) = struct.unpack_from(order + "I", ident, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", ident, 0x2A)
        phdr = struct.Struct(order + "IIIIIIII")
    if phentsize < phdr.size or phnum * phentsize > MAX_TABLE_BYTES:
        raise ValueError("bad program headers")
    table = await read(ino, phoff, phnum * phentsize)
    if len(table) < phnum * phentsize:
        raise ValueError("truncated program headers")
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    interp = dynamic = None
    for k in range(phnum):
        fields = phdr.unpack_from(table, k * phentsize)
        if wide:
            p_type, _flags, offset, vaddr, _paddr, filesz = fields[:6]
        else:
            p_type, offset, vaddr, _paddr, filesz = fields[:5]
        if p_type == _PT_LOAD:
            loads.append((vaddr, filesz, offset))
        elif p_type == _PT_INTERP:
            interp = (offset, min(filesz, 4096))
        elif p_type == _PT_DYNAMIC:
            dynamic = (offset, min(filesz, MAX_TABLE_BYTES))
    interpreter = None
    if interp is not None:
        raw = await read(ino, *interp)
        interpreter = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape") or None
    if dynamic is None:
        return interpreter, [], []
    entries = await read(ino, *dynamic)
    dyn = struct.Struct(order + ("qQ" if wide else "iI"))
    values: dict[int, list[int]] = {}
    for k in range(len(entries) // dyn.size):
        tag, value = dyn.unpack_from(entries, k * dyn.size)
        if tag == _DT_NULL:
            break
        if tag in (_DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH):
            values.setdefault(tag, []).append(value)
    if _DT_STRTAB not in values:
        return interpreter, [], []
    address = values[_DT_STRTAB][0]
    strtab = next(
        (off + address - vaddr for vaddr, size, off in loads if vaddr <= address < vaddr + size),
        None,
    )
    if strtab is None:
        raise ValueError("the string table is in no loaded segment")
    strsz = min(values.get(_DT_STRSZ, [MAX_TABLE_BYTES])[0], MAX_TABLE_BYTES)
    strings = await read(ino, strtab, strsz)

    def string(at: int) -> str:
        return strings[at : strings.find(b"\0", at)].decode("utf-8", "surrogateescape")

    needed = [string(at) for at in values.get(_DT_NEEDED, []) if at < len(strings)]
    paths = values.get(_DT_RUNPATH) or values.get(_DT_RPATH) or []
    dirs = [d for at in paths if at < len(strings) for d in string(at).split(":") if d]
    return interpreter, [n for n in needed if n], dirs


def _find_library(tree: MergedTree, name: str, dirs: Iterable[str]) -> int | None:
    if "/" in name:
        ino = resolve(tree, name)
        return ino if _regular(tree, ino) else None
    for directory in dirs:
        ino = resolve(tree, f"{directory}/{name}")
        if _regular(tree, ino):
            return ino
    return None


async def prefetch_program(
    tree: MergedTree,
    read: Reader,
    fetch_whole: Callable[[int], object],
    name: str,
    search_path: str,
    *,
    cwd: str = "/",
) -> list[int]:
    """Start fetching program ``name`` and what it loads (see the module's docstring).

    ``fetch_whole(ino)`` starts fetching a file whole in the background; ``read`` reads
    the headers it parses (from what that fetch brings). Returns the inodes it started,
    in order: the program first. Never raises for what it finds in the tree.
    """
    started: list[int] = []
    program = find_program(tree, name, search_path, cwd=cwd)
    if program is None:
        return started
    defaults: list[str] | None = None
    fetch_whole(program)
    started.append(program)
    queue = [program]  # fetching; to parse
    while queue:
        ino = queue.pop(0)
        try:
            interpreter, needed, runpath = await elf_dependencies(read, ino)
        except (ValueError, struct.error, OSError, LazyfsError) as exc:
            log.debug("%s: not followed (%s)", tree.path(ino), exc)
            continue
        origin = "/" + tree.path(ino).rpartition("/")[0]  # $ORIGIN: the file's directory
        if defaults is None:
            defaults = library_dirs(tree)
        dirs = [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in runpath]
        found = [_find_library(tree, interpreter, ())] if interpreter else []
        found += [_find_library(tree, lib, [*dirs, *defaults]) for lib in needed]
        for dep in found:
            if dep is not None and dep not in started and len(started) < MAX_FILES:
                fetch_whole(dep)  # now, beside the others: parsed in turn below
                started.append(dep)
                queue.append(dep)
    return started
