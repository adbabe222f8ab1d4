"""Parsing of HTTP ``WWW-Authenticate`` headers (RFC 7235, section 4.1).

A registry that wants credentials answers ``401`` with one or more challenges, for example::

    WWW-Authenticate: Bearer realm="https://auth.docker.io/token",service="registry.docker.io"
    WWW-Authenticate: Basic realm="Registry Realm"

The grammar (RFC 7235 section 2.1 and 4.1, with the list syntax of RFC 7230 section 7) is::

    WWW-Authenticate = 1#challenge
    challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param       = token BWS "=" BWS ( token / quoted-string )
    token68          = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="

Commas separate both challenges and the parameters of one challenge; an item after a comma is
a parameter when it has the form ``name=value`` and starts a new challenge otherwise.

The parser here is deliberately tolerant, because its input comes from arbitrary servers:

* it never raises; text it cannot make sense of is skipped up to the next comma that is not
  inside a quoted string, and the challenges that could be parsed are returned;
* it runs in time linear in the length of the input;
* scheme names and parameter names are lower-cased (both are case-insensitive); parameter
  values are kept as sent, with quoted-string escapes (``\\x`` stands for ``x``) resolved;
* a token68 (as in ``Negotiate YIIGhgYGKwYB==``) is stored under the parameter name ``""``;
* when a parameter occurs more than once in a challenge, the first occurrence wins;
* a parameter with an unterminated quoted string is dropped (a truncated ``realm`` is worse
  than none);
* an unquoted value extends to the next comma or whitespace, so that a server sending
  ``realm=https://host/token`` without the required quotes is still understood;
* a missing comma between two challenges or two parameters is tolerated
  (``Bearer realm="a" service="b"``);
* whitespace (SP, HTAB, and also CR and LF from folded header lines) is accepted around
  every separator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Challenge", "parse_www_authenticate", "parse_www_authenticate_headers"]


@dataclass(frozen=True, slots=True)
class Challenge:
    """One authentication challenge from a ``WWW-Authenticate`` header.

    ``scheme`` is the lower-cased authentication scheme (``"bearer"``, ``"basic"``, ...).
    ``params`` maps lower-cased parameter names to their values (quoted-string escapes
    resolved); a token68, if the challenge carried one, is stored under the key ``""``.
    The constructor normalises its arguments the same way (lower-cases the scheme and the
    parameter names) and stores ``params`` as a read-only mapping.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", self.scheme.lower())
        normalised: dict[str, str] = {}
        for key, value in self.params.items():
            normalised.setdefault(key.lower(), value)
        object.__setattr__(self, "params", MappingProxyType(normalised))

    def __repr__(self) -> str:
        return f"Challenge(scheme={self.scheme!r}, params={dict(self.params)!r})"

    @property
    def realm(self) -> str | None:
        """The ``realm`` parameter, or None when absent."""
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        """The ``service`` parameter (bearer token service), or None when absent."""
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        """The ``scope`` parameter (bearer token scope), or None when absent."""
        return self.params.get("scope")


# RFC 7230 tchar, plus "/" so that a token68 is read as one word.
_WORD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z/]+")
_OWS = re.compile(r"[ \t\r\n]*")
_BARE_VALUE = re.compile(r"[^,\s\"]+")
_QUOTED_SPECIAL = re.compile(r'["\\]')
_TO_COMMA_OR_QUOTE = re.compile(r'[^,"]*')
_WHITESPACE = " \t\r\n"


