"""Finding a program, its ELF interpreter and its libraries in a merged tree (no kernel).

ELF files are built here (64- and 32-bit, both byte orders, with and without the tables
the parser reads); one test parses real programs of this machine and checks the result
against ``readelf``.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest
import trio

from lazyfs.fs import programs
from lazyfs.fs.programs import elf_dependencies, find_program, prefetch_program, resolve
from tests import test_tree
from tests.harness.images import Entry
from tests.test_tree import read_content

make = test_tree.make  # the fixture: a merged tree from harness entries


def elf(
    *,
    interp: str | None = "/lib64/ld-linux-x86-64.so.2",
    needed: tuple[str, ...] = (),
    runpath: str | None = None,
    wide: bool = True,
    order: str = "<",
    dynamic: bool = True,
) -> bytes:
    """A small ELF file: program headers, PT_INTERP, one PT_LOAD and PT_DYNAMIC.

    The file is laid out as: ELF header, program headers, interpreter string, string
    table, dynamic section; one PT_LOAD maps it all at vaddr 0x400000.
    """
    phnum = 3
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    phoff = ehsize
    interp_off = phoff + phnum * phentsize
    interp_bytes = (interp or "").encode() + b"\0"
    strings = b"\0"
    offsets = {}
    for name in (*needed, *([runpath] if runpath else [])):
        offsets[name] = len(strings)
        strings += name.encode() + b"\0"
    strtab_off = interp_off + len(interp_bytes)
    dyn_off = strtab_off + len(strings)
    base = 0x400000
    tags = [(1, offsets[n]) for n in needed]
    if runpath:
        tags.append((29, offsets[runpath]))
    tags += [(5, base + strtab_off), (10, len(strings)), (0, 0)]
    dyn_fmt = order + ("qQ" if wide else "iI")
    dyn = b"".join(struct.pack(dyn_fmt, t, v) for t, v in tags)
    total = dyn_off + len(dyn)

    def phdr(p_type: int, offset: int, size: int) -> bytes:
        if wide:
            return struct.pack(
                order + "IIQQQQQQ", p_type, 5, offset, base + offset, 0, size, size, 8
            )
        return struct.pack(order + "IIIIIIII", p_type, offset, base + offset, 0, size, size, 5, 4)

    headers = [phdr(1, 0, total)]
    headers.append(phdr(3, interp_off, len(interp_bytes)) if interp else phdr(4, 0, 0))
    headers.append(phdr(2, dyn_off, len(dyn)) if dynamic else phdr(4, 0, 0))
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(
            order + "HHIQQQIHHHHHH", 2, 62, 1, base, phoff, 0, 0, ehsize, phentsize, phnum, 64, 0, 0
        )
    else:
        header = ident + struct.pack(
            order + "HHIIIIIHHHHHH", 2, 3, 1, base, phoff, 0, 0, ehsize, phentsize, phnum, 40, 0, 0
        )
    out = header + b"".join(headers) + interp_bytes + strings + dyn
    assert len(out) == total
    return out


def reader(built):
    """An async ``read(ino, offset, size)`` over the tree's layer tars."""

    async def read(ino: int, offset: int, size: int) -> bytes:
        return read_content(built.tree, built.tars, ino)[offset : offset + size]

    return read


def run(fn, *args):
    return trio.run(fn, *args)


