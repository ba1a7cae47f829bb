"""The LLM task planner: text no intent fits becomes a checked graph; invalid proposals are
repaired when the model corrects itself and refused, with the problems, when it does not."""

from __future__ import annotations

import pytest

from cpa_scheduler.domain import DomainError, Reason
from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.planning import Planner, TextRequest
from cpa_scheduler.planning.llm_planner import PlanRefused
from cpa_scheduler.planning.llm_planning import Situation
from cpa_scheduler.planning.planner import BY_LLM_PLANNER
from cpa_scheduler.policy import parse_policy
from tests.support.openai_server import (
    OpenAIServer,
    Reply,
    chat_reply,
    json_reply,
    rate_limited,
    refusal_reply,
)

from .answers import GOOD_STEPS, intent, plan, step
from .conftest import planner_with

TEXT = "say hello, pause, then say it again"
NO_INTENT = intent("unknown", 0.95)


async def test_text_no_intent_fits_is_planned_as_a_checked_graph(
    planner: Planner, openai_server: OpenAIServer
) -> None:
    openai_server.chat.push(NO_INTENT, plan(*GOOD_STEPS, reasoning="greet, wait, repeat"))
    result = await planner.plan_async(TextRequest(TEXT), context={"who": "world"})
    assert result.decided_by == BY_LLM_PLANNER
    assert "no rule matched" in result.decision_reason
    assert result.reasoning == "greet, wait, repeat"
    assert result.graph is not None
    assert result.graph.parallel_batches() == (("greet",), ("pause",), ("repeat",))
    assert [a.problems for a in result.attempts] == [()]
    assert result.usage.total_tokens == 36
    assert [p.name for p in result.prompts] == ["intent", "plan"]
    planning = openai_server.chat_requests[1]
    assert '"seconds"' in planning.messages[0]["content"]  # wait's schema in the catalog
    assert 'Request context: {"who": "world"}' in planning.last_user_message


def cycle() -> Reply:
    return plan(step("a", "noop", depends_on=("b",)), step("b", "noop", depends_on=("a",)))


INVALID = {
    "cycle": (cycle(), "cycle"),
    "unknown action": (plan(step("a", "teleport")), "tasks[0].action: unknown action"),
    "missing selector": (plan(step("a", "click")), "tasks[0].selector: action 'click' needs"),
    "bad params": (plan(step("a", "wait", {"seconds": -1})), "tasks[0].params.seconds"),
    "policy": (plan(step("a", "echo"), step("b", "fail")), "refused by the tenant's policy"),
}
POLICY = parse_policy("actions: {deny: [fail]}\n", source="t.yaml")


@pytest.mark.parametrize("case", sorted(INVALID))
async def test_an_invalid_plan_is_repaired_when_the_model_corrects_itself(
    planner: Planner, openai_server: OpenAIServer, case: str
) -> None:
    wrong, problem = INVALID[case]
    openai_server.chat.push(NO_INTENT, wrong, plan(*GOOD_STEPS))
    result = await planner.plan_async(TextRequest(TEXT), situation=Situation(policy=POLICY))
    assert result.graph is not None
    first, accepted = result.attempts
    assert any(problem in str(p) for p in first.problems), first.problems
    assert accepted.problems == ()
    repair = openai_server.chat_requests[2]
    # The model sees its own answer and every problem of it.
    assert repair.messages[-2]["role"] == "assistant"
    assert problem.split(":")[0] in repair.last_user_message
    assert repair.last_user_message.startswith("The plan cannot run as it is.")


async def test_a_plan_still_invalid_after_the_repairs_is_refused_with_its_problems(
    provider: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    planner = planner_with(provider, planning_llm_repair_attempts=1)
    openai_server.chat.push(NO_INTENT, plan(step("a", "teleport")), plan(step("a", "teleport")))
    with pytest.raises(PlanRefused) as refused:
        await planner.plan_async(TextRequest(TEXT))
    error = refused.value
    assert error.reason is Reason.PLAN_INVALID
    assert error.field == "text"
    assert error.metadata["attempts"] == "2"
    assert "tasks[0].action: unknown action 'teleport'" in error.metadata["problems"]
    assert len(openai_server.chat_requests) == 3


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (refusal_reply(), Reason.LLM_REFUSED),
        (chat_reply("{", finish_reason="length"), Reason.LLM_OUTPUT_TRUNCATED),
    ],
)
async def test_refusal_and_length_are_clear_errors_not_plans(
    planner: Planner, openai_server: OpenAIServer, answer: Reply, reason: Reason
) -> None:
    openai_server.chat.push(NO_INTENT, answer)
    with pytest.raises(DomainError) as failed:
        await planner.plan_async(TextRequest(TEXT))
    assert (failed.value.reason, failed.value.field) == (reason, "text")


async def test_answers_that_never_parse_end_as_a_bad_answer(
    provider: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    planner = planner_with(provider, planning_llm_repair_attempts=1)
    openai_server.chat.push(NO_INTENT, chat_reply("no"), chat_reply("still no"))
    with pytest.raises(DomainError) as failed:
        await planner.plan_async(TextRequest(TEXT))
    assert failed.value.reason is Reason.LLM_BAD_ANSWER


async def test_a_rate_limit_with_retry_after_is_retried(
    planner: Planner, openai_server: OpenAIServer
) -> None:
    openai_server.chat.push(NO_INTENT, rate_limited(retry_after_ms=1), plan(*GOOD_STEPS))
    result = await planner.plan_async(TextRequest(TEXT))
    assert result.graph is not None
    assert len(openai_server.chat_requests) == 3


HOSTILE = {
    # More tasks than the schema allows: refused while parsing, then repaired.
    "huge": json_reply({"reasoning": "", "tasks": [step(f"t{i}", "noop") for i in range(300)]}),
    # Reasoning far over its bound.
    "long": json_reply({"reasoning": "x" * 100_000, "tasks": [step("a", "noop")]}),
    # The whole answer nested past any use.
    "deep": chat_reply("[" * 50_000 + "]" * 50_000),
    # params_json nested too deep for us to parse.
    "deep params": plan(step("a", "echo") | {"params_json": '{"a":' * 40 + "1" + "}" * 40}),
    # An action that is no executor's, with a forged id.
    "forged": plan(step("../../../x", "os.system", {"cmd": "rm -rf /"})),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_answers_are_problems_and_repaired(
    planner: Planner, openai_server: OpenAIServer, case: str
) -> None:
    openai_server.chat.push(NO_INTENT, HOSTILE[case], plan(*GOOD_STEPS))
    result = await planner.plan_async(TextRequest(TEXT))
    assert result.graph is not None
    first, _ = result.attempts
    assert first.problems
    assert len(str(first.problems)) < 20_000
