"""PII detectors: valid samples are found (masked), checksum-invalid look-alikes are not."""

from __future__ import annotations

import pytest
import re2

from cpa_scheduler.policy.pii import (
    Detector,
    iban_valid,
    luhn_valid,
    mask,
    redact,
    scan,
    steuer_id_valid,
)


def kinds(text: str) -> list[str]:
    return [finding.detector.value for finding in scan(text)]


@pytest.mark.parametrize(
    "text",
    [
        "DE89370400440532013000",
        "pay to DE89 3704 0044 0532 0130 00 today",
        "GB82 WEST 1234 5698 7654 32",
        "iban: fr1420041010050500013m02606",  # lower case is read as upper case
        # A following upper-case word is not taken for part of it.
        "DE89 3704 0044 0532 0130 00 AB",
    ],
)
def test_valid_iban_found(text: str) -> None:
    assert kinds(text) == ["iban"]


@pytest.mark.parametrize(
    "text",
    [
        "DE88370400440532013000",  # check digits 88 instead of 89
        "DE89 3704 0044 0532 0130 01",  # last digit changed
        "GB82 WEST 1234 5698 7654 33",
        # The digits of a mistyped IBAN are not reported as a phone number either.
        "IBAN: DE88 3704 0044 0532 0130 00.",
    ],
)
def test_iban_with_wrong_check_digits_is_no_finding(text: str) -> None:
    assert scan(text) == []


@pytest.mark.parametrize(
    "text",
    ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005", "card 6011111111111117"],
)
def test_card_passing_luhn_found(text: str) -> None:
    assert kinds(text) == ["card"]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # fails Luhn
        "378282246310006",
        "1234567812345670",  # passes Luhn, but no issuer starts with 1
        "order 2345678901234 shipped",
    ],
)
def test_card_failing_luhn_or_range_is_no_finding(text: str) -> None:
    assert scan(text) == []


@pytest.mark.parametrize("text", ["86095742719", "Steuer-ID 65929970489", "47036892816"])
def test_steuer_id_found(text: str) -> None:
    assert kinds(text) == ["steuer_id"]


@pytest.mark.parametrize(
    "text",
    [
        "86095742718",  # wrong check digit
        "06095742719",  # starts with 0
        "12345678903",  # no digit repeated in the first ten
        "11234567891",
        "11123456780",  # one digit three times in a row
        "11223456789",  # two digits repeated
    ],
)
def test_steuer_id_failing_its_rules_is_no_finding(text: str) -> None:
    assert not steuer_id_valid(text)
    assert "steuer_id" not in kinds(text)


def test_steuer_id_check_digit_is_iso_7064_mod_11_10() -> None:
    # Every check digit but the right one is refused.
    assert [d for d in "0123456789" if steuer_id_valid("8609574271" + d)] == ["9"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+tag@mail.example.com please", ["email"]),
        ("call +49 30 1234567", ["phone"]),
        ("call 0049 (30) 1234-567", ["phone"]),
        ("office 030 1234567", ["phone"]),
        ("mobile 0171/2345678", ["phone"]),
        ("version 1.2.3, 2024-01-15, amount 12345", []),
        ("no at sign here", []),
    ],
)
def test_email_and_phone(text: str, expected: list[str]) -> None:
    assert kinds(text) == expected


def test_findings_are_masked_and_redacted() -> None:
    text = "IBAN DE89370400440532013000 mail jane@example.com"
    findings = scan(text)
    assert [f.sample for f in findings] == ["DE******************00", "ja************om"]
    assert redact(text, findings) == "IBAN [REDACTED:IBAN] mail [REDACTED:EMAIL]"
    assert mask("short") == "*****"


def test_only_the_selected_detectors_run() -> None:
    text = "DE89370400440532013000 jane@example.com"
    assert [f.detector for f in scan(text, frozenset({Detector.EMAIL}))] == [Detector.EMAIL]


def test_a_text_scanned_again_gets_the_same_findings_per_detector_set() -> None:
    """scan() remembers recent texts (a job's are scanned at submission, in each answer showing
    it, at dispatch): per set of detectors, and a caller changing its list changes nothing."""
    text = "DE89370400440532013000 jane@example.com"
    first = scan(text)
    first.clear()
    assert kinds(text) == ["iban", "email"]
    assert [f.detector for f in scan(text, frozenset({Detector.EMAIL}))] == [Detector.EMAIL]
    assert scan(text, frozenset({Detector.CARD})) == []
    # A text none of the detectors' patterns finds anything in costs one pass of their union.
    assert scan("Globex Handels GmbH, Hauptstraße 5, 80331 München") == []


def test_checksums() -> None:
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("DE89 3704 0044 0532 0130 0")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111121")


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000 + "@",
        "+1" + " -" * 100_000,
        "DE89 " * 50_000,
        "0" * 200_000,
        ("x." * 100_000) + "@",
    ],
)
@pytest.mark.timeout(20)
def test_hostile_texts_scan(text: str) -> None:
    # 200 KB of near-matches: RE2 is linear in the text, so this ends (the pytest timeout fails
    # a backtracking engine) and finds nothing.
    assert scan(text) == []


def test_detectors_are_re2_patterns() -> None:
    from cpa_client import pii

    assert all(isinstance(spec.matcher, re2._Regexp) for spec in pii._SPECS)
