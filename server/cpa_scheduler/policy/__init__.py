"""Tenant policies (docs/POLICY.md): what a tenant's jobs may do, checked at submission, at
RetryJob and at dispatch.

- model: the schema of a policy file (pydantic, unknown keys refused);
- loading: files per tenant in CPA_POLICY_DIR, errors with file and line, reload on change;
- rules: the compiled policy and its decisions;
- pii: the PII detectors (RE2 patterns confirmed by checksums);
- enforce: PolicyViolation and the checks the orchestrator calls;
- redaction: values a policy redacts, hidden in the job views the API returns.
"""

from __future__ import annotations

from .enforce import PolicyViolation, check_request, check_task
from .loading import (
    FALLBACK_STEM,
    MAX_POLICY_FILE_BYTES,
    Policies,
    PolicyFileError,
    PolicySet,
    load_policy,
    load_policy_dir,
    parse_policy,
)
from .model import PiiAction, PolicySpec
from .pii import Detector, Finding, scan
from .rules import Decision, Policy

__all__ = [
    "FALLBACK_STEM",
    "MAX_POLICY_FILE_BYTES",
    "Decision",
    "Detector",
    "Finding",
    "PiiAction",
    "Policies",
    "Policy",
    "PolicyFileError",
    "PolicySet",
    "PolicySpec",
    "PolicyViolation",
    "check_request",
    "check_task",
    "load_policy",
    "load_policy_dir",
    "parse_policy",
    "scan",
]
