"""Approvals are not given yet (a later version adds ApproveTask): a job with a ToDo that needs
one would wait in WAITING_APPROVAL for ever, so it is refused at submission instead."""

from __future__ import annotations

from cpa_scheduler.domain import InvalidArgument, Reason
from cpa_scheduler.planning import IntentRequest, Plan, PlanRequest, TextRequest, TodoRequest


def refuse_approvals(request: PlanRequest, plan: Plan) -> None:
    """InvalidArgument (APPROVAL_NOT_SUPPORTED) when a task of the plan requires approval; the
    field is the ToDo's `requires_approval` for explicit ToDos, else what chose the intent whose
    template made the task (`intent.name` or `text`)."""
    if plan.graph is None:
        return
    for position, todo in enumerate(plan.graph):
        if not todo.requires_approval:
            continue
        match request:
            case TodoRequest():
                field = f"todos[{position}].requires_approval"
                where = f"todo {todo.id!r}"
            case IntentRequest():
                field = "intent.name"
                where = f"task {todo.id!r} of intent {plan.intent!r}"
            case TextRequest():
                field = "text"
                where = f"task {todo.id!r} of intent {plan.intent!r} (routed from the text)"
        raise InvalidArgument(
            f"{where} requires approval (requires_approval), and this server cannot give "
            "approvals yet; submit it without requires_approval",
            reason=Reason.APPROVAL_NOT_SUPPORTED,
            field=field,
        )
