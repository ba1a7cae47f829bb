"""Rule-based intent router: matches text against a catalog's patterns and renders the tasks.

Routing rule (simple and deterministic): intents are tried in catalog order, within an intent its
patterns in order, and the first pattern that matches wins; specific intents belong first.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cpa_scheduler.domain.errors import InvalidArgument, Reason
from cpa_scheduler.domain.todo import ToDo

from .intent_catalog import UNKNOWN_INTENT, Intent, IntentCatalog
from .templates import RenderLimits

# Natural-language requests are short. Matching is linear (RE2), but ranking the closest intents
# of unmatched text compares every word with every intent's terms: the cap bounds both.
DEFAULT_MAX_TEXT_BYTES = 1024

CANDIDATE_LIMIT = 3

# Words that say nothing about which intent is meant; they would only add noise to the ranking.
_STOPWORDS = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "into", "is", "it", "me", "my"}
    | {"of", "on", "or", "please", "the", "this", "to", "with"}
)
_WORD = re.compile(r"[^\W_]+")
# Below this similarity two words count as different ("send" vs "invoice"), not as a near-miss.
_WORD_SIMILARITY_FLOOR = 0.6
_TERM_WEIGHT = 0.75
# How many distinct words of a text the ranking of unmatched text compares (see closest).
_RANKED_WORDS = 24
# How much of an unknown intent name is compared with the catalog's names for suggestions.
_NAME_COMPARED = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An intent the text may have meant, with a similarity score between 0 and 1."""

    intent: str
    score: float
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteResult:
    """The outcome of routing text: the intent and its rendered tasks, or `unknown` with candidates.

    `candidates` is empty when an intent matched; for `unknown` it ranks the closest intents.
    """

    intent: str
    parameters: dict[str, Any] = field(default_factory=dict)
    todos: tuple[ToDo, ...] = ()
    matched_pattern: str = ""
    candidates: tuple[Candidate, ...] = ()

    @property
    def matched(self) -> bool:
        return self.intent != UNKNOWN_INTENT


class RuleIntentRouter:
    """Routes text by the catalog's regex and keyword patterns; expands intents named directly."""

    __slots__ = ("_catalog", "_max_text_bytes", "_profiles", "_render_limits")

    def __init__(
        self,
        catalog: IntentCatalog,
        *,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        render_limits: RenderLimits = RenderLimits(),  # noqa: B008 (frozen, so sharing it is safe)
    ) -> None:
        self._catalog = catalog
        self._profiles = tuple(_Profile.of(intent) for intent in catalog.intents)
        self._max_text_bytes = max_text_bytes
        self._render_limits = render_limits

    @property
    def catalog(self) -> IntentCatalog:
        return self._catalog

    def route(self, text: str, *, context: Mapping[str, Any] | None = None) -> RouteResult:
        """Match `text` ignoring case: the first intent in catalog order whose pattern matches wins.

        Text that matches nothing is not an error: the result's intent is `unknown`. Text longer
        than `max_text_bytes` (UTF-8) raises InvalidArgument(TEXT_TOO_LONG). A match that
        lacks a required parameter raises InvalidArgument(MISSING_FIELD); a template that cannot be
        rendered (e.g. a context key it needs is missing) raises InvalidArgument(TEMPLATE_ERROR),
        one that renders past the render limits InvalidArgument(TEMPLATE_LIMIT_EXCEEDED).
        """
        self.check_text(text)
        for intent in self._catalog.intents:
            for pattern in intent.patterns:
                captured = pattern.search(text)
                if captured is None:
                    continue
                parameters = _bind(intent, captured, from_text=True)
                return RouteResult(
                    intent=intent.name,
                    parameters=parameters,
                    todos=intent.render(
                        parameters, context=context or {}, limits=self._render_limits
                    ),
                    matched_pattern=pattern.description,
                )
        return RouteResult(intent=UNKNOWN_INTENT, candidates=self.closest(text))

    def check_text(self, text: str) -> None:
        """InvalidArgument(TEXT_TOO_LONG) for text longer than `max_text_bytes` (UTF-8): the
        most that is routed, by the rules or the model."""
        # Characters first (never more than bytes): no encoding of megabytes to learn they are many.
        if len(text) > self._max_text_bytes or len(text.encode("utf-8")) > self._max_text_bytes:
            raise InvalidArgument(
                f"text is longer than {self._max_text_bytes} bytes (UTF-8), the most that is "
                "routed; state the request in fewer words, or name the intent and its parameters",
                reason=Reason.TEXT_TOO_LONG,
                field="text",
            )

    def expand(
        self,
        intent_name: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        context: Mapping[str, Any] | None = None,
    ) -> tuple[ToDo, ...]:
        """The tasks of the intent named directly, rendered with `parameters` (None = absent)."""
        intent = self._catalog.get(intent_name)
        if intent is None:
            # Intent names are short: difflib on a megabyte "name" held the loop for seconds, and
            # echoing it whole made an error trailer too large for clients.
            head = intent_name[:_NAME_COMPARED]
            closest = difflib.get_close_matches(
                head, self._catalog.names, n=CANDIDATE_LIMIT, cutoff=0.0
            )
            shown = repr(head) + ("..." if len(intent_name) > len(head) else "")
            raise InvalidArgument(
                f"unknown intent {shown}; closest: {', '.join(closest)}",
                reason=Reason.UNKNOWN_INTENT,
                field="intent.name",
            )
        supplied = {name: value for name, value in (parameters or {}).items() if value is not None}
        return intent.render(
            _bind(intent, supplied, from_text=False),
            context=context or {},
            limits=self._render_limits,
        )

    def closest(self, text: str, *, limit: int = CANDIDATE_LIMIT) -> tuple[Candidate, ...]:
        """The intents most like `text`, best first (ties in catalog order); zero scores omitted."""
        words = Counter(_words(text))
        # Each word is compared with every intent's words, and difflib is quadratic in a pair's
        # length: a request's first words say what it is about, and the bound keeps a KiB of
        # crafted near-miss words from costing the event loop 100 ms.
        words = Counter({word: words[word] for word in list(words)[:_RANKED_WORDS]})
        scored = [(profile.score(words), profile) for profile in self._profiles]
        # sorted() is stable, so equal scores keep catalog order and the ranking is deterministic.
        ranked = sorted((item for item in scored if item[0] > 0), key=lambda item: -item[0])
        return tuple(
            Candidate(intent=profile.name, score=score, description=profile.description)
            for score, profile in ranked[:limit]
        )


