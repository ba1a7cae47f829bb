"""Policy files: schema errors name file, line and field; hostile files are refused; a directory
loads per tenant with a fallback; a reload swaps all or nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpa_scheduler.domain import ToDo
from cpa_scheduler.policy import (
    MAX_POLICY_FILE_BYTES,
    Policies,
    PolicyFileError,
    load_policy,
    load_policy_dir,
    parse_policy,
)


def error_of(text: str) -> str:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text, source="acme.yaml")
    return caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "actions:\n  deny: [uia]\n  allow: [echo]\n",
            "acme.yaml:3: field 'actions.allow': unknown field",
        ),
        (
            "urls:\n  allow:\n    - ok.example\n    - 'bad host/'\n",
            "acme.yaml:4: field 'urls.allow[1]': a domain is",
        ),
        ("mail: {}\n", "acme.yaml:1: field 'mail.allow_domains': missing required field"),
        (
            "pii:\n  rules:\n    - field: params.x\n      action: shred\n",
            "acme.yaml:4: field 'pii.rules[0].action': Input should be 'allow', 'redact'",
        ),
        (
            "pii:\n  rules:\n    - field: 'params.steps[0]'\n      action: allow\n",
            "acme.yaml:3: field 'pii.rules[0].field': a field is",
        ),
        (
            "pii:\n  detectors: [iban, ssn]\n",
            "acme.yaml:2: field 'pii.detectors[1]': Input should be",
        ),
        ("version: 2\n", "acme.yaml:1: field 'version'"),
        ("- a list\n", "acme.yaml:1: a policy is a mapping"),
        ("", "acme.yaml:1: the policy is empty"),
        ("actions:\n  deny: [a]\nactions:\n  deny: [b]\n", "acme.yaml:3: duplicate key 'actions'"),
        ("urls: {allow: [a.example]\n", "acme.yaml:2: YAML syntax error"),
    ],
)
def test_errors_name_file_line_and_field(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_regexes_are_not_policy_syntax() -> None:
    # Hosts are names or '*.' suffixes; a regex is refused as a host, never compiled.
    assert "a domain is" in error_of("urls:\n  allow: ['(a+)+$']\n")


def test_hostile_files(tmp_path: Path) -> None:
    # Aliases (billion laughs) and deep nesting are refused while the YAML is composed.
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nurls: {allow: *b}\n"
    assert "alias *a is not allowed" in error_of(laughs)
    deep = "description: " + "[" * 200 + "]" * 200 + "\n"
    assert "nested deeper than" in error_of(deep)
    # Too large: refused before it is parsed, from text and from a file.
    huge = "description: '" + "x" * MAX_POLICY_FILE_BYTES + "'\n"
    assert "at most" in error_of(huge)
    path = tmp_path / "huge.yaml"
    path.write_text(huge)
    with pytest.raises(PolicyFileError, match="larger than"):
        load_policy(path)
    # Too many entries in one list.
    many = "actions:\n  deny:\n" + "".join(f"    - a{i}\n" for i in range(10_001))
    assert "actions.deny" in error_of(many)
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"description: caf\xe9\n")
    with pytest.raises(PolicyFileError, match=r"latin1.yaml:1: not UTF-8"):
        load_policy(path)


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text)


GOTO_EVIL = ToDo(id="go", action="playwright", params={"op": "goto", "url": "https://evil.net"})


def test_directory_per_tenant_with_fallback(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", "actions: {deny: [send_mail]}\n")
    write(tmp_path, "_default.yaml", "urls: {allow: [ok.example]}\n")
    write(tmp_path, "README.md", "not a policy\n")
    write(tmp_path, ".acme.yaml.swp", "garbage: [\n")
    policies = load_policy_dir(tmp_path)
    acme, other = policies.get("acme"), policies.get("globex")
    assert acme is not None
    assert other is not None
    assert acme.first_refusal(ToDo(id="m", action="send_mail")) is not None
    assert acme.first_refusal(GOTO_EVIL) is None  # its own file replaces the fallback
    assert other.first_refusal(GOTO_EVIL) is not None


def test_no_directory_means_no_policies() -> None:
    policies = Policies()
    assert policies.get("acme") is None
    assert policies.reload_if_changed() is False


def test_start_fails_on_a_broken_file(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", "actions: {deny: [uia]}\nbogus: 1\n")
    with pytest.raises(PolicyFileError, match=r"acme.yaml:2: field 'bogus': unknown field"):
        Policies(tmp_path)


def test_reload_swaps_on_change_and_keeps_policies_when_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "acme.yaml", "urls: {allow: [ok.example]}\n")
    policies = Policies(tmp_path)
    assert policies.reload_if_changed() is False  # nothing changed
    before = policies.get("acme")
    assert before is not None
    assert before.first_refusal(GOTO_EVIL) is not None

    write(tmp_path, "acme.yaml", "urls: {allow: [evil.net]}\n# longer now\n")
    assert policies.reload_if_changed() is True
    after = policies.get("acme")
    assert after is not None
    assert after.first_refusal(GOTO_EVIL) is None

    write(tmp_path, "acme.yaml", "urls: {allow: [evil.net]}\nunknown_rule: true\n# broken\n")
    assert policies.reload_if_changed() is False
    assert policies.get("acme") is after  # the policies in force stay
    assert "acme.yaml:2: field 'unknown_rule': unknown field" in caplog.text

    (tmp_path / "acme.yaml").unlink()
    assert policies.reload_if_changed() is True
    assert policies.get("acme") is None
