"""A session's credits and what it says about tasks no agent takes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from cpa_scheduler.dispatch import AgentProfile, AgentSession, Requirement, SessionRegistry
from cpa_scheduler.dispatch.matching import unmet_requirement
from cpa_scheduler.dispatch.sessions import AgentIdInUse
from cpa_scheduler.domain import AgentState, AttemptRef, Reason

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


def test_requirement_keys_never_collide_through_separators() -> None:
    # Under the old `tenant|action|caps|labels` text these pairs named one queue.
    pairs = [
        (
            Requirement(tenant="A", action="echo", capabilities=frozenset({"c|d"})),
            Requirement(tenant="A|echo", action="c", capabilities=frozenset({"d"})),
        ),
        (
            Requirement(tenant="t", action="a", capabilities=frozenset({"x,y"})),
            Requirement(tenant="t", action="a", capabilities=frozenset({"x", "y"})),
        ),
        (
            Requirement(tenant="t", action="a", labels=(("k", "v,l=w"),)),
            Requirement(tenant="t", action="a", labels=(("k", "v"), ("l", "w"))),
        ),
    ]
    for first, second in pairs:
        assert first.key != second.key
    # Equal requirements share a queue, whatever order their labels came in.
    labels = (("a", "1"), ("b", "2"))
    assert (
        Requirement(tenant="t", action="a", labels=labels).key
        == Requirement(tenant="t", action="a", labels=labels[::-1]).key
    )


def agent(agent_id: str, tenant: str = "t", *actions: str) -> AgentSession:
    return AgentSession(
        profile=AgentProfile(
            agent_id=agent_id, tenant=tenant, actions=frozenset(actions or {"click"}), slots=2
        ),
        connect_time=NOW,
        last_seen_time=NOW,
        deliver=lambda message: None,
        close=lambda: None,
    )


def test_sessions_are_keyed_by_tenant_and_agent_id() -> None:
    registry = SessionRegistry()
    first, other_tenant = agent("ag", "t"), agent("ag", "u")
    registry.add(first)
    assert registry.add(other_tenant) is None  # another tenant's agent: nothing replaced
    assert (registry.get("t", "ag"), registry.get("u", "ag")) == (first, other_tenant)
    assert registry.of_tenant("u") == [other_tenant]


def test_a_live_agent_id_is_refused_unless_its_last_session_is_named() -> None:
    registry = SessionRegistry()
    first = agent("ag")
    registry.add(first)

    with pytest.raises(AgentIdInUse) as refused:
        registry.add(agent("ag"))
    assert refused.value.reason is Reason.AGENT_ID_IN_USE
    with pytest.raises(AgentIdInUse):
        registry.add(agent("ag"), resume_session_id="some-other-session")
    assert registry.get("t", "ag") is first

    second = agent("ag")
    assert registry.add(second, resume_session_id=first.session_id) is first
    assert registry.holds(second)
    assert not registry.holds(first)
    # The chain: naming the first session (its welcome was the last one heard) still works.
    third = agent("ag")
    assert registry.add(third, resume_session_id=first.session_id) is second


def test_only_sessions_with_free_credits_offering_the_action_are_eligible() -> None:
    registry = SessionRegistry()
    idle = [agent(f"idle-{n}", "t", "other") for n in range(50)]
    busy, free = agent("busy"), agent("free")
    for session in [*idle, busy, free]:
        registry.add(session)
        session.grant(2)
    busy.credits = 0
    click = Requirement(tenant="t", action="click")

    assert registry.eligible(click) == [free]
    free.credits -= 1
    busy.grant(1)
    assert sorted(s.agent_id for s in registry.eligible(click)) == ["busy", "free"]
    free.state = AgentState.DRAINING
    assert registry.eligible(click) == [busy]
    registry.remove(busy)
    assert registry.eligible(click) == []
    assert registry.waiting_reason(click) == "all 1 capable agents are draining"


def test_a_pinned_requirement_has_its_own_key_and_unpinned_keys_are_unchanged() -> None:
    plain = Requirement(tenant="t", action="click")
    pinned = Requirement(tenant="t", action="click", agent_id="ag")
    # The key of a requirement without a pin is what it was before pins existed (queues and
    # Redis streams of running deployments keep their names): the digest of the same JSON.
    canonical = '["t","click",[],[]]'
    assert plain.key == "t.click~" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert plain.key != pinned.key
    assert pinned.key.endswith("~pinned")
    assert not plain.key.endswith("~pinned")
    assert Requirement(tenant="t", action="click", agent_id="other").key != pinned.key


def test_only_the_pinned_agent_is_eligible_for_a_pinned_requirement() -> None:
    registry = SessionRegistry()
    holder = session()
    holder.credits = 2
    registry.add(holder)
    other_profile = AgentProfile(agent_id="other", tenant="t", actions=frozenset({"click"}))
    other = AgentSession(
        profile=other_profile,
        connect_time=NOW,
        last_seen_time=NOW,
        deliver=lambda message: None,
        close=lambda: None,
        credits=1,
    )
    registry.add(other)
    assert registry.eligible(Requirement(tenant="t", action="click", agent_id="ag")) == [holder]
    assert registry.eligible(Requirement(tenant="t", action="click", agent_id="gone")) == []
    assert registry.eligible(Requirement(tenant="u", action="click", agent_id="ag")) == []
    holder.credits = 0
    assert registry.eligible(Requirement(tenant="t", action="click", agent_id="ag")) == []
    reason = registry.waiting_reason(Requirement(tenant="t", action="click", agent_id="gone"))
    assert "waiting for agent 'gone', which holds the task's session" in reason
