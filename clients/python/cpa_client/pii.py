"""PII detectors: IBAN (mod-97), card numbers (Luhn), e-mail, phone, German tax id (Steuer-ID).

Pure text in, findings (or the redacted text) out: the scheduler's policy (cpa_scheduler.policy)
and every process's log lines (cpa_client.telemetry: scheduler, agent, CLI) use these same rules,
which is why they live in the package both sides may import (docs/OBSERVABILITY.md, "Logs").

Each detector is an RE2 pattern (linear in the text, whatever it holds: no ReDoS) that finds
candidates, and, where the kind has one, a checksum that confirms them: a string shaped like an
IBAN whose check digits are wrong is not reported. Findings never carry the value in clear
outside this module's callers: `Finding.sample` is a masked form for messages and the CLI.
It needs google-re2 (the extra `cpa-client[logs]`), imported with this module only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.case_sensitive = True


class _Match(Protocol):
    def start(self) -> int: ...
    def end(self) -> int: ...
    def group(self) -> str | bytes: ...


class _Matcher(Protocol):
    @property
    def pattern(self) -> str: ...
    def finditer(self, text: str | bytes) -> Iterator[_Match]: ...
    def search(self, text: str | bytes) -> _Match | None: ...


class Detector(enum.StrEnum):
    """The kinds of PII the policy can look for (their names in policy files and messages)."""

    IBAN = "iban"
    CARD = "card"
    STEUER_ID = "steuer_id"
    EMAIL = "email"
    PHONE = "phone"


@dataclass(frozen=True, slots=True)
class Finding:
    """One confirmed piece of PII in a string: its kind, where it is, and a masked sample."""

    detector: Detector
    start: int
    end: int
    sample: str

    @property
    def label(self) -> str:
        """What replaces the value when it is redacted: `[REDACTED:IBAN]`."""
        return f"[REDACTED:{self.detector.value.upper()}]"


def mask(value: str) -> str:
    """A sample that shows the shape, not the value: the first two and last two characters kept
    (of at least 8), the rest as '*'."""
    if len(value) < 8:
        return "*" * len(value)
    return value[:2] + "*" * (len(value) - 4) + value[-2:]


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def iban_valid(candidate: str) -> bool:
    """ISO 13616: 15-34 letters and digits, two letters, two check digits; the number with its
    first four characters moved to the end, letters as 10..35, is 1 modulo 97."""
    value = candidate.replace(" ", "").upper()
    if not 15 <= len(value) <= 34 or not value[:2].isalpha() or not value[2:4].isdigit():
        return False
    if not value.isascii() or not value.isalnum():
        return False
    rearranged = value[4:] + value[:4]
    remainder = 0
    for char in rearranged:
        # int(char, 36): '0'-'9' are 0-9, 'A'-'Z' 10-35; a letter adds two digits.
        number = int(char, 36)
        remainder = (remainder * (100 if number > 9 else 10) + number) % 97
    return remainder == 1


def luhn_valid(candidate: str) -> bool:
    """A card number: 13-19 digits starting 2-6 (the issuers' ranges) whose Luhn sum is 0 mod 10."""
    digits = _digits(candidate)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        number = int(char)
        if index % 2 == 1:
            number = number * 2 - 9 if number > 4 else number * 2
        total += number
    return total % 10 == 0


def steuer_id_valid(candidate: str) -> bool:
    """The German tax id (Steuerliche Identifikationsnummer): 11 digits, the first not 0. In the
    first ten, exactly one digit occurs twice or three times (three times not all in a row) and
    every other at most once; the eleventh is the ISO 7064 MOD 11,10 check digit of the ten."""
    digits = _digits(candidate)
    if len(digits) != 11 or digits[0] == "0":
        return False
    body = digits[:10]
    counts = {d: body.count(d) for d in set(body)}
    repeated = [d for d, n in counts.items() if n > 1]
    if len(repeated) != 1 or counts[repeated[0]] > 3:
        return False
    if counts[repeated[0]] == 3 and repeated[0] * 3 in body:
        return False
    product = 10
    for char in body:
        total = (int(char) + product) % 10 or 10
        product = (total * 2) % 11
    check = (11 - product) % 10
    return check == int(digits[10])


def _phone_valid(candidate: str) -> bool:
    # E.164 allows at most 15 digits; fewer than 7 is a number, not a phone number.
    return 7 <= len(_digits(candidate)) <= 15


def _always(candidate: str) -> bool:
    return True


def _compile(pattern: str) -> _Matcher:
    matcher: _Matcher = re2.compile(pattern, _OPTIONS)
    return matcher


@dataclass(frozen=True, slots=True)
class _Spec:
    detector: Detector
    matcher: _Matcher
    confirm: Callable[[str], bool]
    # Shapes that may absorb a following word ("DE89 3704 ... 00 AB"): also try the candidate
    # with trailing space-separated groups dropped before giving up on it.
    trim_groups: bool = False
    # Its shape alone is distinctive: a candidate that fails the checksum still keeps later
    # detectors off its span (a mistyped IBAN is not reported as the phone number in its digits).
    claims_shape: bool = False


# Word boundaries (RE2's \b is ASCII, as the values are) keep a match from starting or ending
# inside a longer run of letters and digits. Order matters: a span taken by an earlier detector
# is not reported again by a later one (an IBAN's digits are not a phone number).
_SPECS: tuple[_Spec, ...] = (
    _Spec(
        Detector.IBAN,
        _compile(r"\b[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]){11,30}\b"),
        iban_valid,
        trim_groups=True,
        claims_shape=True,
    ),
    _Spec(Detector.CARD, _compile(r"\b[0-9](?:[ -]?[0-9]){12,18}\b"), luhn_valid),
    _Spec(Detector.STEUER_ID, _compile(r"\b[1-9](?: ?[0-9]){10}\b"), steuer_id_valid),
    _Spec(
        Detector.EMAIL,
        _compile(
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
        ),
        _always,
    ),
    _Spec(
        Detector.PHONE,
        # International (+49 or 0049) or national (0 and an area code), with the usual
        # separators; the digit count is checked after.
        _compile(
            r"(?:\+|\b00)[1-9][0-9]{0,3}(?:[ ./-]?\(?[0-9]{1,5}\)?)?(?:[ ./-]?[0-9]){4,12}\b"
            r"|\b0[1-9][0-9]{1,4}(?: ?/ ?|[ -])?[0-9](?:[ -]?[0-9]){4,10}\b"
        ),
        _phone_valid,
    ),
)

ALL_DETECTORS: frozenset[Detector] = frozenset(Detector)


def _confirmed(spec: _Spec, text: str, start: int, end: int) -> int | None:
    """The end of the confirmed value starting at `start` (at most `end`), or None."""
    if spec.confirm(text[start:end]):
        return end
    if spec.trim_groups:
        cut = text.rfind(" ", start, end)
        while cut > start:
            if spec.confirm(text[start:cut]):
                return cut
            cut = text.rfind(" ", start, cut)
    return None


def _any_candidate(detectors: frozenset[Detector]) -> _Matcher:
    """One RE2 pattern, the union of the detectors' own: a text it finds nothing in holds no
    candidate of any of them, so most strings (names, ids, amounts) cost one pass, not one per
    detector."""
    union = _UNIONS.get(detectors)
    if union is None:
        patterns = (s.matcher.pattern for s in _SPECS if s.detector in detectors)
        union = _compile("|".join(f"(?:{pattern})" for pattern in patterns))
        _UNIONS[detectors] = union
    return union


# Per set of detectors (a policy's): at most one per subset of the five.
_UNIONS: dict[frozenset[Detector], _Matcher] = {}
# What scan() found in recent texts: a job's strings are scanned at submission, for each answer
# that shows the job (redaction) and at dispatch. Short texts only, a bounded number.
_MEMO_MAX_TEXTS = 4096
_MEMO_MAX_CHARS = 4096
_memo: dict[tuple[str, frozenset[Detector]], tuple[Finding, ...]] = {}


def scan(text: str, detectors: frozenset[Detector] = ALL_DETECTORS) -> list[Finding]:
    """The confirmed PII in `text`, in the detectors' order, no two findings overlapping."""
    if not text or not detectors:
        return []
    key = (text, detectors)
    found = _memo.get(key)
    if found is None:
        data = text.encode()  # once, for every pattern (re2 would encode it per call)
        found = _scan(text, data, detectors) if _any_candidate(detectors).search(data) else ()
        if len(text) <= _MEMO_MAX_CHARS:
            if len(_memo) >= _MEMO_MAX_TEXTS:
                _memo.clear()  # a new generation: cheaper than ordering entries by use
            _memo[key] = found
    return list(found)


def _scan(text: str, data: bytes, detectors: frozenset[Detector]) -> tuple[Finding, ...]:
    # The patterns run over `data`, the text's UTF-8 bytes (re2 would encode the text again for
    # each pattern and map every match's offsets back to characters). Matches start and end on
    # ASCII characters, so their byte offsets are character boundaries.
    ascii_only = len(data) == len(text)

    def chars(offset: int) -> int:
        return offset if ascii_only else len(data[:offset].decode())

    findings: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for spec in _SPECS:
        if spec.detector not in detectors:
            continue
        for match in spec.matcher.finditer(data):
            start, matched_end = chars(match.start()), chars(match.end())
            end = _confirmed(spec, text, start, matched_end)
            if end is None:
                if spec.claims_shape:
                    taken.append((start, matched_end))
                continue
            if any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            findings.append(Finding(spec.detector, start, end, mask(text[start:end])))
    return tuple(findings)


def redact(text: str, findings: Sequence[Finding]) -> str:
    """`text` with each finding replaced by its label (`[REDACTED:IBAN]`)."""
    result = []
    position = 0
    for finding in sorted(findings, key=lambda f: f.start):
        result.append(text[position : finding.start])
        result.append(finding.label)
        position = finding.end
    result.append(text[position:])
    return "".join(result)


def redact_all(text: str) -> str:
    """`text` with every finding of every detector replaced by its label: the rule for log
    lines, which have no tenant policy to allow anything."""
    findings = scan(text)
    return redact(text, findings) if findings else text