def system_image() -> list[Entry]:
    """A small Debian-like tree: merged /usr, a multiarch directory, symlinked names."""
    lib = "usr/lib/x86_64-linux-gnu"
    return [
        Entry("usr", kind="dir"),
        Entry("usr/bin", kind="dir"),
        Entry("usr/lib", kind="dir"),
        Entry(lib, kind="dir"),
        Entry("usr/local", kind="dir"),
        Entry("usr/local/lib", kind="dir"),
        Entry("bin", kind="symlink", linkname="usr/bin"),
        Entry("lib", kind="symlink", linkname="usr/lib"),
        Entry("lib64", kind="symlink", linkname="usr/lib64"),
        Entry("usr/lib64", kind="dir"),
        Entry("usr/lib64/ld-linux-x86-64.so.2", kind="symlink", linkname=f"/{lib}/ld.so"),
        Entry(f"{lib}/ld.so", data=elf(interp=None), mode=0o755),
        Entry(f"{lib}/libc.so.6", data=elf(interp=None, needed=("ld-linux-x86-64.so.2",))),
        Entry(f"{lib}/libm.so.6", data=elf(interp=None, needed=("libc.so.6",))),
        Entry("usr/local/lib/libapp.so", data=elf(interp=None, needed=("libm.so.6",))),
        Entry("usr/bin/app", mode=0o755, data=elf(needed=("libm.so.6", "libc.so.6"))),
        Entry(
            "usr/bin/tool",
            mode=0o755,
            data=elf(needed=("libapp.so", "libnowhere.so"), runpath="$ORIGIN/../local/lib"),
        ),
        Entry("usr/bin/script", mode=0o755, data=b"#!/bin/sh\necho hi\n"),
        Entry("usr/bin/readme", mode=0o644, data=elf()),
        Entry("usr/bin/loop", kind="symlink", linkname="loop"),
        Entry("usr/bin/python3", kind="symlink", linkname="app"),
    ]


# ---------------------------------------------------------------------------- paths


def test_resolve_follows_symlinks_inside_the_tree(make):
    built = make(system_image())
    libc = built.ino("usr/lib/x86_64-linux-gnu/libc.so.6")
    assert resolve(built.tree, "/lib/x86_64-linux-gnu/libc.so.6") == libc
    assert resolve(built.tree, "/lib64/ld-linux-x86-64.so.2") == built.ino(
        "usr/lib/x86_64-linux-gnu/ld.so"
    )
    assert resolve(built.tree, "x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6", cwd="/lib") == libc
    # .. of the root is the root: a path cannot leave the tree.
    assert resolve(built.tree, "/../../usr/bin/app") == built.ino("usr/bin/app")
    assert resolve(built.tree, "/usr/bin/loop") is None  # a symlink loop ends, unresolved
    assert resolve(built.tree, "/usr/bin/app/x") is None  # a file is no directory
    assert resolve(built.tree, "/nowhere") is None


def test_find_program_searches_path_like_execvp(make):
    built = make(system_image())
    app = built.ino("usr/bin/app")
    assert find_program(built.tree, "python3", "/usr/local/bin:/bin") == app
    assert find_program(built.tree, "app", "/nowhere:/usr/bin") == app
    assert find_program(built.tree, "/usr/bin/python3", "") == app
    assert find_program(built.tree, "bin/app", "", cwd="/") == app
    assert find_program(built.tree, "readme", "/usr/bin") is None  # not executable
    assert find_program(built.tree, "usr", "/") is None  # a directory
    assert find_program(built.tree, "missing", "/usr/bin:/bin") is None


def test_library_dirs_have_the_multiarch_ones_first(make):
    built = make(system_image())
    # /lib is /usr/lib and /lib64 is /usr/lib64 here: each once, by its first name.
    assert programs.library_dirs(built.tree) == ["/lib/x86_64-linux-gnu", "/lib64", "/lib"]


# ---------------------------------------------------------------------------- ELF


@pytest.mark.parametrize(("wide", "order"), [(True, "<"), (True, ">"), (False, "<"), (False, ">")])
def test_elf_dependencies_of_every_class_and_byte_order(make, wide, order):
    data = elf(
        needed=("libm.so.6", "libc.so.6"), runpath="$ORIGIN/lib:/opt", wide=wide, order=order
    )
    built = make([Entry("prog", data=data, mode=0o755)])
    found = run(elf_dependencies, reader(built), built.ino("prog"))
    assert found == (
        "/lib64/ld-linux-x86-64.so.2",
        ["libm.so.6", "libc.so.6"],
        ["$ORIGIN/lib", "/opt"],
    )


