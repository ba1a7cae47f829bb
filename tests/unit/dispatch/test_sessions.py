"""A session's credits and what it says about tasks no agent takes."""

from __future__ import annotations

from datetime import UTC, datetime

from cpa_scheduler.dispatch import AgentProfile, AgentSession, Requirement
from cpa_scheduler.dispatch.matching import unmet_requirement
from cpa_scheduler.domain import AttemptRef

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def session(slots: int = 4, capabilities: frozenset[str] = frozenset()) -> AgentSession:
    return AgentSession(
        profile=AgentProfile(
            agent_id="ag",
            tenant="t",
            actions=frozenset({"click"}),
            capabilities=capabilities,
            slots=slots,
        ),
        connect_time=NOW,
        last_seen_time=NOW,
        deliver=lambda message: None,
        close=lambda: None,
    )


def test_credits_never_exceed_the_slots_not_running() -> None:
    agent = session(slots=4)
    agent.running.update({AttemptRef("j", "a", 1), AttemptRef("j", "b", 1)})
    agent.grant(4)  # a reconnect's credit counted a slot its result also returns
    assert agent.credits == 2
    agent.grant(1)
    assert agent.credits == 2
    agent.running.clear()
    agent.grant(1)
    assert agent.credits == 3
    agent.grant(-5)
    assert agent.credits == 0


def test_an_unmet_requirement_names_what_is_missing_and_who_lacks_it() -> None:
    gpu = Requirement(tenant="t", action="click", capabilities=frozenset({"gpu"}))
    profiles = [session().profile, session(capabilities=frozenset({"gpu"})).profile]
    assert unmet_requirement(gpu, profiles[1:]) is None
    assert unmet_requirement(gpu, profiles[:1]) == (
        "no connected agent offers action 'click', capability 'gpu' "
        "(agent 'ag' lacks capabilities gpu)"
    )
    other_action = Requirement(tenant="t", action="type")
    assert unmet_requirement(other_action, profiles) == "no connected agent offers action 'type'"
    other_tenant = Requirement(tenant="u", action="click")
    assert unmet_requirement(other_tenant, profiles) == "no connected agent offers action 'click'"
