"""The PII detectors as the policy names them (Detector in policy files, Finding in decisions).

The detectors themselves are pure text functions in cpa_client.pii, shared with the agent and the
CLI, whose log lines they redact by the same rules (the agent may not import this package); this
module is the policy's door to them, so its rules and redaction keep importing from here.
"""

from __future__ import annotations

from cpa_client.pii import (
    ALL_DETECTORS,
    Detector,
    Finding,
    iban_valid,
    luhn_valid,
    mask,
    redact,
    redact_all,
    scan,
    steuer_id_valid,
)

__all__ = [
    "ALL_DETECTORS",
    "Detector",
    "Finding",
    "iban_valid",
    "luhn_valid",
    "mask",
    "redact",
    "redact_all",
    "scan",
    "steuer_id_valid",
]
