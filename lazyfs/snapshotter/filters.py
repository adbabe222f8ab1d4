"""containerd's filter expressions, as ``List`` requests carry them, evaluated on snapshots.

A request carries several filters; a snapshot is listed if it matches any of them. One
filter is selectors joined by ``,``, all of which must match. A selector is a field path,
alone (the field is present and not empty) or followed by an operator and a value:

* ``==`` equal, ``!=`` not equal, ``~=`` matches the regular expression;
* field paths: ``name``, ``parent``, ``kind`` (``active``, ``view``, ``committed``; any
  case) and ``labels.KEY`` (a ``KEY`` with dots or other punctuation is quoted:
  ``labels."containerd.io/snapshot.ref"``);
* values are quoted with ``"..."`` (backslash escapes, as Go's ``%q`` writes them) or
  `` `...` `` (raw), or run unquoted up to the next ``,``.

containerd itself calls ``List`` with ``labels."containerd.io/snapshot.ref"==TARGET,
parent=="PARENT"`` to find the snapshot a remote ``Prepare`` committed; ``ctr snapshots
ls`` sends none. A malformed filter raises :class:`~.metadata.SnapshotInvalid`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .metadata import Snapshot, SnapshotInvalid

__all__ = ["compile_filters"]

_OPERATORS = ("==", "!=", "~=")


@dataclass(frozen=True)
class _Selector:
    path: tuple[str, ...]
    operator: str | None
    value: str


class _Scanner:
    """Reads one filter expression left to right."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> SnapshotInvalid:
        return SnapshotInvalid(f"filter {self.text!r}: {what} at offset {self.pos}")

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" and quote == '"' else 1
        if end >= len(self.text):
            raise self.error("unterminated quoted string")
        raw = self.text[self.pos : end + 1]
        self.pos = end + 1
        if quote == "`":
            return raw[1:-1]
        try:
            return ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            raise self.error("bad escape in quoted string") from None

    def field(self) -> str:
        if self.peek('"') or self.peek("`"):
            return self.quoted()
        match = re.compile(r"[A-Za-z0-9_\-/]+").match(self.text, self.pos)
        if not match:
            raise self.error("expected a field name")
        self.pos = match.end()
        return match.group()

    def value(self) -> str:
        if self.peek('"') or self.peek("`"):
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos : end].strip()
        self.pos = end
        return value


def _parse(text: str) -> list[_Selector]:
    scanner = _Scanner(text.strip())
    selectors = []
    while True:
        path = [scanner.field()]
        while scanner.peek("."):
            scanner.pos += 1
            path.append(scanner.field())
        operator = next((op for op in _OPERATORS if scanner.peek(op)), None)
        value = ""
        if operator:
            scanner.pos += len(operator)
            value = scanner.value()
        selectors.append(_Selector(tuple(path), operator, value))
        if scanner.at_end():
            return selectors
        if not scanner.peek(","):
            raise scanner.error("expected ',' or an operator")
        scanner.pos += 1


def _field(snapshot: Snapshot, path: tuple[str, ...]) -> str | None:
    """The value at ``path``, or ``None`` where the snapshot has no such field."""
    head, rest = path[0], path[1:]
    if head == "labels":
        return snapshot.labels.get(".".join(rest)) if rest else None
    if rest:
        return None
    if head == "name":
        return snapshot.key
    if head == "parent":
        return snapshot.parent
    if head == "kind":
        return snapshot.kind.name.lower()
    return None


def _matches(snapshot: Snapshot, selector: _Selector, patterns: dict[str, re.Pattern]) -> bool:
    actual = _field(snapshot, selector.path)
    expected = selector.value
    if selector.path == ("kind",):
        expected = expected.lower()
    if selector.operator is None:
        return bool(actual)
    if selector.operator == "==":
        return actual == expected
    if selector.operator == "!=":
        return actual != expected
    return actual is not None and patterns[selector.value].search(actual) is not None


def compile_filters(filters: Sequence[str]) -> Callable[[Snapshot], bool]:
    """A predicate true for the snapshots any of ``filters`` matches (all if none)."""
    parsed = [_parse(f) for f in filters if f.strip()]
    patterns: dict[str, re.Pattern] = {}
    for selectors in parsed:
        for selector in selectors:
            if selector.operator == "~=":
                try:
                    patterns[selector.value] = re.compile(selector.value)
                except re.error as exc:
                    raise SnapshotInvalid(f"filter regexp {selector.value!r}: {exc}") from None
    if not parsed:
        return lambda snapshot: True
    return lambda snapshot: any(
        all(_matches(snapshot, s, patterns) for s in selectors) for selectors in parsed
    )
