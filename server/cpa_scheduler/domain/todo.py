"""ToDo: one step of a plan (an action with its target and parameters), as the domain sees it."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .artifacts import check_artifact_name
from .errors import InvalidArgument, Reason, echo
from .labels import CONTROL_CHARACTERS, check_labels, check_names
from .retry import RetryPolicy


class ActionType(StrEnum):
    """The built-in actions every planner and agent understands; anything else is custom."""

    OPEN_APP = "open_app"
    CLICK = "click"
    TYPE = "type"
    WAIT_FOR = "wait_for"
    PLAYWRIGHT = "playwright"
    UIA = "uia"
    SEND_MAIL = "send_mail"


BUILTIN_ACTIONS: frozenset[str] = frozenset(a.value for a in ActionType)

# Custom action and task ids share one conservative alphabet: they travel in URLs, Redis keys
# and logs. Every pattern is used with fullmatch: `$` alone also matches before a final "\n".
IDENTIFIER_PATTERN = re.compile(r"[a-z][a-z0-9_.\-]{0,62}")
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
# Input names are the keys an executor finds its input values under (Assignment.inputs): 1-63
# letters, digits or '_', starting with a letter, so every language can use them as identifiers.
INPUT_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
# Credential references (ToDo.credential_refs) are names, not secrets; bounded because every
# assignment and every view of the task carries them.
MAX_CREDENTIAL_REFS = 32
MAX_CREDENTIAL_REF_BYTES = 1024


class SelectorStrategy(StrEnum):
    """How a selector's value finds an element on screen."""

    CSS = "css"
    XPATH = "xpath"
    TEXT = "text"
    ROLE = "role"
    TEST_ID = "test_id"


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Where an action applies: a strategy and the value it interprets."""

    strategy: SelectorStrategy
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputRef:
    """An output of an upstream task: the value under `output_key` in the outputs of `task_id`,
    or (with `artifact_name` instead) the artifact of that name its succeeded attempt stored.

    `output_key` is a top-level key of those outputs, taken literally (no path syntax). Exactly
    one of the two is set. That the task exists and is upstream is a graph rule
    (TaskGraph.build); that it produced the key or artifact is only known once it succeeded
    (Job.inputs_of, Job.artifact_inputs_of).
    """

    task_id: str
    output_key: str = ""
    artifact_name: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToDo:
    """One step of a task graph. `action` is a built-in name (see ActionType) or a custom action."""

    id: str
    action: str
    description: str = ""
    selector: Selector | None = None
    text: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    schedule_to_start_s: float | None = None
    """How long the task may wait QUEUED for an agent before it fails (None: forever)."""
    depends_on: tuple[str, ...] = ()
    retry_policy: RetryPolicy | None = None
    required_capabilities: frozenset[str] = field(default_factory=frozenset)
    required_labels: Mapping[str, str] = field(default_factory=dict)
    requires_approval: bool = False
    inputs: Mapping[str, OutputRef] = field(default_factory=dict)
    """Named inputs, resolved from upstream tasks' outputs when an attempt is assigned."""
    credential_refs: Mapping[str, str] = field(default_factory=dict)
    """Credential references by purpose; the agent resolves them, the scheduler only carries
    them (Assignment.credential_refs)."""
    session: str = ""
    """The session the task belongs to ("" none): the tasks of a job with the same session run
    on one agent, one at a time (see domain/sessions.py)."""

    @property
    def is_builtin_action(self) -> bool:
        return self.action in BUILTIN_ACTIONS

    def validate(self, field_prefix: str = "todo") -> None:
        """Check the fields that make sense on their own; graph-level checks live in TaskGraph."""
        if not self.id:
            raise InvalidArgument(
                "task id is required", reason=Reason.MISSING_FIELD, field=f"{field_prefix}.id"
            )
        if not TASK_ID_PATTERN.fullmatch(self.id):
            raise InvalidArgument(
                f"task id {echo(self.id)} must be 1-63 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit",
                field=f"{field_prefix}.id",
            )
        if not self.action:
            raise InvalidArgument(
                f"task {self.id!r} has no action",
                reason=Reason.MISSING_FIELD,
                field=f"{field_prefix}.action",
            )
        if not self.is_builtin_action and not IDENTIFIER_PATTERN.fullmatch(self.action):
            raise InvalidArgument(
                f"task {self.id!r}: custom action {echo(self.action)} must be 1-63 lower-case "
                "letters, digits, '_', '.' or '-', starting with a letter",
                reason=Reason.UNKNOWN_ACTION,
                field=f"{field_prefix}.action",
            )
        # `not 0 < x < inf` also rejects NaN, which slips past a plain `x <= 0`.
        if self.timeout_s is not None and not 0 < self.timeout_s < math.inf:
            raise InvalidArgument(
                f"task {self.id!r}: timeout must be positive and finite, got {self.timeout_s:g} s",
                field=f"{field_prefix}.timeout",
            )
        if self.schedule_to_start_s is not None and not 0 < self.schedule_to_start_s < math.inf:
            raise InvalidArgument(
                f"task {self.id!r}: schedule-to-start timeout must be positive and finite, "
                f"got {self.schedule_to_start_s:g} s",
                field=f"{field_prefix}.schedule_to_start_timeout",
            )
        if self.selector is not None and not self.selector.value:
            raise InvalidArgument(
                f"task {self.id!r}: selector value is empty",
                reason=Reason.MISSING_FIELD,
                field=f"{field_prefix}.selector.value",
            )
        if self.session and not TASK_ID_PATTERN.fullmatch(self.session):
            raise InvalidArgument(
                f"task {self.id!r}: session {echo(self.session)} must be 1-63 letters, digits, "
                "'_', '.' or '-', starting with a letter or digit",
                field=f"{field_prefix}.session",
            )
        if self.retry_policy is not None:
            self.retry_policy.validate(f"{field_prefix}.retry_policy")
        # Sorted: a proto map has no order, and the first problem reported must not vary.
        for name in sorted(self.inputs):
            self._validate_input(name, self.inputs[name], f"{field_prefix}.inputs[{name}]")
        check_credential_refs(
            self.credential_refs, f"{field_prefix}.credential_refs", f"task {self.id!r}"
        )
        check_labels(self.required_labels, f"{field_prefix}.required_labels")
        check_names(self.required_capabilities, f"{field_prefix}.required_capabilities")

    def with_credential_defaults(self, defaults: Mapping[str, str]) -> ToDo:
        """This ToDo with the `defaults` entries it does not name itself (a LAM request's
        Security.credential_refs): its own entry wins for a purpose both name."""
        if not defaults or all(purpose in self.credential_refs for purpose in defaults):
            return self
        return dataclasses.replace(self, credential_refs={**defaults, **self.credential_refs})

    def _validate_input(self, name: str, ref: OutputRef, field_name: str) -> None:
        if not INPUT_NAME_PATTERN.fullmatch(name):
            raise InvalidArgument(
                f"task {self.id!r}: input name {echo(name)} must be 1-63 letters, digits or '_', "
                "starting with a letter",
                field=field_name,
            )
        if not ref.task_id:
            raise InvalidArgument(
                f"task {self.id!r}: input {echo(name)} names no task",
                reason=Reason.MISSING_FIELD,
                field=f"{field_name}.task_id",
            )
        if ref.output_key and ref.artifact_name:
            raise InvalidArgument(
                f"task {self.id!r}: input {echo(name)} names both an output_key and an "
                "artifact_name; one of the two",
                field=f"{field_name}.artifact_name",
            )
        if ref.artifact_name:
            check_artifact_name(ref.artifact_name, f"{field_name}.artifact_name")
        elif not ref.output_key:
            raise InvalidArgument(
                f"task {self.id!r}: input {echo(name)} names no output_key of task "
                f"{echo(ref.task_id)}",
                reason=Reason.MISSING_FIELD,
                field=f"{field_name}.output_key",
            )


