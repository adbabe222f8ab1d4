"""HTTP byte ranges: ``Content-Range`` values and ``multipart/byteranges`` bodies.

A server answering a ``Range`` request for several ranges replies ``206 Partial Content`` with
a ``multipart/byteranges`` body (RFC 7233 section 4.1 and appendix A, with the multipart
syntax of RFC 2046 section 5.1.1)::

    [preamble CRLF]
    --BOUNDARY CRLF
    Content-Type: application/octet-stream CRLF
    Content-Range: bytes 500-999/8000 CRLF
    CRLF
    <500 bytes of data> CRLF
    --BOUNDARY CRLF
    ...
    <data> CRLF
    --BOUNDARY-- [CRLF epilogue]

The CRLF in front of each ``--BOUNDARY`` belongs to the delimiter, not to the data. The data of
a part may contain any bytes, including the boundary, so the parser here never searches for the
boundary inside data: it takes exactly the number of bytes the part's ``Content-Range`` names
and then insists that a delimiter follows.

The parser is tolerant where tolerance cannot corrupt data (a missing CRLF in front of the first
delimiter, bare LF line endings in header lines and delimiter lines, transport padding after a
boundary, folded header lines, any preamble and epilogue) and strict where it could: a part
whose data is cut short, or whose data is not followed by a delimiter, is an error. The CRLF in
front of a delimiter that follows data may be a bare LF only in a part whose header lines all
ended with bare LF. Every parsing failure is reported as :class:`~lazyfs.errors.MultipartError`;
work and copying are linear in the size of the body (each part's data is copied once).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lazyfs.errors import MultipartError

__all__ = [
    "BytePart",
    "boundary_from_content_type",
    "build_byteranges",
    "parse_byteranges",
    "parse_content_range",
]

# At most 20 digits: enough for any 64-bit offset, and int() never sees absurdly long input.
_CONTENT_RANGE = re.compile(
    r"[ \t]*bytes[ \t]+([0-9]{1,20})[ \t]*-[ \t]*([0-9]{1,20})[ \t]*/[ \t]*([0-9]{1,20}|\*)[ \t]*",
    re.IGNORECASE,
)
_MEDIA_PARAM_NAME = re.compile(r"[ \t]*([^=;\s]+)[ \t]*=[ \t]*")
_QUOTED_STRING = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_BARE_PARAM_VALUE = re.compile(r"[^;]*")
_LINE_END = re.compile(rb"[ \t]*(\r?\n)")

# Limits on the header block of one part; real parts have two short header lines.
_MAX_HEADER_LINE = 8 * 1024
_MAX_HEADER_LINES = 100
_HEADER_LINE = re.compile(rb"([^\n]{0,%d})\n" % _MAX_HEADER_LINE)


@dataclass(frozen=True, slots=True)
class BytePart:
    """One part of a ``multipart/byteranges`` body.

    ``start`` and ``end`` are the first and last byte offsets (inclusive) the part covers,
    ``total`` the complete length of the representation (None when the server sent ``*``),
    and ``data`` the ``end - start + 1`` bytes themselves.
    """

    start: int
    end: int
    total: int | None
    data: bytes


def _excerpt(value: str, limit: int = 80) -> str:
    """``repr`` of ``value``, shortened so that error messages stay one readable line."""
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """Parse a ``Content-Range`` value for a satisfied byte range.

    ``"bytes 0-99/1234"`` gives ``(0, 99, 1234)`` and ``"bytes 0-99/*"`` gives
    ``(0, 99, None)``; the range is inclusive. The unit is matched case-insensitively and
    whitespace around the separators is tolerated.

    Raises MultipartError for anything else: another unit, an unsatisfied range
    (``"bytes */1234"``), signs or non-ASCII digits, ``end < start``, or ``total <= end``.
    """
    match = _CONTENT_RANGE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shown = _excerpt(value) if isinstance(value, str) else type(value).__name__
        raise MultipartError(f"invalid Content-Range {shown}: expected 'bytes FIRST-LAST/LENGTH'")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start:
        raise MultipartError(
            f"invalid Content-Range {_excerpt(value)}: last byte {end} is before first byte {start}"
        )
    if total is not None and total <= end:
        raise MultipartError(
            f"invalid Content-Range {_excerpt(value)}: "
            f"last byte {end} is not inside the complete length {total}"
        )
    return start, end, total


def _media_type_params(text: str) -> list[tuple[str, str | None]]:
    """The ``;``-separated parameters after a media type, names lower-cased.

    A value is None when it is a quoted string without its closing quote. Pieces that are
    not ``name=value`` are skipped.
    """
    params: list[tuple[str, str | None]] = []
    pos, n = 0, len(text)
    while pos < n:
        if text[pos] in "; \t":
            pos += 1
            continue
        name = _MEDIA_PARAM_NAME.match(text, pos)
        if name is None:
            semicolon = text.find(";", pos)
            pos = n if semicolon < 0 else semicolon + 1
            continue
        pos = name.end()
        value: str | None
        if pos < n and text[pos] == '"':
            quoted = _QUOTED_STRING.match(text, pos)
            if quoted is None:
                value, pos = None, n
            else:
                value, pos = _QUOTED_PAIR.sub(r"\1", quoted.group(1)), quoted.end()
        else:
            bare = _BARE_PARAM_VALUE.match(text, pos)
            assert bare is not None  # the pattern matches the empty string
            value, pos = bare.group().strip(), bare.end()
        params.append((name.group(1).lower(), value))
    return params


def boundary_from_content_type(value: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` ``Content-Type`` value.

    ``"multipart/byteranges; boundary=XYZ"`` gives ``"XYZ"``; the boundary may also be a
    quoted string, other parameters may come before or after it, and the media type and
    parameter names are matched case-insensitively (the boundary itself is case-sensitive).
    Returns None when the media type is not ``multipart/byteranges``.

    Raises MultipartError when the media type is ``multipart/byteranges`` but the boundary
    parameter is missing, empty, unterminated, or contains characters other than printable
    ASCII: such a body could not be parsed, and treating it as a single range would be wrong.
    """
    if not isinstance(value, str):
        return None
    media_type, _, rest = value.partition(";")
    if media_type.strip().lower() != "multipart/byteranges":
        return None
    for name, param in _media_type_params(rest):
        if name != "boundary":
            continue
        if param is None:
            raise MultipartError("multipart/byteranges boundary has an unterminated quoted string")
        if not param or not param.isascii() or not param.isprintable():
            raise MultipartError(f"multipart/byteranges has an invalid boundary {_excerpt(param)}")
        return param
    raise MultipartError("multipart/byteranges response has no boundary parameter")


