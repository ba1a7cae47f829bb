"""Intent patterns: regexes and keywords matched against caller text in linear time, with RE2.

Python's `re` backtracks: the pattern `(?P<document>.+?)\\s+from\\s+portal\\b.*?\\bmail...` took
20 s on 8 KiB of "get from portal " (cubic in the length), on the event loop. RE2 (PyPI google-re2)
runs in time linear in the text whatever the pattern, so a catalog cannot hold a slow pattern; the
price is that RE2 has no backreferences and no lookarounds, so such patterns are refused when the
catalog is loaded. RE2 reads `\\w`, `\\d`, `\\s` and `\\b` as ASCII classes; `\\pL` is any letter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import re2

# Leftmost-first, like Perl and Python: the same text binds the same groups as under `re`.
_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False
# A refused pattern is reported by the catalog; RE2 would also print it to stderr.
_OPTIONS.log_errors = False

# What `(?<!\w)` / `(?!\w)` said under `re`, without lookarounds: a non-word character or an end.
_NOT_WORD = r"[^\p{L}\p{N}_]"


class Match(Protocol):
    def groupdict(self) -> dict[str, str | None]: ...


class Matcher(Protocol):
    """A compiled RE2 pattern (google-re2 ships no type information)."""

    @property
    def groupindex(self) -> Mapping[str, int]: ...

    def search(self, text: str) -> Match | None: ...


class PatternError(ValueError):
    """A pattern that is not valid, or that RE2 cannot match (backreference, lookaround)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pattern:
    """How an intent is recognised: a regex searched in the text, or keywords that all occur."""

    kind: Literal["regex", "keywords"]
    source: str
    compiled: tuple[Matcher, ...]
    line: int

    @property
    def description(self) -> str:
        return f"{self.kind}: {self.source}"

    def search(self, text: str) -> dict[str, str] | None:
        """The named groups a match binds (stripped, empty ones left out), or None if no match."""
        if self.kind == "keywords":
            return {} if all(keyword.search(text) for keyword in self.compiled) else None
        match = self.compiled[0].search(text)
        if match is None:
            return None
        groups = {name: value.strip() for name, value in match.groupdict().items() if value}
        return {name: value for name, value in groups.items() if value}


def compile_regex(source: str) -> Matcher:
    """The RE2 form of a catalog regex (case-insensitive); PatternError says why not."""
    try:
        matcher: Matcher = re2.compile(source, _OPTIONS)
    except re2.error as exc:
        try:
            re.compile(source)
        except re.error as invalid:
            raise PatternError(f"invalid regex: {invalid.msg} at position {invalid.pos}") from None
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise PatternError(
            f"regex {source!r} cannot be matched in linear time ({detail}); backreferences "
            "and lookarounds are not supported: rewrite it without them"
        ) from None
    return matcher


def compile_keywords(keyword: str) -> Matcher:
    """A keyword (one or more words) as a whole-word match: "mail" does not match "email"."""
    words = keyword.split()
    if not words:
        raise PatternError("keyword is empty")
    # Any run of spaces between the words, Unicode ones too (RE2's \s is ASCII only).
    body = r"[\s\p{Z}]+".join(re2.escape(word) for word in words)
    return compile_regex(f"(?:^|{_NOT_WORD}){body}(?:{_NOT_WORD}|$)")
