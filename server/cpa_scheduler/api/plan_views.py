"""PreviewPlan's account of how a plan came about (who decided, the model's attempts, tokens,
prompts): a part of the domain-to-proto conversion (convert.py), apart for its size."""

from __future__ import annotations

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_scheduler.llm.interface import Usage
from cpa_scheduler.planning import Plan


def _usage_to_proto(usage: Usage) -> scheduler_service_pb2.PlanTokenUsage:
    return scheduler_service_pb2.PlanTokenUsage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
    )


def add_planning(response: scheduler_service_pb2.PreviewPlanResponse, plan: Plan) -> None:
    """How the plan came about: who decided, the model's attempts, tokens and prompts."""
    response.decided_by = plan.decided_by
    response.decision_reason = plan.decision_reason
    response.reasoning = plan.reasoning
    response.usage.CopyFrom(_usage_to_proto(plan.usage))
    for attempt in plan.attempts:
        response.attempts.add(
            problems=[
                scheduler_service_pb2.PlanProblem(field=p.field, message=p.message)
                for p in attempt.problems
            ],
            total_problems=attempt.total_problems,
            usage=_usage_to_proto(attempt.usage),
        )
    for prompt in plan.prompts:
        response.prompts.add(
            name=prompt.name,
            messages=[
                scheduler_service_pb2.PlanPromptMessage(role=m.role, content=m.content)
                for m in prompt.messages
            ],
        )