def _dash_boundary(boundary: str) -> bytes:
    if (
        not isinstance(boundary, str)
        or not boundary
        or not boundary.isascii()
        or not boundary.isprintable()
    ):
        raise MultipartError(f"invalid multipart boundary {_excerpt(str(boundary))}")
    return b"--" + boundary.encode("ascii")


def _byte_view(body: bytes | bytearray | memoryview) -> memoryview:
    """A flat, unsigned-byte view of ``body``, copying only if it is not contiguous."""
    try:
        view = memoryview(body)
    except TypeError:
        raise MultipartError(f"cannot parse a {type(body).__name__} as a body") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _read_headers(view: memoryview, pos: int, part_no: int) -> tuple[dict[str, str], int, bool]:
    """Read the header block of part ``part_no`` starting at ``pos``.

    Returns the headers (names lower-cased, values stripped), the position just after the
    empty line that ends the block, and whether every line ended with a bare LF.
    """
    headers: dict[str, str] = {}
    last_name: str | None = None
    lf_only = True
    for _ in range(_MAX_HEADER_LINES):
        line_match = _HEADER_LINE.match(view, pos)
        if line_match is None:
            if len(view) - pos <= _MAX_HEADER_LINE:
                raise MultipartError(f"body ends inside the headers of part {part_no}")
            raise MultipartError(f"header line too long in part {part_no}")
        pos = line_match.end()
        line = line_match.group(1)
        if line.endswith(b"\r"):
            line = line[:-1]
            lf_only = False
        if not line:
            return headers, pos, lf_only
        text = line.decode("latin-1")
        if text[0] in " \t":
            if last_name is None:
                raise MultipartError(f"malformed header line in part {part_no}")
            headers[last_name] = f"{headers[last_name]} {text.strip()}".strip()
            continue
        name, colon, field_value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MultipartError(f"malformed header line in part {part_no}")
        if name == "content-range" and name in headers:
            raise MultipartError(f"part {part_no} has more than one Content-Range header")
        headers[name] = field_value.strip()
        last_name = name
    raise MultipartError(f"too many header lines in part {part_no}")


