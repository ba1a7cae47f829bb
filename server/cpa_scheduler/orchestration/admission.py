"""Admission: a caller's request planned into the plan a job is made of, and the checks that
plan passes before it may become a job (an intent matched, no approval required, the tenant's
policy). A part of Orchestrator (its base class), apart because it is a concern of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cpa_scheduler.dispatch.directory import AgentDirectory
from cpa_scheduler.domain import DomainError, InvalidArgument, Reason
from cpa_scheduler.planning import Plan, Planner, PlanRequest, TextRequest
from cpa_scheduler.planning.actions import ActionCatalog
from cpa_scheduler.planning.llm_planning import Situation
from cpa_scheduler.policy import Policies
from cpa_scheduler.policy.enforce import check_plan, check_request_fields

from .approvals import refuse_approvals


class Admission:
    """Planning and the checks of a plan; what they use is the Orchestrator's."""

    _planner: Planner
    _directory: AgentDirectory
    policies: Policies

    def plan(
        self,
        request: PlanRequest,
        *,
        context: Mapping[str, Any],
        field: str = "",
        credential_refs: Mapping[str, str] | None = None,
    ) -> Plan:
        """Plan a request by the rules alone; errors name their field under `field` (the
        request's path). `credential_refs` go to every ToDo that does not name the purpose
        (see Planner.plan)."""
        try:
            return self._planner.plan(request, context=context, credential_refs=credential_refs)
        except DomainError as error:
            _root(error, request, field)
            raise

    async def plan_async(
        self,
        request: PlanRequest,
        *,
        context: Mapping[str, Any],
        field: str = "",
        credential_refs: Mapping[str, str] | None = None,
        tenant: str = "",
        conversation_id: str = "",
        deadline: float | None = None,
    ) -> Plan:
        """`plan`, with the language model for free text when one is configured (see
        Planner.plan_async): it sees the tenant's policy, its connected agents' actions and
        `deadline` (time.monotonic(), the request's)."""
        situation = Situation(
            tenant=tenant,
            policy=self.policies.get(tenant) if tenant else None,
            conversation_id=conversation_id,
            agents=(lambda: self._actions(tenant)) if tenant else None,
            deadline=deadline,
        )
        try:
            return await self._planner.plan_async(
                request, context=context, credential_refs=credential_refs, situation=situation
            )
        except DomainError as error:
            _root(error, request, field)
            raise

    async def matched_plan(
        self,
        request: PlanRequest,
        *,
        context: Mapping[str, Any],
        credential_refs: Mapping[str, str] | None = None,
        tenant: str | None = None,
        callback_url: str = "",
        conversation_id: str = "",
        deadline: float | None = None,
    ) -> Plan:
        """The plan of a request that becomes a job: text that matches no intent is refused
        with UNKNOWN_INTENT, a task that requires approval with APPROVAL_NOT_SUPPORTED, and,
        with `tenant`, a plan (or callback URL) its policy refuses with POLICY_VIOLATION."""
        policy = None if tenant is None else self.policies.get(tenant)
        if policy is not None:
            check_request_fields(policy, request, callback_url=callback_url)
        plan = await self.plan_async(
            request,
            context=context,
            credential_refs=credential_refs,
            tenant=tenant or "",
            conversation_id=conversation_id,
            deadline=deadline,
        )
        refuse_approvals(request, plan)
        if not plan.matched:
            closest = ", ".join(f"{c.intent} ({c.score:.2f})" for c in plan.candidates)
            raise InvalidArgument(
                "no intent matches the text" + (f"; closest: {closest}" if closest else ""),
                reason=Reason.UNKNOWN_INTENT,
                field="text",
            )
        if policy is not None:
            check_plan(policy, request, plan)
        return plan

    async def _actions(self, tenant: str) -> ActionCatalog:
        """The actions the tenant's connected agents serve (the shipped ones when none is)."""
        records = await self._directory.list_agents(tenant)
        return ActionCatalog.build(
            (record.profile.actions, record.profile.capabilities) for record in records
        )


def _root(error: DomainError, request: PlanRequest, field: str) -> None:
    """Makes `error`'s field a path in the request: planning text errs in `text`."""
    if isinstance(request, TextRequest):
        error.field = f"{field}.text" if field else "text"
    elif field and error.field:
        error.field = f"{field}.{error.field}"
