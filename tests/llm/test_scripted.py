"""The scripted provider: answers by prompt hash and by pattern, scripted errors, no invented
answers, lexical embeddings, telemetry."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from cpa_scheduler.llm import (
    LLMBadAnswerError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
    Message,
    Usage,
)
from cpa_scheduler.llm.hashing_embedder import HashingEmbedder
from cpa_scheduler.llm.scripted import ScriptedProvider, parse_script, prompt_hash
from cpa_scheduler.telemetry import Operation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm" / "scripted.yaml"


class Route(BaseModel):
    intent: str
    confidence: float


def user(text: str) -> list[Message]:
    return [Message("system", "You route requests."), Message("user", text)]


HASHED = user("exactly this prompt")

SCRIPT = f"""
answers:
  - prompt_sha256: {prompt_hash(HASHED)}
    answer: {{intent: by_hash, confidence: 1.0}}
  - pattern: 'invoice .* (mail|send)'
    answer:
      intent: download_and_mail
      confidence: 0.9
  - pattern: 'invoice'
    answer: 'just text'
  - pattern: '^refuse me'
    error: refused
    message: scripted refusal for the demo
  - pattern: '^too long'
    error: truncated
  - pattern: '^busy'
    error: unavailable
  - pattern: '^slow'
    error: timeout
  - pattern: '^garbage'
    answer: '{{"intent": 3}}'
"""


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider(parse_script(SCRIPT, source="script.yaml"))


async def test_an_exact_prompt_is_answered_by_its_hash(provider: ScriptedProvider) -> None:
    result = await provider.generate_structured(HASHED, Route)
    assert result.value == Route(intent="by_hash", confidence=1.0)
    assert result.usage == Usage()


async def test_the_first_matching_pattern_answers_case_insensitively(
    provider: ScriptedProvider,
) -> None:
    result = await provider.generate_structured(user("Download the INVOICE and MAIL it"), Route)
    assert result.value == Route(intent="download_and_mail", confidence=0.9)
    assert result.raw == '{"intent": "download_and_mail", "confidence": 0.9}'
    text = await provider.generate(user("the invoice please"))
    assert text.text == "just text"


async def test_patterns_look_at_the_last_user_message_only(provider: ScriptedProvider) -> None:
    messages = [
        Message("system", "invoice and mail are actions"),
        Message("user", "invoice then mail"),
        Message("assistant", "ok"),
        Message("user", "something else"),
    ]
    with pytest.raises(LLMNotConfiguredError):
        await provider.generate(messages)


async def test_an_unmatched_prompt_is_an_error_naming_its_hash(
    provider: ScriptedProvider,
) -> None:
    prompt = user("book a flight")
    with pytest.raises(LLMNotConfiguredError, match=prompt_hash(prompt)) as caught:
        await provider.generate_structured(prompt, Route)
    assert "script.yaml" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("refuse me", LLMRefusedError),
        ("too long", LLMTruncatedError),
        ("busy", LLMUnavailableError),
        ("slow", LLMTimeoutError),
    ],
)
async def test_scripted_errors_are_the_typed_errors(
    provider: ScriptedProvider, text: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await provider.generate_structured(user(text), Route)


async def test_a_scripted_error_says_its_message_or_where_it_was_written(
    provider: ScriptedProvider,
) -> None:
    with pytest.raises(LLMRefusedError, match="scripted refusal for the demo"):
        await provider.generate(user("refuse me"))
    with pytest.raises(LLMTruncatedError, match=r"script\.yaml:\d+"):
        await provider.generate(user("too long"))


async def test_an_answer_that_is_not_the_schema_is_a_bad_answer(
    provider: ScriptedProvider,
) -> None:
    with pytest.raises(LLMBadAnswerError, match=r"script\.yaml:\d+: .* not a Route"):
        await provider.generate_structured(user("garbage"), Route)


async def test_embeddings_are_the_lexical_embedders(provider: ScriptedProvider) -> None:
    result = await provider.embed(["March invoice", "mail accounting"])
    embedder = HashingEmbedder()
    assert result.vectors == [embedder.vector("March invoice"), embedder.vector("mail accounting")]
    assert result.model == embedder.model
    sized = ScriptedProvider(parse_script(SCRIPT), embedding_dimension=32)
    assert len((await sized.embed(["x"])).vectors[0]) == 32


async def test_calls_are_telemetry_operations(
    provider: ScriptedProvider, operations: list[Operation]
) -> None:
    await provider.generate(user("the invoice"))
    with pytest.raises(LLMNotConfiguredError):
        await provider.generate(user("nothing matches"))
    await provider.embed(["a", "b"])
    ok, unmatched, embedded = operations
    assert (ok.kind, ok.name, ok.outcome) == ("llm_call", "generate", "ok")
    assert ok.labels == {"provider": "scripted", "model": "scripted"}
    assert unmatched.outcome == "LLMNotConfiguredError"
    assert (embedded.name, embedded.counts) == ("embed", {"texts": 2})


async def test_the_example_script_loads_and_answers() -> None:
    provider = ScriptedProvider.from_file(EXAMPLE)
    result = await provider.generate(
        user("download the March invoice from the supplier portal and mail it to accounting")
    )
    assert "download" in result.text


class Other(BaseModel):
    text: str


async def test_an_entry_with_a_schema_answers_only_calls_for_that_schema() -> None:
    prompt = user("the invoice")
    script = parse_script(
        f"""
answers:
  - prompt_sha256: {prompt_hash(prompt)}
    schema: Other
    answer: {{text: exact}}
  - pattern: invoice
    schema: Route
    answer: {{intent: routed, confidence: 1}}
  - pattern: invoice
    answer: free text
"""
    )
    provider = ScriptedProvider(script)
    assert (await provider.generate_structured(prompt, Other)).value == Other(text="exact")
    assert (await provider.generate_structured(prompt, Route)).value.intent == "routed"
    assert (await provider.generate(prompt)).text == "free text"
    with pytest.raises(LLMBadAnswerError, match="not a Other"):
        await provider.generate_structured(user("another invoice"), Other)