def parse_byteranges(body: bytes | memoryview, boundary: str) -> list[BytePart]:
    """Parse a ``multipart/byteranges`` body into its parts, in the order sent.

    ``boundary`` is the value from the ``Content-Type`` header (see
    :func:`boundary_from_content_type`), without the leading ``--``. Each part must carry a
    ``Content-Range`` header; its data is exactly the number of bytes that range names.
    The parts are returned as sent: servers may reorder or coalesce the requested ranges, so
    callers must match parts to ranges by offset. A body whose first delimiter is the close
    delimiter yields an empty list.

    Raises MultipartError when the body is malformed, naming the part (counting from 1) where
    parsing failed: no delimiter at all, a malformed delimiter or header line, a missing or
    invalid Content-Range, data cut short, data not followed by a delimiter, or no close
    delimiter at the end.
    """
    dash = _dash_boundary(boundary)
    view = _byte_view(body)
    n = len(view)

    # The first delimiter: at the very start of the body, or at the start of a line after
    # the preamble, and followed by "--" or a line end.
    first = re.compile(rb"(?:\A|\n)" + re.escape(dash) + rb"(?=--|[ \t]*\r?\n)").search(view)
    if first is None:
        raise MultipartError("multipart body contains no delimiter for its boundary")
    pos = first.end()
    delimiter = b"\r\n" + dash
    lf_delimiter = b"\n" + dash

    parts: list[BytePart] = []
    while True:
        part_no = len(parts) + 1
        # pos is just after "--boundary".
        if view[pos : pos + 2] == b"--":
            return parts
        line_end = _LINE_END.match(view, pos)
        if line_end is None:
            if pos >= n:
                raise MultipartError(
                    f"multipart body ends after the delimiter before part {part_no} "
                    "(no close delimiter)"
                )
            raise MultipartError(f"malformed delimiter line before part {part_no}")
        pos = line_end.end()

        headers, pos, lf_only = _read_headers(view, pos, part_no)
        content_range = headers.get("content-range")
        if content_range is None:
            raise MultipartError(f"part {part_no} has no Content-Range header")
        try:
            start, end, total = parse_content_range(content_range)
        except MultipartError as exc:
            raise MultipartError(f"part {part_no}: {exc}") from None
        length = end - start + 1
        if n - pos < length:
            raise MultipartError(
                f"part {part_no} (bytes {start}-{end}) claims {length} bytes of data "
                f"but the body has only {n - pos} left"
            )
        data = bytes(view[pos : pos + length])
        pos += length

        if view[pos : pos + len(delimiter)] == delimiter:
            pos += len(delimiter)
        elif lf_only and view[pos : pos + len(lf_delimiter)] == lf_delimiter:
            pos += len(lf_delimiter)
        elif pos >= n:
            raise MultipartError(
                f"multipart body ends after the data of part {part_no} (bytes {start}-{end}) "
                "without a delimiter"
            )
        else:
            raise MultipartError(
                f"the data of part {part_no} (bytes {start}-{end}) is not followed by the "
                "boundary delimiter (wrong length or boundary)"
            )
        parts.append(BytePart(start, end, total, data))


def build_byteranges(
    parts: Sequence[tuple[int, bytes]],
    total: int | None,
    boundary: str,
    content_type: str = "application/octet-stream",
) -> bytes:
    """Encode ``multipart/byteranges`` body, the inverse of :func:`parse_byteranges`.

    ``parts`` are ``(start, data)`` pairs, each covering ``start`` to
    ``start + len(data) - 1``; they are written in the given order (overlaps allowed, as a
    server may send them). ``total`` is the complete length, or None to send ``*``. Every part
    gets ``Content-Type: content_type`` and its ``Content-Range``; the body starts with the
    first delimiter (no preamble), uses CRLF throughout, and ends with the close delimiter and
    a CRLF.

    Raises ValueError for an empty part, a negative start, a part reaching past ``total``, a
    boundary that is empty or not printable ASCII, or a content type containing a line break.
    """
    if not isinstance(boundary, str) or not boundary or not boundary.isascii():
        raise ValueError("boundary must be a non-empty ASCII string")
    if not boundary.isprintable():
        raise ValueError("boundary must consist of printable characters")
    if "\r" in content_type or "\n" in content_type:
        raise ValueError("content_type must not contain line breaks")
    if total is not None and total < 0:
        raise ValueError("total must not be negative")
    dash = b"--" + boundary.encode("ascii")
    type_line = f"Content-Type: {content_type}\r\n".encode("latin-1")
    length = b"*" if total is None else str(total).encode("ascii")
    chunks: list[bytes] = []
    for index, (start, data) in enumerate(parts):
        if start < 0:
            raise ValueError(f"part {index + 1} starts at a negative offset")
        if not data:
            raise ValueError(f"part {index + 1} is empty (a byte range has at least one byte)")
        end = start + len(data) - 1
        if total is not None and end >= total:
            raise ValueError(f"part {index + 1} reaches past the complete length {total}")
        if chunks:
            chunks.append(b"\r\n")
        chunks += [
            dash,
            b"\r\n",
            type_line,
            b"Content-Range: bytes %d-%d/%s\r\n\r\n" % (start, end, length),
            bytes(data),
        ]
    if chunks:
        chunks.append(b"\r\n")
    chunks += [dash, b"--\r\n"]
    return b"".join(chunks)
