"""LLM intent router: the model classifies text into one of the catalog's intents, with a
confidence and the parameters it read. Its answer is a suggestion: an intent the catalog lacks,
a confidence below the threshold, any provider error or a timeout leave the decision to the
rule router (see Planner), and the plan records why."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cpa_scheduler.llm.interface import LLMError, LLMProvider, Message, Usage

from .intent_catalog import UNKNOWN_INTENT, IntentCatalog
from .prompts import Prompts


class ParameterValue(BaseModel):
    """One parameter the request states (a list, not an object: strict structured output
    needs a fixed schema)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=63)
    value: str = Field(max_length=2048)


class IntentChoice(BaseModel):
    """The model's classification."""

    model_config = ConfigDict(extra="forbid")

    intent: str = Field(max_length=128)
    confidence: float = Field(ge=0, le=1)
    parameters: list[ParameterValue] = Field(default_factory=list, max_length=32)


@dataclass(frozen=True, slots=True, kw_only=True)
class Classification:
    """What the LLM router made of a text: `intent` is a catalog intent the model is sure
    enough of, else None with `reason` saying why the rules decide."""

    intent: str | None
    parameters: dict[str, str]
    confidence: float
    reason: str
    usage: Usage
    messages: tuple[Message, ...]


class LLMIntentRouter:
    """Asks the model which intent a text means."""

    __slots__ = ("_catalog", "_min_confidence", "_prompts", "_provider")

    def __init__(
        self, provider: LLMProvider, catalog: IntentCatalog, *, min_confidence: float
    ) -> None:
        self._provider = provider
        self._catalog = catalog
        self._prompts = Prompts.of(catalog)
        self._min_confidence = min_confidence

    async def classify(self, text: str, *, timeout_s: float) -> Classification:
        messages = tuple(self._prompts.classification(text))
        try:
            answer = await self._provider.generate_structured(
                messages, IntentChoice, timeout_s=timeout_s
            )
        except LLMError as error:
            return Classification(
                intent=None,
                parameters={},
                confidence=0.0,
                reason=f"LLM router failed ({type(error).__name__}: {error})",
                usage=error.usage,
                messages=messages,
            )
        choice = answer.value
        parameters = {item.name: item.value for item in choice.parameters}
        decided = Classification(
            intent=None,
            parameters=parameters,
            confidence=choice.confidence,
            reason="",
            usage=answer.usage,
            messages=messages,
        )
        shown = choice.intent[:64]
        if choice.confidence < self._min_confidence:
            reason = (
                f"LLM router's confidence {choice.confidence:.2f} in {shown!r} is below "
                f"{self._min_confidence:.2f}"
            )
            return dataclasses.replace(decided, reason=reason)
        if choice.intent == UNKNOWN_INTENT:
            return dataclasses.replace(decided, reason="LLM router: no intent fits")
        if self._catalog.get(choice.intent) is None:
            return dataclasses.replace(decided, reason=f"LLM router named {shown!r}, not an intent")
        return dataclasses.replace(
            decided,
            intent=choice.intent,
            reason=f"LLM router chose {choice.intent!r} with confidence {choice.confidence:.2f}",
        )
