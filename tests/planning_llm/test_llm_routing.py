"""The LLM router picks a catalog intent with its parameters; the rules decide whenever it
cannot (an error, garbage, low confidence, a made-up intent), and the plan says so."""

from __future__ import annotations

import asyncio
import time

import pytest

from cpa_scheduler.domain import DomainError, LimitExceeded, Reason, ToDo
from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.planning import IntentRequest, Planner, TextRequest, TodoRequest
from cpa_scheduler.planning.llm_planning import Situation
from cpa_scheduler.planning.planner import BY_LLM_ROUTER, BY_REQUEST, BY_RULES
from tests.support.openai_server import OpenAIServer, Reply, chat_reply, error_reply

from .answers import GOOD_STEPS, intent, plan
from .conftest import planner_with

RULE_TEXT = "send an email to bob@example.com about lunch"


async def test_llm_router_picks_the_intent_with_parameters(
    planner: Planner, openai_server: OpenAIServer
) -> None:
    openai_server.chat.push(
        intent("send_mail", 0.93, recipient="acct@acme.example", subject="the audit")
    )
    result = await planner.plan_async(TextRequest("drop accounting a line about the audit"))
    assert result.decided_by == BY_LLM_ROUTER
    assert "'send_mail' with confidence 0.93" in result.decision_reason
    assert result.parameters == {"recipient": "acct@acme.example", "subject": "the audit"}
    assert result.graph is not None
    [todo] = result.graph.ordered_todos()
    assert todo.action == "send_mail"
    assert result.usage.total_tokens == 18
    [request] = openai_server.chat_requests
    system = request.messages[0]["content"]
    assert "- send_mail:" in system
    assert "parameter recipient (required)" in system
    assert request.last_user_message == "Request: drop accounting a line about the audit"
    assert [p.name for p in result.prompts] == ["intent"]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (error_reply(500), "LLM router failed (LLMUnavailableError"),
        (chat_reply("this is not JSON"), "LLM router failed (LLMBadAnswerError"),
        (intent("send_mail", 0.2), "confidence 0.20 in 'send_mail' is below 0.70"),
        (intent("launch_rockets", 0.99), "named 'launch_rockets', not an intent"),
        (intent("send_mail", 0.9, colour="blue"), "refused its parameters"),
    ],
)
async def test_the_rules_decide_when_the_router_cannot(
    provider: OpenAIProvider, openai_server: OpenAIServer, answer: Reply, why: str
) -> None:
    # Retries would repeat a 500: none here, so one scripted answer is the whole story.
    openai_server.chat.push(answer, answer)
    result = await planner_with(provider).plan_async(TextRequest(RULE_TEXT))
    assert result.decided_by == BY_RULES
    assert why in result.decision_reason
    assert result.decision_reason.endswith("the rule router decided")
    assert result.intent == "send_mail"
    assert result.parameters["recipient"] == "bob@example.com"


async def test_a_router_that_never_answers_times_out_to_the_rules(
    provider: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    never = asyncio.Event()  # released by the server's stop
    openai_server.chat.push(Reply(intent("send_mail", 1).body, hold=never))
    planner = planner_with(provider, planning_llm_timeout_s=0.3)
    result = await planner.plan_async(TextRequest(RULE_TEXT))
    assert result.decided_by == BY_RULES
    assert "LLMTimeoutError" in result.decision_reason


async def test_structured_requests_never_reach_the_model(
    planner: Planner, openai_server: OpenAIServer
) -> None:
    todos = await planner.plan_async(TodoRequest([ToDo(id="a", action="echo")]))
    named = await planner.plan_async(IntentRequest("send_mail", {"recipient": "a@b.example"}))
    assert todos.decided_by == named.decided_by == BY_REQUEST
    assert todos.prompts == named.prompts == ()
    assert openai_server.chat_requests == []


async def test_beyond_the_concurrency_a_text_is_refused_at_once(
    provider: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    planner = planner_with(provider, planning_llm_concurrency=1)
    release = asyncio.Event()
    openai_server.chat.push(Reply(intent("unknown", 0.9).body, hold=release), plan(*GOOD_STEPS))
    first = asyncio.create_task(planner.plan_async(TextRequest("greet and wait")))
    await openai_server.wait_for(1)
    with pytest.raises(LimitExceeded) as refused:
        await planner.plan_async(TextRequest("another one"))
    assert refused.value.reason is Reason.PLANNING_BUSY
    assert refused.value.retry_delay_s == 1.0
    # A structured request is not held behind the model.
    assert (await planner.plan_async(TodoRequest([ToDo(id="a", action="noop")]))).matched
    release.set()
    assert (await first).matched
    # The slot is free again.
    openai_server.chat.push(intent("send_mail", 0.9, recipient="x@y.example"))
    assert (await planner.plan_async(TextRequest("mail x"))).decided_by == BY_LLM_ROUTER


@pytest.mark.timeout(60)
async def test_the_requests_deadline_bounds_the_models_time(
    openai_server: OpenAIServer,
) -> None:
    # Every other bound far away: only the request's deadline can end the planning.
    patient = OpenAIProvider(
        api_key="sk-test",
        model="gpt-test",
        embedding_model="embedding-test",
        base_url=openai_server.base_url,
        timeout_s=600.0,
        max_retries=0,
    )
    planner = planner_with(patient, planning_llm_timeout_s=600, planning_llm_concurrency=1)
    never = asyncio.Event()  # released by the server's stop
    openai_server.chat.default = lambda _: Reply(intent("unknown", 0.9).body, hold=never)
    with pytest.raises(DomainError) as failed:
        await planner.plan_async(
            TextRequest("nothing the rules know"),
            situation=Situation(deadline=time.monotonic() + 0.3),
        )
    assert failed.value.reason is Reason.LLM_UNAVAILABLE
    # The router's call took all the time: the planner is not called without any left.
    assert len(openai_server.chat_requests) == 1
    # The slot is free again: the next text is planned (and routed by the rules here).
    openai_server.chat.default = lambda _: intent("unknown", 0.9)
    assert (await planner.plan_async(TextRequest(RULE_TEXT))).decided_by == BY_RULES
    await patient.aclose()
