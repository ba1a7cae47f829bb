"""The schema of a policy file (docs/POLICY.md), as pydantic models: unknown keys are refused.

No regexes anywhere: names are compared exactly, hosts and mail domains as `example.com` or
`*.example.com`, fields by path prefix. A policy cannot hold a slow pattern, and a reader sees
what it allows.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .pii import Detector

# Bounds that keep a loaded policy small whatever the file holds (the file itself is bounded
# by MAX_POLICY_FILE_BYTES in loading.py).
MAX_LIST_ENTRIES = 10_000
MAX_NAME_CHARS = 255

# A host or mail domain, or `*.` and one: letters, digits, '-' and '.', lower-case (entries are
# lowered first), labels not empty. Internationalised names go in their punycode (xn--) form.
_DOMAIN = re.compile(r"(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*")
# A field a PII rule applies to: `*`, `request.text`, or a ToDo field path without indices.
_FIELD = re.compile(
    r"\*|request\.text|(?:text|description|selector\.value|params)(?:\.[^.\s\[\]]+)*"
)


class PiiAction(enum.StrEnum):
    """What PII found in a field does: nothing, hidden in what the scheduler shows, or refused."""

    ALLOW = "allow"
    REDACT = "redact"
    REFUSE = "refuse"


def _domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(value):
        raise ValueError(
            "a domain is a host name (example.com) or '*.' and one (*.example.com): letters, "
            "digits, '-' and '.'; internationalised names in their xn-- form"
        )
    return value


def _name(value: str) -> str:
    value = value.strip()
    if not value or any(ord(c) < 32 for c in value):
        raise ValueError("a name must be printable and not empty")
    return value


def _field(value: str) -> str:
    if not _FIELD.fullmatch(value):
        raise ValueError(
            "a field is '*', 'request.text', or a ToDo field: text, description, "
            "selector.value, params or params.<key>[.<key>...] (no [index])"
        )
    return value


Domain = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_domain)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_name)]
FieldPath = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_field)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ActionsSpec(_Spec):
    """Actions no ToDo may use (built-in names such as `send_mail`, or custom ones)."""

    deny: list[Name] = Field(default_factory=list, max_length=MAX_LIST_ENTRIES)


class AppsSpec(_Spec):
    """The applications desktop actions (open_app, uia) may name in `params.app`."""

    allow: list[Name] = Field(max_length=MAX_LIST_ENTRIES)


class HostsSpec(_Spec):
    """The hosts URLs may point at."""

    allow: list[Domain] = Field(max_length=MAX_LIST_ENTRIES)


class MailSpec(_Spec):
    """The domains send_mail may address (to, cc, bcc)."""

    allow_domains: list[Domain] = Field(max_length=MAX_LIST_ENTRIES)


class PiiRuleSpec(_Spec):
    """What PII of `detectors` (all when left out) found in `field` does."""

    field: FieldPath
    detectors: list[Detector] | None = Field(default=None, min_length=1)
    action: PiiAction


class PiiSpec(_Spec):
    """PII detection: which detectors run, per-field rules (first match wins), the default."""

    detectors: list[Detector] = Field(default_factory=lambda: list(Detector), min_length=1)
    default_action: PiiAction = PiiAction.ALLOW
    rules: list[PiiRuleSpec] = Field(default_factory=list, max_length=1000)


class PolicySpec(_Spec):
    """One tenant's policy file. Every section is optional; a missing one restricts nothing."""

    version: int = Field(default=1, ge=1, le=1)
    description: str = Field(default="", max_length=4096)
    actions: ActionsSpec | None = None
    apps: AppsSpec | None = None
    urls: HostsSpec | None = None
    callback_urls: HostsSpec | None = None
    mail: MailSpec | None = None
    pii: PiiSpec | None = None