def check_credential_refs(refs: Mapping[str, str], field_name: str, owner: str) -> None:
    """Credential references by purpose: purposes named like inputs, at most MAX_CREDENTIAL_REFS
    entries, each reference 1-MAX_CREDENTIAL_REF_BYTES bytes without control characters.
    InvalidArgument names `field_name[purpose]`; `owner` starts the message ("task 'login'")."""
    if len(refs) > MAX_CREDENTIAL_REFS:
        raise InvalidArgument(
            f"{owner} names {len(refs)} credentials; at most {MAX_CREDENTIAL_REFS}",
            field=field_name,
        )
    # Sorted: a proto map has no order, and the first problem reported must not vary.
    for purpose in sorted(refs):
        ref = refs[purpose]
        where = f"{field_name}[{purpose}]"
        if not INPUT_NAME_PATTERN.fullmatch(purpose):
            raise InvalidArgument(
                f"{owner}: credential purpose {echo(purpose)} must be 1-63 letters, digits or "
                "'_', starting with a letter",
                field=where,
            )
        if not ref:
            raise InvalidArgument(
                f"{owner}: credential {purpose!r} names no reference",
                reason=Reason.MISSING_FIELD,
                field=where,
            )
        size = len(ref.encode("utf-8"))
        if size > MAX_CREDENTIAL_REF_BYTES:
            raise InvalidArgument(
                f"{owner}: the reference of credential {purpose!r} is {size} bytes; at most "
                f"{MAX_CREDENTIAL_REF_BYTES}",
                field=where,
            )
        if CONTROL_CHARACTERS.search(ref):
            raise InvalidArgument(
                f"{owner}: the reference of credential {purpose!r} holds control characters",
                field=where,
            )