class _Parser:
    """Single left-to-right pass over one header value; every step consumes input."""

    __slots__ = ("after_scheme", "challenges", "current", "n", "pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.challenges: list[Challenge] = []
        # Scheme and parameters of the challenge being parsed, if any.
        self.current: tuple[str, dict[str, str]] | None = None
        # True right after "scheme 1*SP": the only place a token68 may appear.
        self.after_scheme = False

    def parse(self) -> list[Challenge]:
        text, n = self.text, self.n
        while True:
            self.skip_ows()
            if self.pos >= n:
                break
            char = text[self.pos]
            if char == ",":
                self.pos += 1
                self.after_scheme = False
                continue
            word = _WORD.match(text, self.pos)
            if word is None:
                self.skip_item()
                continue
            self.pos = word.end()
            self.handle_word(word.group())
        self.finish_challenge()
        return self.challenges

    def handle_word(self, word: str) -> None:
        """Treat ``word`` (just consumed) as a scheme, a parameter name or a token68."""
        text, n = self.text, self.n
        after_scheme, self.after_scheme = self.after_scheme, False
        end_of_word = self.pos
        self.skip_ows()
        if self.pos < n and text[self.pos] == "=":
            self.pos += 1
            self.skip_ows()
            follows = text[self.pos] if self.pos < n else ""
            if follows in ("", ",", "="):
                # "abc=" / "abc==": padding of a token68.
                self.pos = end_of_word
                while self.pos < n and text[self.pos] == "=":
                    self.pos += 1
                if after_scheme:
                    self.add_param("", word + text[end_of_word : self.pos])
                return
            if "/" in word:  # not a token, so not a parameter name
                self.skip_item()
                return
            if follows == '"':
                value = self.quoted_string()
            else:
                bare = _BARE_VALUE.match(text, self.pos)
                if bare is None:
                    self.skip_item()
                    return
                self.pos = bare.end()
                value = bare.group()
            if value is not None:
                self.add_param(word, value)
            return
        if after_scheme:
            # "Negotiate abc/def" - a token68 without padding.
            self.add_param("", word)
            return
        # A new challenge. The scheme must be a token, ended by whitespace, a comma or the end;
        # anything else is garbage, skipped without ending the current challenge.
        glued = end_of_word == self.pos and self.pos < n and text[self.pos] != ","
        if "/" in word or glued:
            self.skip_item()
            return
        self.finish_challenge()
        self.current = (word, {})
        self.after_scheme = end_of_word < self.pos and self.pos < n and text[self.pos] != ","

    def add_param(self, name: str, value: str) -> None:
        if self.current is not None:
            self.current[1].setdefault(name.lower(), value)

    def finish_challenge(self) -> None:
        if self.current is not None:
            scheme, params = self.current
            self.challenges.append(Challenge(scheme, params))
            self.current = None

    def skip_ows(self) -> None:
        match = _OWS.match(self.text, self.pos)
        self.pos = match.end() if match else self.pos

    def quoted_string(self) -> str | None:
        """Consume a quoted string starting at ``pos``; None if it is unterminated."""
        text, n = self.text, self.n
        pos = self.pos + 1  # skip the opening quote
        pieces: list[str] = []
        while True:
            special = _QUOTED_SPECIAL.search(text, pos)
            if special is None:
                self.pos = n
                return None
            index = special.start()
            pieces.append(text[pos:index])
            if text[index] == '"':
                self.pos = index + 1
                return "".join(pieces)
            if index + 1 >= n:
                self.pos = n
                return None
            pieces.append(text[index + 1])
            pos = index + 2

    def skip_item(self) -> None:
        """Skip unparsable text up to the next comma outside a quoted string."""
        text, n = self.text, self.n
        self.after_scheme = False
        while self.pos < n:
            run = _TO_COMMA_OR_QUOTE.match(text, self.pos)
            self.pos = run.end() if run else self.pos
            if self.pos >= n or text[self.pos] == ",":
                return
            self.quoted_string()


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse one ``WWW-Authenticate`` header value into its challenges, in order.

    Several challenges in one value (``Bearer realm="a",service="b", Basic realm="c"``) and
    repeated headers joined with ``", "`` are both handled. Never raises; returns the
    challenges that could be parsed, possibly none. See the module docstring for the exact
    tolerances.
    """
    if not isinstance(value, str):
        return []
    return _Parser(value).parse()


def parse_www_authenticate_headers(values: Iterable[str]) -> list[Challenge]:
    """Parse several ``WWW-Authenticate`` header lines; the challenges of all, in order.

    Each line is parsed on its own, so that damage in one line (an unterminated quoted
    string, say) cannot swallow the challenges of the next. Never raises.
    """
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(parse_www_authenticate(value))
    return challenges
