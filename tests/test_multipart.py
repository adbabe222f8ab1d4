"""Tests of byte-range parsing and encoding (lazyfs.oci.multipart)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.errors import MultipartError
from lazyfs.oci.multipart import (
    BytePart,
    boundary_from_content_type,
    build_byteranges,
    parse_byteranges,
    parse_content_range,
)

# --------------------------------------------------------------------------- Content-Range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/1234", (0, 99, 1234)),
        ("bytes 0-99/*", (0, 99, None)),
        ("bytes 5-5/6", (5, 5, 6)),
        ("Bytes 10-19/20", (10, 19, 20)),
        ("  bytes  0 - 9 / 10 ", (0, 9, 10)),
        ("bytes 0-18446744073709551614/18446744073709551615", (0, 2**64 - 2, 2**64 - 1)),
    ],
)
def test_content_range(value: str, expected: tuple[int, int, int | None]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "bytes",
        "bytes */1234",
        "bytes 0-99",
        "bytes 0-99/",
        "items 0-99/100",
        "bytes=0-99/100",
        "bytes -1-99/100",
        "bytes 0--99/100",
        "bytes +0-99/100",
        "bytes 0-99/-100",
        "bytes 10-9/100",
        "bytes 0-99/99",
        "bytes 0-99/100 extra",
        "bytes 0-\u0669/100",
        "bytes 0_0-1/100",
        "bytes 0-" + "9" * 5000 + "/*",
    ],
)
def test_invalid_content_range(value: str) -> None:
    with pytest.raises(MultipartError):
        parse_content_range(value)


# --------------------------------------------------------------------------- Content-Type


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("multipart/byteranges; boundary=THIS_STRING_SEPARATES", "THIS_STRING_SEPARATES"),
        ('multipart/byteranges; boundary="quoted boundary"', "quoted boundary"),
        ('multipart/byteranges; boundary="a\\"b;c"', 'a"b;c'),
        ("Multipart/ByteRanges;BOUNDARY=abc", "abc"),
        ("multipart/byteranges; charset=utf-8; boundary=abc; x=y", "abc"),
        ('multipart/byteranges; x="a;boundary=wrong"; boundary=right', "right"),
        ("  multipart/byteranges  ;  boundary = abc  ", "abc"),
        ("multipart/byteranges; boundary=3d6b6a416f9b5", "3d6b6a416f9b5"),
    ],
)
def test_boundary(value: str, expected: str) -> None:
    assert boundary_from_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    ["application/octet-stream", "", "multipart/mixed; boundary=abc", "text/plain; boundary=x"],
)
def test_not_byteranges(value: str) -> None:
    assert boundary_from_content_type(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "multipart/byteranges",
        "multipart/byteranges; charset=x",
        "multipart/byteranges; boundary=",
        'multipart/byteranges; boundary=""',
        'multipart/byteranges; boundary="unterminated',
        "multipart/byteranges; boundary=caf\u00e9",
    ],
)
def test_byteranges_without_usable_boundary(value: str) -> None:
    with pytest.raises(MultipartError):
        boundary_from_content_type(value)


# --------------------------------------------------------------------------- parsing

# The example of RFC 7233 section 4.1, with the line ends an HTTP server sends.
RFC_EXAMPLE = (
    b"--THIS_STRING_SEPARATES\r\n"
    b"Content-Type: application/pdf\r\n"
    b"Content-Range: bytes 500-999/8000\r\n"
    b"\r\n" + b"a" * 500 + b"\r\n"
    b"--THIS_STRING_SEPARATES\r\n"
    b"Content-Type: application/pdf\r\n"
    b"Content-Range: bytes 7000-7999/8000\r\n"
    b"\r\n" + b"b" * 1000 + b"\r\n"
    b"--THIS_STRING_SEPARATES--\r\n"
)
RFC_PARTS = [BytePart(500, 999, 8000, b"a" * 500), BytePart(7000, 7999, 8000, b"b" * 1000)]


def test_rfc_example() -> None:
    assert parse_byteranges(RFC_EXAMPLE, "THIS_STRING_SEPARATES") == RFC_PARTS


def test_memoryview_and_bytearray_bodies() -> None:
    assert parse_byteranges(memoryview(RFC_EXAMPLE), "THIS_STRING_SEPARATES") == RFC_PARTS
    assert parse_byteranges(bytearray(RFC_EXAMPLE), "THIS_STRING_SEPARATES") == RFC_PARTS  # type: ignore[arg-type]
    padded = b"xx" + RFC_EXAMPLE + b"yy"
    assert parse_byteranges(memoryview(padded)[2:-2], "THIS_STRING_SEPARATES") == RFC_PARTS


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"This is a preamble.\r\nIt mentions --THIS_STRING_SEPARATESX.\r\n\r\n" + RFC_EXAMPLE
    body += b"epilogue --THIS_STRING_SEPARATES\r\ngarbage"
    assert parse_byteranges(body, "THIS_STRING_SEPARATES") == RFC_PARTS


def test_leading_crlf_before_first_delimiter() -> None:
    assert parse_byteranges(b"\r\n" + RFC_EXAMPLE, "THIS_STRING_SEPARATES") == RFC_PARTS


def test_content_type_optional_and_other_headers_allowed() -> None:
    body = (
        b"--b\r\ncontent-range: bytes 0-2/*\r\n\r\nabc\r\n"
        b"--b  \r\nX-Extra: 1\r\nCONTENT-RANGE:bytes 10-10/*\r\n\r\nz\r\n--b--"
    )
    assert parse_byteranges(body, "b") == [
        BytePart(0, 2, None, b"abc"),
        BytePart(10, 10, None, b"z"),
    ]


def test_lf_only_headers() -> None:
    body = (
        b"--sep\nContent-Type: application/octet-stream\nContent-Range: bytes 0-3/10\n\n"
        b"\r\n\r\n\r\n--sep\nContent-Range: bytes 4-5/10\n\n45\n--sep--\n"
    )
    assert parse_byteranges(body, "sep") == [
        BytePart(0, 3, 10, b"\r\n\r\n"),
        BytePart(4, 5, 10, b"45"),
    ]


def test_folded_header_line() -> None:
    body = b"--b\r\nContent-Range: bytes\r\n 0-1/2\r\n\r\nab\r\n--b--\r\n"
    assert parse_byteranges(body, "b") == [BytePart(0, 1, 2, b"ab")]


def test_data_containing_the_boundary() -> None:
    boundary = "3d6b6a416f9b5"
    tricky = b"\r\n--3d6b6a416f9b5\r\nContent-Range: bytes 0-0/1\r\n\r\nX\r\n--3d6b6a416f9b5--\r\n"
    body = build_byteranges([(100, tricky), (500, b"--" + boundary.encode())], 1000, boundary)
    assert parse_byteranges(body, boundary) == [
        BytePart(100, 100 + len(tricky) - 1, 1000, tricky),
        BytePart(500, 500 + len(boundary) + 1, 1000, b"--" + boundary.encode()),
    ]


def test_quoted_boundary_with_space_end_to_end() -> None:
    content_type = 'multipart/byteranges; boundary="gc0p4Jq0M2Yt08jU534c0p with space"'
    boundary = boundary_from_content_type(content_type)
    assert boundary == "gc0p4Jq0M2Yt08jU534c0p with space"
    body = build_byteranges([(0, b"hello"), (6, b"world")], 11, boundary)
    assert [part.data for part in parse_byteranges(body, boundary)] == [b"hello", b"world"]


def test_close_delimiter_only_gives_no_parts() -> None:
    assert parse_byteranges(b"--b--\r\n", "b") == []


def test_truncated_body_names_the_part() -> None:
    cut = RFC_EXAMPLE[: RFC_EXAMPLE.index(b"b" * 1000) + 400]
    with pytest.raises(MultipartError, match=r"part 2 \(bytes 7000-7999\).*1000 bytes.*400"):
        parse_byteranges(cut, "THIS_STRING_SEPARATES")


def test_missing_close_delimiter() -> None:
    cut = RFC_EXAMPLE[: RFC_EXAMPLE.rindex(b"\r\n--THIS")]
    with pytest.raises(MultipartError, match="part 2"):
        parse_byteranges(cut, "THIS_STRING_SEPARATES")
    with pytest.raises(MultipartError, match="no close delimiter"):
        parse_byteranges(cut + b"\r\n--THIS_STRING_SEPARATES", "THIS_STRING_SEPARATES")


def test_data_longer_than_claimed() -> None:
    body = b"--b\r\nContent-Range: bytes 0-1/10\r\n\r\nabc\r\n--b--\r\n"
    with pytest.raises(MultipartError, match=r"part 1 .*not followed by the boundary delimiter"):
        parse_byteranges(body, "b")


def test_data_shorter_than_claimed_is_not_silently_accepted() -> None:
    # One byte short: the parser must not take "ab\r" and accept "\n--b" as a delimiter.
    body = b"--b\r\nContent-Range: bytes 0-2/10\r\n\r\nab\r\n--b--\r\n"
    with pytest.raises(MultipartError, match="part 1"):
        parse_byteranges(body, "b")


def test_wrong_delimiter() -> None:
    body = RFC_EXAMPLE.replace(
        b"--THIS_STRING_SEPARATES\r\nContent-Type: application/pdf\r\nContent-Range: bytes 7000",
        b"--OTHER_STRING_SEPARATES\r\nContent-Type: application/pdf\r\nContent-Range: bytes 7000",
    )
    with pytest.raises(MultipartError, match=r"part 1 .*not followed by the boundary delimiter"):
        parse_byteranges(body, "THIS_STRING_SEPARATES")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no delimiter"),
        (b"no multipart here", "no delimiter"),
        (b"--bb\r\n", "no delimiter"),
        (b"--b", "no delimiter"),
        (b"--b\r\n", "ends inside the headers of part 1"),
        (b"--bjunk\r\n", "no delimiter"),
        (b"--b\r\n\r\nabc", "part 1 has no Content-Range"),
        (b"--b\r\nContent-Range: bytes */10\r\n\r\n", "part 1: invalid Content-Range"),
        (b"--b\r\nno colon here\r\n\r\n", "malformed header line in part 1"),
        (b"--b\r\n folded first\r\n\r\n", "malformed header line in part 1"),
        (
            b"--b\r\nContent-Range: bytes 0-0/1\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--b--",
            "more than one Content-Range",
        ),
        (b"--b\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--b", "no close delimiter"),
        (b"--b\r\nContent-Range: bytes 0-0/1\r\n\r\nx\r\n--bjunk\r\n", "malformed delimiter line"),
        (b"--b\r\n" + b"X" * 10_000 + b"\r\n\r\n", "header line too long in part 1"),
        (b"--b\r\n" + b"X: y\r\n" * 200 + b"\r\n", "too many header lines in part 1"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        parse_byteranges(body, "b")


@pytest.mark.parametrize("boundary", ["", "caf\u00e9", "a\r\nb"])
def test_invalid_boundary_argument(boundary: str) -> None:
    with pytest.raises(MultipartError):
        parse_byteranges(RFC_EXAMPLE, boundary)


def test_large_body_is_linear() -> None:
    parts = [(index * 1_000_000, bytes([index]) * 1_000_000) for index in range(40)]
    body = build_byteranges(parts, 40_000_000, "big")
    started = time.perf_counter()
    parsed = parse_byteranges(memoryview(body), "big")
    assert time.perf_counter() - started < 2.0
    assert [(p.start, p.data) for p in parsed] == parts

    many = [(index * 10, b"0123456789") for index in range(50_000)]
    body = build_byteranges(many, 500_000, "many")
    started = time.perf_counter()
    assert len(parse_byteranges(body, "many")) == 50_000
    assert time.perf_counter() - started < 2.0


# --------------------------------------------------------------------------- building


def test_build_format() -> None:
    body = build_byteranges([(2, b"cd")], 10, "xyz", content_type="text/plain")
    assert body == (
        b"--xyz\r\nContent-Type: text/plain\r\nContent-Range: bytes 2-3/10\r\n\r\ncd\r\n--xyz--\r\n"
    )
    assert build_byteranges([(0, b"a")], None, "x").count(b"bytes 0-0/*") == 1
    assert build_byteranges([], 5, "x") == b"--x--\r\n"


@pytest.mark.parametrize(
    ("parts", "total", "boundary", "content_type"),
    [
        ([(0, b"")], 10, "b", "a/b"),
        ([(-1, b"x")], 10, "b", "a/b"),
        ([(5, b"abcdef")], 10, "b", "a/b"),
        ([(0, b"x")], -1, "b", "a/b"),
        ([(0, b"x")], 10, "", "a/b"),
        ([(0, b"x")], 10, "caf\u00e9", "a/b"),
        ([(0, b"x")], 10, "a\nb", "a/b"),
        ([(0, b"x")], 10, "b", "a/b\r\nX-Injected: 1"),
    ],
)
def test_build_rejects(
    parts: list[tuple[int, bytes]], total: int, boundary: str, content_type: str
) -> None:
    with pytest.raises(ValueError):
        build_byteranges(parts, total, boundary, content_type)


# --------------------------------------------------------------------------- properties

_BOUNDARY = st.from_regex(
    r"[0-9A-Za-z'()+_,\-./:=? ]{0,68}[0-9A-Za-z'()+_,\-./:=?]", fullmatch=True
)


@st.composite
def _ranges(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], int | None]:
    parts = draw(
        st.lists(
            st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=200)),
            max_size=8,
        )
    )
    end = max((start + len(data) for start, data in parts), default=0)
    total = draw(st.one_of(st.none(), st.integers(end, end + 1000).filter(lambda t: t > 0)))
    return parts, total


@given(_ranges(), _BOUNDARY, st.sampled_from(["application/octet-stream", "x/y; a=b", ""]))
def test_parse_inverts_build(
    ranges: tuple[list[tuple[int, bytes]], int | None], boundary: str, content_type: str
) -> None:
    parts, total = ranges
    body = build_byteranges(parts, total, boundary, content_type)
    assert parse_byteranges(body, boundary) == [
        BytePart(start, start + len(data) - 1, total, data) for start, data in parts
    ]
    assert parse_byteranges(memoryview(body), boundary) == parse_byteranges(body, boundary)


@given(_ranges(), st.binary(max_size=50))
def test_parse_with_preamble_and_epilogue(
    ranges: tuple[list[tuple[int, bytes]], int | None], epilogue: bytes
) -> None:
    parts, total = ranges
    body = b"preamble\r\n" + build_byteranges(parts, total, "sep") + epilogue
    assert [(p.start, p.data) for p in parse_byteranges(body, "sep")] == parts


@given(st.binary(max_size=500), st.sampled_from(["b", "sep", "THIS_STRING_SEPARATES"]))
def test_arbitrary_bytes_only_raise_multipart_error(body: bytes, boundary: str) -> None:
    try:
        parse_byteranges(body, boundary)
    except MultipartError:
        pass


_PIECES = st.sampled_from(
    [
        b"--b",
        b"--b--",
        b"\r\n",
        b"\n",
        b"\r",
        b"Content-Range: ",
        b"bytes ",
        b"0-3/10",
        b"*",
        b"-",
        b"/",
        b":",
        b" ",
        b"abcd",
        b"9999999999999999999999",
        b"Content-Type: x",
    ]
)


@given(st.lists(_PIECES, max_size=40))
def test_multipart_like_bytes_only_raise_multipart_error(pieces: list[bytes]) -> None:
    try:
        parts = parse_byteranges(b"".join(pieces), "b")
    except MultipartError:
        return
    for part in parts:
        assert len(part.data) == part.end - part.start + 1


@given(st.text(max_size=100))
def test_arbitrary_content_range_only_raises_multipart_error(value: str) -> None:
    try:
        start, end, total = parse_content_range(value)
    except MultipartError:
        return
    assert 0 <= start <= end and (total is None or end < total)


@given(st.text(max_size=100))
def test_arbitrary_content_type_only_raises_multipart_error(value: str) -> None:
    try:
        boundary_from_content_type(value)
    except MultipartError:
        pass
    try:
        boundary_from_content_type("multipart/byteranges;" + value)
    except MultipartError:
        pass
