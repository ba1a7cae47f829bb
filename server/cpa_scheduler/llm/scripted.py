"""The scripted provider: answers read from a YAML file, for demos and for users without a model.

Each entry answers the prompts it matches: `prompt_sha256` (the hash of the whole prompt, see
prompt_hash; exact entries are tried first) or `pattern` (an RE2 regex, case-insensitive,
searched in the last user message; entries in file order, the first match wins), optionally
only for calls of one `schema` (the pydantic model's class name; without it an entry answers
any call, free text included). It gives
`answer` (text, or YAML data sent as JSON: a structured call parses it into the schema asked
for) or raises `error` (refused, truncated, bad_answer, unavailable, timeout), so demos can show
the fallbacks. A prompt no entry matches is an LLMNotConfiguredError naming its hash: the
provider never makes an answer up. Embeddings are the lexical HashingEmbedder's.

    answers:
      - pattern: 'invoice .* mail'
        answer: {intent: download_and_mail, confidence: 0.9}
      - prompt_sha256: 3f5a…   # printed by the error for an unmatched prompt
        error: refused
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..planning.catalog_yaml import CatalogError, Locator, parse_yaml
from ..planning.patterns import Matcher, PatternError, compile_regex
from ..telemetry import timed
from .exchange_log import log_exchange
from .hashing_embedder import DEFAULT_DIMENSION, HashingEmbedder
from .interface import (
    Completion,
    Embeddings,
    LLMBadAnswerError,
    LLMError,
    LLMNotConfiguredError,
    LLMRefusedError,
    LLMTimeoutError,
    LLMTruncatedError,
    LLMUnavailableError,
    Message,
    StructuredCompletion,
)

T = TypeVar("T", bound=BaseModel)

NAME = "scripted"
MODEL = "scripted"
# A script is a hand-written file: a few hundred entries. Larger is a mistake, or an attack on
# the parser; refused before it is read.
MAX_SCRIPT_BYTES = 1024 * 1024
MAX_ENTRIES = 1000

_ERRORS: dict[str, type[LLMError]] = {
    "refused": LLMRefusedError,
    "truncated": LLMTruncatedError,
    "bad_answer": LLMBadAnswerError,
    "unavailable": LLMUnavailableError,
    "timeout": LLMTimeoutError,
}


class ScriptError(LLMNotConfiguredError):
    """A script that cannot be used; the message reads `<file>:<line>: <where>: <problem>`."""


def prompt_hash(messages: Sequence[Message]) -> str:
    """SHA-256 (hex) of the prompt: its messages' roles and texts as compact JSON."""
    canonical = json.dumps(
        [[m.role, m.content] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def last_user_message(messages: Sequence[Message]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


class _EntrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    pattern: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    # `schema` in the file (a field named so would shadow BaseModel.schema).
    schema_: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        default=None, alias="schema"
    )
    answer: Any = None
    error: Literal["refused", "truncated", "bad_answer", "unavailable", "timeout"] | None = None
    message: Annotated[str, StringConstraints(max_length=4096)] = ""


class _ScriptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    answers: list[_EntrySpec] = Field(max_length=MAX_ENTRIES)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptEntry:
    """One answer of the script (its text, or the error it raises), and where it was written."""

    line: int
    answer: str | None
    error: str | None
    message: str
    schema: str | None
    matcher: Matcher | None = None

    def applies_to(self, schema: str | None) -> bool:
        return self.schema is None or self.schema == schema


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    by_hash: dict[tuple[str, str | None], ScriptEntry]
    """By (hash, schema); schema None: any call."""
    by_pattern: tuple[ScriptEntry, ...]

    def find(self, messages: Sequence[Message], schema: str | None) -> ScriptEntry | None:
        """The entry answering this prompt in a call for `schema` (None: free text)."""
        digest = prompt_hash(messages)
        entry = self.by_hash.get((digest, schema)) or self.by_hash.get((digest, None))
        if entry is not None and entry.applies_to(schema):
            return entry
        text = last_user_message(messages)
        return next(
            (
                e
                for e in self.by_pattern
                if e.applies_to(schema) and e.matcher and e.matcher.search(text)
            ),
            None,
        )


def load_script(path: str | Path) -> Script:
    """Read and check a script file; ScriptError names file, line and field of any problem."""
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_SCRIPT_BYTES:
            raise ScriptError(f"{source}: {size} bytes; a script may have {MAX_SCRIPT_BYTES}")
        raw = Path(path).read_bytes()
    except OSError as error:
        raise ScriptError(f"{source}: cannot read the script ({error.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ScriptError(f"{source}:{line}: not UTF-8 ({error.reason})") from None
    return parse_script(text, source=source)


def parse_script(text: str, *, source: str = "<string>") -> Script:
    try:
        return _parse(text, source)
    except CatalogError as error:
        raise ScriptError(str(error)) from None


def _parse(text: str, source: str) -> Script:
    data, lines = parse_yaml(
        text, source=source, empty="the script is empty; expected a mapping with an 'answers' list"
    )
    locator = Locator(source=source, data=data, lines=lines)
    try:
        spec = _ScriptSpec.model_validate(data)
    except ValidationError as error:
        raise locator.schema_error(error) from None
    by_hash: dict[tuple[str, str | None], ScriptEntry] = {}
    by_pattern: list[ScriptEntry] = []
    for index, item in enumerate(spec.answers):
        path = ("answers", index)
        line = lines.line_of(path)
        if (item.prompt_sha256 is None) == (item.pattern is None):
            raise locator.error(path, "give exactly one of 'prompt_sha256' and 'pattern'")
        if (item.answer is None) == (item.error is None):
            raise locator.error(path, "give exactly one of 'answer' and 'error'")
        answer = None if item.answer is None else _answer_text(item.answer)
        if answer == "":
            raise locator.error((*path, "answer"), "the answer is empty")
        if answer is None and item.answer is not None:
            raise locator.error(
                (*path, "answer"),
                "the answer holds a value JSON cannot carry (a date, binary, NaN or infinity): "
                "quote it",
            )
        entry = ScriptEntry(
            line=line,
            answer=answer,
            error=item.error,
            message=item.message,
            schema=item.schema_,
        )
        if item.pattern is not None:
            try:
                matcher = compile_regex(item.pattern)
            except PatternError as error:
                raise locator.error((*path, "pattern"), str(error)) from None
            by_pattern.append(replace(entry, matcher=matcher))
        elif item.prompt_sha256 is not None:
            key = (item.prompt_sha256, item.schema_)
            if key in by_hash:
                raise locator.error(
                    (*path, "prompt_sha256"),
                    f"the same hash (and schema) is answered on line {by_hash[key].line}",
                )
            by_hash[key] = entry
    return Script(source=source, by_hash=by_hash, by_pattern=tuple(by_pattern))


def _answer_text(answer: Any) -> str | None:
    """The answer as text: a string as it is, data as JSON; None for data JSON cannot carry."""
    if isinstance(answer, str):
        return answer
    try:
        return json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError):
        return None


class ScriptedProvider:
    """LLMProvider answering from a Script; embeddings from a HashingEmbedder."""

    def __init__(self, script: Script, *, embedding_dimension: int = DEFAULT_DIMENSION) -> None:
        self._script = script
        self._embedder = HashingEmbedder(embedding_dimension)

    @classmethod
    def from_file(cls, path: str | Path, *, embedding_dimension: int = 0) -> ScriptedProvider:
        return cls(load_script(path), embedding_dimension=embedding_dimension or DEFAULT_DIMENSION)

    @property
    def name(self) -> str:
        return NAME

    def _answer(
        self, operation: str, messages: Sequence[Message], schema: str | None
    ) -> tuple[str, ScriptEntry]:
        entry = self._script.find(messages, schema)
        where = f"{self._script.source}:{entry.line}" if entry else ""
        log_exchange(NAME, operation, messages, entry.answer if entry else None)
        if entry is None:
            raise LLMNotConfiguredError(
                f"the script {self._script.source} has no answer for this prompt (schema "
                f"{schema or 'none: free text'}; no pattern matches its last user message; "
                f"prompt_sha256: {prompt_hash(messages)})"
            )
        if entry.error is not None:
            raise _ERRORS[entry.error](entry.message or f"scripted {entry.error} ({where})")
        assert entry.answer is not None  # parse_script: an entry has an answer or an error
        return entry.answer, entry

    async def generate(
        self, messages: Sequence[Message], *, timeout_s: float | None = None
    ) -> Completion:
        with timed("llm_call", "generate", provider=NAME, model=MODEL):
            text, _ = self._answer("generate", messages, None)
            return Completion(text=text, model=MODEL)

    async def generate_structured(
        self, messages: Sequence[Message], schema: type[T], *, timeout_s: float | None = None
    ) -> StructuredCompletion[T]:
        with timed("llm_call", "generate_structured", provider=NAME, model=MODEL):
            text, entry = self._answer("generate_structured", messages, schema.__name__)
            try:
                value = schema.model_validate_json(text)
            except ValidationError as error:
                problem = error.errors(include_url=False)[0]
                raise LLMBadAnswerError(
                    f"{self._script.source}:{entry.line}: the scripted answer is not a "
                    f"{schema.__name__}: {'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                ) from None
            return StructuredCompletion(value=value, raw=text, model=MODEL)

    async def embed(self, texts: Sequence[str], *, timeout_s: float | None = None) -> Embeddings:
        with timed("llm_call", "embed", provider=NAME, model=self._embedder.model) as timing:
            timing.counts["texts"] = len(texts)
            return await self._embedder.embed(texts)

    async def aclose(self) -> None:
        return None
