"""Prompts and answers in the debug log, redacted: the policy's PII detectors (IBAN, card, tax
id, e-mail, phone) replace what they find by its label, and the provider's own secrets (its API
key) by `***`. Nothing is computed unless the `cpa_scheduler.llm.exchange` logger is at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from ..policy.pii import redact, scan
from .interface import Message

_log = logging.getLogger("cpa_scheduler.llm.exchange")

# A prompt may carry a whole action catalog and memory: the log keeps the head of each text.
MAX_LOGGED_CHARS = 4000
SECRET_MASK = "***"


def redacted(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` cut to MAX_LOGGED_CHARS, its PII replaced by labels and `secrets` by `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, SECRET_MASK)
    # Redacted whole, then cut: a cut first could split a value so that it is no longer found.
    text = redact(text, scan(text))
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    return f"{text[:MAX_LOGGED_CHARS]}… [{len(text)} chars]"


def log_exchange(
    provider: str,
    operation: str,
    messages: Sequence[Message],
    answer: str | None,
    *,
    secrets: Iterable[str] = (),
) -> None:
    """Log one call's prompt and answer (None: it gave none) at DEBUG, redacted."""
    if not _log.isEnabledFor(logging.DEBUG):
        return
    secrets = tuple(secrets)
    prompt = "\n".join(f"[{m.role}] {redacted(m.content, secrets)}" for m in messages)
    shown = "(none)" if answer is None else redacted(answer, secrets)
    _log.debug("%s %s prompt:\n%s\nanswer:\n%s", provider, operation, prompt, shown)
