"""Script files people write, and hostile ones: every problem is a ScriptError naming file, line
and field, read in bounded time; nothing else escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpa_scheduler.llm import LLMNotConfiguredError
from cpa_scheduler.llm.scripted import (
    MAX_ENTRIES,
    MAX_SCRIPT_BYTES,
    ScriptError,
    load_script,
    parse_script,
)
from cpa_scheduler.strict_yaml import MAX_YAML_DEPTH

HASH = "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", r"s\.yaml:1: the script is empty", id="empty"),
        pytest.param("answers: [", r"s\.yaml:1: YAML syntax error", id="syntax"),
        pytest.param("answers: x\n", r"s\.yaml:1: field 'answers': Input should be", id="type"),
        pytest.param("- a\n", r"s\.yaml:1: Input should be", id="not-a-mapping"),
        pytest.param(
            "answers:\n  - pattern: x\n    anwser: y\n",
            r"s\.yaml:3: field 'answers\[0\]\.anwser': unknown field",
            id="typo",
        ),
        pytest.param(
            "answers:\n  - pattern: 5\n    answer: y\n",
            r"s\.yaml:2: field 'answers\[0\]\.pattern': Input should be a valid string",
            id="pattern-not-text",
        ),
        pytest.param(
            "answers:\n  - answer: y\n",
            r"s\.yaml:2: field 'answers\[0\]': give exactly one of 'prompt_sha256' and 'pattern'",
            id="no-key",
        ),
        pytest.param(
            f"answers:\n  - pattern: x\n    prompt_sha256: {HASH}\n    answer: y\n",
            r"s\.yaml:2: .*exactly one of 'prompt_sha256' and 'pattern'",
            id="two-keys",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n",
            r"s\.yaml:2: .*exactly one of 'answer' and 'error'",
            id="no-answer",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    answer: y\n    error: refused\n",
            r"exactly one of 'answer' and 'error'",
            id="answer-and-error",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    error: exploded\n",
            r"s\.yaml:3: field 'answers\[0\]\.error': Input should be 'refused'",
            id="unknown-error",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    answer: ''\n",
            r"s\.yaml:3: field 'answers\[0\]\.answer': the answer is empty",
            id="empty-answer",
        ),
        pytest.param(
            "answers:\n  - prompt_sha256: ABC\n    answer: y\n",
            r"s\.yaml:2: field 'answers\[0\]\.prompt_sha256': String should match",
            id="bad-hash",
        ),
        pytest.param(
            f"answers:\n  - prompt_sha256: {HASH}\n    answer: y\n"
            f"  - prompt_sha256: {HASH}\n    answer: z\n",
            r"s\.yaml:4: .*the same hash \(and schema\) is answered on line 2",
            id="duplicate-hash",
        ),
        pytest.param(
            "answers:\n  - pattern: '(unclosed'\n    answer: y\n",
            r"s\.yaml:2: field 'answers\[0\]\.pattern': invalid regex",
            id="bad-regex",
        ),
        pytest.param(
            "answers:\n  - pattern: '(a)\\1'\n    answer: y\n",
            r"s\.yaml:2: field 'answers\[0\]\.pattern': .*linear time",
            id="backreference",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    answer: {when: 2026-03-01}\n",
            r"s\.yaml:3: .*JSON cannot carry",
            id="date-in-answer",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    answer: [.nan]\n",
            r"JSON cannot carry",
            id="nan-in-answer",
        ),
        pytest.param(
            "answers:\n  - &a {pattern: x, answer: y}\n  - *a\n",
            r"s\.yaml:3: alias \*a is not allowed",
            id="alias",
        ),
        pytest.param(
            "answers: []\nanswers: []\n",
            r"s\.yaml:2: duplicate key 'answers'",
            id="duplicate-key",
        ),
        pytest.param(
            "answers:\n  - pattern: x\n    answer: "
            + "[" * (MAX_YAML_DEPTH + 5)
            + "]" * (MAX_YAML_DEPTH + 5)
            + "\n",
            r"nested deeper than",
            id="deep",
        ),
    ],
)
def test_a_broken_script_names_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ScriptError, match=expected) as caught:
        parse_script(text, source="s.yaml")
    # The registry stops the start on it like on any missing configuration.
    assert isinstance(caught.value, LLMNotConfiguredError)


def test_too_many_entries_are_refused() -> None:
    entries = "".join(f"  - {{pattern: x{i}, answer: y}}\n" for i in range(MAX_ENTRIES + 1))
    with pytest.raises(ScriptError, match="answers"):
        parse_script("answers:\n" + entries, source="s.yaml")


def test_files_unreadable_huge_or_not_utf8_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match=r"missing\.yaml: cannot read"):
        load_script(tmp_path / "missing.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (MAX_SCRIPT_BYTES + 1))
    with pytest.raises(ScriptError, match=rf"huge\.yaml: {MAX_SCRIPT_BYTES + 1} bytes"):
        load_script(huge)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"answers:\n  - pattern: caf\xe9\n")
    with pytest.raises(ScriptError, match=r"latin\.yaml:2: not UTF-8"):
        load_script(latin)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    "answers:",
                    "  - pattern: ",
                    "    answer: ",
                    "    error: refused",
                    "    schema: X",
                    "    prompt_sha256: ",
                    "[",
                    "{",
                    "&a x",
                    "*a",
                    "'(?P<x>a)'",
                    "!!binary aGk=",
                    "!!python/object:os.system",
                    "? [a]",
                    ": ",
                    "- ",
                    "2026-01-01",
                    "\t",
                    "\n",
                ]
            ),
            max_size=20,
        ).map("".join),
    )
)
def test_any_text_is_a_script_or_a_script_error(text: str) -> None:
    problem = ""
    try:
        parse_script(text, source="fuzz.yaml")
    except ScriptError as error:
        problem = str(error)
    assert not problem or problem.startswith("fuzz.yaml")


def test_the_format_shown_in_the_docs_loads() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "LLM.md"
    block = doc.read_text().split("```yaml scripted-example\n", 1)[1].split("```", 1)[0]
    script = parse_script(block, source="LLM.md")
    assert len(script.by_pattern) == 2
    assert len(script.by_hash) == 1