def _bind(intent: Intent, supplied: Mapping[str, Any], *, from_text: bool) -> dict[str, Any]:
    """Supplied values plus defaults; a missing required or an undeclared parameter is refused."""
    for name in supplied:
        if intent.parameter(name) is None:
            declared = ", ".join(p.name for p in intent.parameters) or "none"
            raise InvalidArgument(
                f"intent {intent.name!r} has no parameter {name!r} (declared: {declared})",
                field=f"intent.parameters.{name}",
            )
    bound: dict[str, Any] = {}
    for parameter in intent.parameters:
        if parameter.name in supplied:
            bound[parameter.name] = supplied[parameter.name]
        elif parameter.has_default:
            bound[parameter.name] = parameter.default
        elif parameter.required:
            how = "the text does not say" if from_text else "no value given for"
            raise InvalidArgument(
                f"intent {intent.name!r} needs parameter {parameter.name!r}; {how} it",
                reason=Reason.MISSING_FIELD,
                field=f"intent.parameters.{parameter.name}",
            )
    return bound


def _words(text: str) -> tuple[str, ...]:
    return tuple(word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS)


def _similarity(first: str, second: str, floor: float = _WORD_SIMILARITY_FLOOR) -> float:
    """difflib's ratio if it reaches `floor`, else 0. The cheap upper bounds come first: most
    pairs differ in length or letters enough to skip the quadratic comparison (a 1 KiB "word"
    against "invoice" is decided by the lengths alone)."""
    matcher = difflib.SequenceMatcher(None, first, second)
    if matcher.real_quick_ratio() < floor or matcher.quick_ratio() < floor:
        return 0.0
    ratio = matcher.ratio()
    return ratio if ratio >= floor else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Profile:
    """What the ranking compares text with: an intent's key terms and its description's words."""

    name: str
    description: str
    terms: tuple[str, ...]
    description_words: frozenset[str]

    @classmethod
    def of(cls, intent: Intent) -> _Profile:
        terms = list(_words(intent.name))
        for pattern in intent.patterns:
            if pattern.kind == "keywords":
                terms.extend(_words(pattern.source))
        return cls(
            name=intent.name,
            description=intent.description,
            terms=tuple(dict.fromkeys(terms)),
            description_words=frozenset(_words(intent.description)),
        )

    def score(self, words: Counter[str]) -> float:
        """Mostly how well the text covers the intent's terms, partly the description it shares.

        `words` counts each distinct word once, so repeating a word costs no comparisons."""
        total = words.total()
        if not total:
            return 0.0
        term_cover = 0.0
        if self.terms:
            term_cover = sum(
                max(_similarity(term, word) for word in words) for term in self.terms
            ) / len(self.terms)
        shared = (
            sum(
                count
                for word, count in words.items()
                if any(_similarity(word, known, 0.8) for known in self.description_words)
            )
            / total
        )
        return round(_TERM_WEIGHT * term_cover + (1 - _TERM_WEIGHT) * shared, 3)
