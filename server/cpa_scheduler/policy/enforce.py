"""Where policies are enforced: a whole plan at submission, a job's remaining tasks at RetryJob,
one task at dispatch. A refusal is a PolicyViolation (PERMISSION_DENIED, POLICY_VIOLATION) that
names the ToDo, the rule and the field; at dispatch the task fails with it, not retried.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from cpa_scheduler.domain import DomainError, Job, Reason, TaskError, TaskState, ToDo
from cpa_scheduler.planning import IntentRequest, Plan, PlanRequest, TextRequest

from .rules import Decision, Policy


class PolicyViolation(DomainError):  # noqa: N818 (named after its reason, like InvalidArgument)
    """A plan, job or task the tenant's policy refuses. `field` is a path in the request (set
    by the caller); ErrorInfo.metadata carries `rule`, `todo` and `todo_field` as well."""

    reason = Reason.POLICY_VIOLATION

    def __init__(self, decision: Decision, *, field: str) -> None:
        where = (
            f"task {decision.todo!r} field {decision.field}" if decision.todo else decision.field
        )
        super().__init__(
            f"refused by the tenant's policy: {where}: {decision.detail} (rule {decision.rule})",
            reason=Reason.POLICY_VIOLATION,
            field=field,
        )
        self.decision = decision
        metadata = {"rule": decision.rule, "todo_field": decision.field}
        if decision.todo:
            metadata["todo"] = decision.todo
        self.metadata = MappingProxyType(metadata)

    def task_error(self) -> TaskError:
        """How a task refused at dispatch fails: not retryable (the same task is refused again)."""
        return TaskError(
            code=Reason.POLICY_VIOLATION.value,
            message=self.message,
            retryable=False,
            reason=Reason.POLICY_VIOLATION,
            details=dict(self.metadata),
        )


def check_request(
    policy: Policy,
    todos: Iterable[ToDo],
    *,
    text: str = "",
    callback_url: str = "",
    todo_field: str | None = None,
) -> None:
    """Raise PolicyViolation for the first rule the request breaks: its callback URL and text,
    then its ToDos in plan order. Fields are request paths as the planner names them:
    `callback_url`, `text`, and for a ToDo `todos[i].<field>` (explicit ToDos) or `todo_field`
    (the part of the request the ToDos were planned from: `text`, `intent.parameters`)."""
    refusal = policy.request_refusal(text=text, callback_url=callback_url)
    if refusal is not None:
        field = "text" if refusal.field == "request.text" else refusal.field
        raise PolicyViolation(refusal, field=field)
    for index, todo in enumerate(todos):
        refusal = policy.first_refusal(todo)
        if refusal is not None:
            field = f"todos[{index}].{refusal.field}" if todo_field is None else todo_field
            raise PolicyViolation(refusal, field=field)


def check_request_fields(policy: Policy, request: PlanRequest, *, callback_url: str) -> None:
    """The request's own fields (its text, its callback URL), before it is routed: text with
    PII the policy refuses is refused whether or not it matches an intent."""
    check_request(
        policy,
        (),
        text=request.text if isinstance(request, TextRequest) else "",
        callback_url=callback_url,
    )


def check_plan(policy: Policy, request: PlanRequest, plan: Plan) -> None:
    """The ToDos of a matched plan: those planned from text are located at `text`, from an
    intent at `intent.parameters` (ErrorInfo.metadata names the ToDo and its field)."""
    assert plan.graph is not None
    todo_field = None
    if isinstance(request, TextRequest):
        todo_field = "text"
    elif isinstance(request, IntentRequest):
        todo_field = "intent.parameters"
    check_request(policy, plan.graph.todos, todo_field=todo_field)


def check_redrive(policy: Policy, job: Job) -> None:
    """RetryJob: the tasks that would run again (every one not SUCCEEDED) and the callback URL,
    against the policy in force now; PolicyViolation for the first refused."""
    refusal = policy.request_refusal(callback_url=job.options.callback_url)
    if refusal is not None:
        raise PolicyViolation(refusal, field="job_id")
    for task in job.tasks.values():
        if task.state is not TaskState.SUCCEEDED:
            violation = check_task(policy, task.todo)
            if violation is not None:
                violation.field = "job_id"
                raise violation


def check_task(policy: Policy, todo: ToDo) -> PolicyViolation | None:
    """The violation of one task at dispatch or re-drive (field: the ToDo's own path)."""
    refusal = policy.first_refusal(todo)
    if refusal is None:
        return None
    return PolicyViolation(refusal, field=f"tasks[{todo.id}].todo.{refusal.field}")