def test_elf_without_interpreter_or_dynamic_section(make):
    built = make(
        [
            Entry("static", data=elf(interp=None, dynamic=False)),
            Entry("text", data=b"#!/bin/sh\n" * 10),
            Entry("short", data=b"\x7fELF\x02\x01"),
            Entry("bad", data=elf()[:70]),  # program headers cut off
        ]
    )
    read = reader(built)
    assert run(elf_dependencies, read, built.ino("static")) == (None, [], [])
    for name in ("text", "short", "bad"):
        with pytest.raises(ValueError):
            run(elf_dependencies, read, built.ino(name))


def test_elf_dependencies_of_real_programs_match_readelf(make):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.fail("readelf (binutils) is needed: scripts/test installs it")
    entries = []
    expected = {}
    for n, path in enumerate(["/bin/sh", "/usr/bin/env", "/lib/x86_64-linux-gnu/libc.so.6"]):
        with open(path, "rb") as f:
            data = f.read()
        entries.append(Entry(f"f{n}", data=data))
        out = subprocess.run(
            [readelf, "-ldW", path], capture_output=True, text=True, check=True
        ).stdout
        interp = re.search(r"Requesting program interpreter: ([^\]]+)\]", out)
        expected[f"f{n}"] = (
            interp[1] if interp else None,
            re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out),
        )
    built = make(entries)
    read = reader(built)
    for name, want in expected.items():
        interpreter, needed, _ = run(elf_dependencies, read, built.ino(name))
        assert (interpreter, needed) == want, name
        assert needed, f"{name}: a dynamically linked file was expected"


# ---------------------------------------------------------------------------- prefetch


def test_prefetch_program_starts_the_program_then_what_it_loads(make):
    built = make(system_image())
    started = []
    found = run(
        lambda: prefetch_program(
            built.tree, reader(built), started.append, "python3", "/usr/local/bin:/usr/bin"
        )
    )
    lib = "usr/lib/x86_64-linux-gnu"
    assert [built.tree.path(i) for i in found] == [
        "usr/bin/app",
        f"{lib}/ld.so",
        f"{lib}/libm.so.6",
        f"{lib}/libc.so.6",
    ]
    assert started == found  # each started once, the program first


def test_prefetch_program_follows_runpath_with_origin_and_skips_the_missing(make):
    built = make(system_image())
    started = []
    found = run(
        lambda: prefetch_program(built.tree, reader(built), started.append, "tool", "/usr/bin")
    )
    names = [built.tree.path(i) for i in found]
    assert names[:3] == [
        "usr/bin/tool",
        "usr/lib/x86_64-linux-gnu/ld.so",
        "usr/local/lib/libapp.so",  # $ORIGIN/../local/lib
    ]
    assert "usr/lib/x86_64-linux-gnu/libm.so.6" in names  # libapp's own
    assert not any("nowhere" in n for n in names)


def test_prefetch_program_of_a_script_or_a_missing_program(make):
    built = make(system_image())
    started = []
    read = reader(built)
    found = run(lambda: prefetch_program(built.tree, read, started.append, "script", "/usr/bin"))
    assert [built.tree.path(i) for i in found] == ["usr/bin/script"]  # fetched, not parsed
    assert run(lambda: prefetch_program(built.tree, read, started.append, "gone", "/usr/bin")) == []


def test_prefetch_program_stops_at_its_file_limit(make, monkeypatch):
    monkeypatch.setattr(programs, "MAX_FILES", 2)
    built = make(system_image())
    started = []
    found = run(
        lambda: prefetch_program(built.tree, reader(built), started.append, "app", "/usr/bin")
    )
    assert len(found) == len(started) == 2


def test_a_read_that_fails_only_ends_the_hint(make):
    from lazyfs.errors import LazyfsError

    built = make(system_image())

    async def failing(ino: int, offset: int, size: int) -> bytes:
        raise LazyfsError("the registry is gone")

    started = []
    found = run(lambda: prefetch_program(built.tree, failing, started.append, "app", "/usr/bin"))
    assert [built.tree.path(i) for i in found] == ["usr/bin/app"]
