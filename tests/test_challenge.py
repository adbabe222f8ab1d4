"""Tests of WWW-Authenticate parsing (lazyfs.oci.challenge)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.oci.challenge import (
    Challenge,
    parse_www_authenticate,
    parse_www_authenticate_headers,
)


def test_docker_hub_bearer() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/ubuntu:pull"'
    )
    [challenge] = parse_www_authenticate(header)
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.service == "registry.docker.io"
    assert challenge.scope == "repository:library/ubuntu:pull"


def test_docker_hub_insufficient_scope() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push",error="insufficient_scope"'
    )
    [challenge] = parse_www_authenticate(header)
    assert challenge.scope == "repository:library/busybox:pull,push"
    assert challenge.params["error"] == "insufficient_scope"


def test_ghcr() -> None:
    header = 'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:o/i:pull"'
    [challenge] = parse_www_authenticate(header)
    assert (challenge.realm, challenge.service, challenge.scope) == (
        "https://ghcr.io/token",
        "ghcr.io",
        "repository:o/i:pull",
    )


def test_distribution_basic_realm() -> None:
    assert parse_www_authenticate('Basic realm="Registry Realm"') == [
        Challenge("basic", {"realm": "Registry Realm"})
    ]


def test_absent_params_are_none() -> None:
    [challenge] = parse_www_authenticate("Bearer")
    assert challenge == Challenge("bearer")
    assert challenge.realm is None and challenge.service is None and challenge.scope is None


def test_several_challenges_in_one_header() -> None:
    challenges = parse_www_authenticate('Bearer realm="a",service="b", Basic realm="c"')
    assert challenges == [
        Challenge("bearer", {"realm": "a", "service": "b"}),
        Challenge("basic", {"realm": "c"}),
    ]


def test_repeated_headers_joined_and_separate() -> None:
    lines = ['Bearer realm="https://r/token",service="svc"', 'Basic realm="x"']
    expected = [
        Challenge("bearer", {"realm": "https://r/token", "service": "svc"}),
        Challenge("basic", {"realm": "x"}),
    ]
    assert parse_www_authenticate(", ".join(lines)) == expected
    assert parse_www_authenticate_headers(lines) == expected
    assert parse_www_authenticate_headers([]) == []


def test_unterminated_quote_in_one_line_does_not_swallow_the_next() -> None:
    challenges = parse_www_authenticate_headers(['Bearer realm="broken', 'Basic realm="ok"'])
    assert challenges == [Challenge("bearer"), Challenge("basic", {"realm": "ok"})]


def test_case_is_normalised_for_names_not_values() -> None:
    [challenge] = parse_www_authenticate('BEARER Realm="https://Auth/Token", SERVICE=Svc')
    assert challenge.scheme == "bearer"
    assert dict(challenge.params) == {"realm": "https://Auth/Token", "service": "Svc"}


def test_escapes_and_commas_inside_quoted_strings() -> None:
    header = r'Bearer realm="a\"b\\c,d", scope="repository:x:pull,push", service="s\vc"'
    [challenge] = parse_www_authenticate(header)
    assert challenge.realm == 'a"b\\c,d'
    assert challenge.scope == "repository:x:pull,push"
    assert challenge.service == "svc"


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="r",service="s"',
        'Bearer realm = "r" , service = "s"',
        'Bearer  realm="r",   service="s"  ',
        '\t Bearer\trealm="r",\tservice="s"',
        'Bearer realm="r",,, service="s",',
        'Bearer realm="r" service="s"',
        'Bearer realm="r",\r\n service="s"',
        "Bearer realm=r,service=s",
    ],
)
def test_whitespace_and_separator_variations(header: str) -> None:
    assert parse_www_authenticate(header) == [Challenge("bearer", {"realm": "r", "service": "s"})]


def test_unquoted_url_value_is_tolerated() -> None:
    [challenge] = parse_www_authenticate("Bearer realm=https://host/token?x=1,service=host")
    assert challenge.realm == "https://host/token?x=1"
    assert challenge.service == "host"


def test_token68_is_stored_under_empty_key() -> None:
    challenges = parse_www_authenticate("Negotiate YIIGhgYGKwYB==, Basic realm=x")
    assert challenges == [
        Challenge("negotiate", {"": "YIIGhgYGKwYB=="}),
        Challenge("basic", {"realm": "x"}),
    ]
    assert parse_www_authenticate("Custom abc/def+g") == [Challenge("custom", {"": "abc/def+g"})]


def test_first_occurrence_of_a_parameter_wins() -> None:
    [challenge] = parse_www_authenticate('Bearer realm="first", REALM="second"')
    assert challenge.realm == "first"


def test_missing_comma_between_challenges() -> None:
    assert parse_www_authenticate('Basic realm="a" Bearer realm="b"') == [
        Challenge("basic", {"realm": "a"}),
        Challenge("bearer", {"realm": "b"}),
    ]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", []),
        ("   ,  , ", []),
        ("=", []),
        ('"just a string"', []),
        ("realm=x", []),
        ('@@@, Basic realm="x"', [Challenge("basic", {"realm": "x"})]),
        ('Bearer realm="unterminated', [Challenge("bearer")]),
        (
            'Bearer realm="a", ==, service="s"',
            [Challenge("bearer", {"realm": "a", "service": "s"})],
        ),
        ('Bearer realm="a\\', [Challenge("bearer")]),
        (
            "Bearer realm=\x00\x01, Basic",
            [Challenge("bearer", {"realm": "\x00\x01"}), Challenge("basic")],
        ),
        ("Bäsic realm=x, Basic realm=y", [Challenge("basic", {"realm": "y"})]),
        (
            'Bearer realm="a", x@y, a/b, service="s"',
            [Challenge("bearer", {"realm": "a", "service": "s"})],
        ),
    ],
)
def test_garbage(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_non_string_input_gives_nothing() -> None:
    assert parse_www_authenticate(None) == []  # type: ignore[arg-type]
    assert parse_www_authenticate(b"Basic realm=x") == []  # type: ignore[arg-type]


def test_challenge_is_normalised_and_read_only() -> None:
    challenge = Challenge("BeArEr", {"Realm": "r"})
    assert challenge.scheme == "bearer"
    assert challenge.realm == "r"
    with pytest.raises(TypeError):
        challenge.params["realm"] = "x"  # type: ignore[index]
    assert hash(challenge) == hash(Challenge("bearer", {"realm": "r"}))
    assert repr(challenge) == "Challenge(scheme='bearer', params={'realm': 'r'})"


@pytest.mark.parametrize(
    "header",
    [
        '"' * 200_000,
        "\\" * 200_000,
        "a" * 200_000,
        "a=" * 100_000,
        "a " * 100_000,
        'Bearer realm="' + "\\x" * 100_000,
        "Bearer " + "realm=x," * 25_000,
        "," * 200_000,
        "=" * 200_000,
        '@"' * 100_000,
    ],
)
def test_long_inputs_take_linear_time(header: str) -> None:
    started = time.perf_counter()
    parse_www_authenticate(header)
    assert time.perf_counter() - started < 1.0


_ALPHABET = st.sampled_from(list(' \t\r\n,;="\\/=abcBearerBasicrealm:é\x00'))


@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    for challenge in parse_www_authenticate(text):
        assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
        assert all(key == key.lower() for key in challenge.params)


@given(st.lists(st.one_of(_ALPHABET, st.sampled_from(["Bearer ", 'realm="', '", '])), max_size=60))
def test_header_like_text_never_raises(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert isinstance(parse_www_authenticate(text), list)
    assert isinstance(parse_www_authenticate_headers([text, text]), list)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,8}", fullmatch=True),
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                st.text(max_size=20),
                max_size=4,
            ),
        ),
        max_size=4,
    )
)
def test_quoted_params_round_trip(challenges: list[tuple[str, dict[str, str]]]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = ", ".join(
        scheme + (" " if params else "") + ", ".join(f"{k}={quote(v)}" for k, v in params.items())
        for scheme, params in challenges
    )
    assert parse_www_authenticate(header) == [Challenge(s, p) for s, p in challenges]
