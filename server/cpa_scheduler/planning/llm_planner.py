"""LLM task planner: text and its context -> TaskPlan, checked (task_plan.check) before it is
accepted, repaired by sending the problems back to the model, refused when it stays invalid.

Every attempt is recorded (its problems and tokens) so PreviewPlan can show how the plan came
about. A plan is never run unless a check passed on exactly the tasks that run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cpa_scheduler.domain import InvalidArgument, Reason, ToDo
from cpa_scheduler.llm.interface import LLMBadAnswerError, LLMProvider, Message, Usage

from . import prompts
from .actions import ActionCatalog
from .task_plan import Problem, TaskPlan, check

if TYPE_CHECKING:
    from cpa_scheduler.memory.interface import ConversationEntry, MemoryHit
    from cpa_scheduler.policy.rules import Policy

# A model's previous answer goes back in the repair prompt; bounded so a huge answer cannot
# grow every following call.
_MAX_ECHOED_ANSWER_CHARS = 32 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One proposal of the model and what the check found (no problems: accepted)."""

    problems: tuple[Problem, ...]
    total_problems: int
    usage: Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedTasks:
    """An accepted proposal: its ToDos, the model's reasoning and how it was reached."""

    todos: tuple[ToDo, ...]
    reasoning: str
    attempts: tuple[Attempt, ...]
    usage: Usage
    messages: tuple[Message, ...]


class PlanRefused(InvalidArgument):
    """The model's plan stayed invalid after every repair attempt: nothing runs."""

    reason = Reason.PLAN_INVALID

    def __init__(self, attempts: Sequence[Attempt], usage: Usage) -> None:
        last = attempts[-1]
        listed = "; ".join(str(problem) for problem in last.problems)
        super().__init__(
            f"the model's plan is still invalid after {len(attempts)} attempt(s): {listed}",
            field="text",
        )
        self.attempts = tuple(attempts)
        self.usage = usage
        self.metadata = {"attempts": str(len(attempts)), "problems": listed}


class LLMTaskPlanner:
    """Plans tasks with the model and repairs its proposals (see the module doc)."""

    __slots__ = ("_max_tasks", "_provider", "_repair_attempts")

    def __init__(self, provider: LLMProvider, *, repair_attempts: int, max_tasks: int) -> None:
        self._provider = provider
        self._repair_attempts = repair_attempts
        self._max_tasks = max_tasks

    async def plan(
        self,
        text: str,
        *,
        actions: ActionCatalog,
        timeout_s: float,
        context: dict[str, object] | None = None,
        policy: Policy | None = None,
        memories: Sequence[MemoryHit] = (),
        conversation: Sequence[ConversationEntry] = (),
    ) -> PlannedTasks:
        """The checked tasks of `text`; PlanRefused when no attempt passed, an LLMError as the
        provider raised it (a bad answer is repaired like an invalid plan, and raised when the
        last attempt is one)."""
        messages = prompts.planning(
            text,
            actions=actions,
            context=context,
            policy=policy,
            memories=memories,
            conversation=conversation,
        )
        rendered = tuple(messages)
        attempts: list[Attempt] = []
        usage = Usage()
        bad_answer: LLMBadAnswerError | None = None
        for _ in range(1 + self._repair_attempts):
            bad_answer = None
            try:
                answer = await self._provider.generate_structured(
                    messages, TaskPlan, timeout_s=timeout_s
                )
            except LLMBadAnswerError as error:
                # An answer that does not parse (garbage, too large, too deep) is one more thing
                # the model can correct.
                usage += error.usage
                bad_answer = error
                problem = Problem("answer", f"does not fit the TaskPlan schema: {error}"[:500])
                attempts.append(Attempt(problems=(problem,), total_problems=1, usage=error.usage))
                messages = [*messages, prompts.repair([problem])]
                continue
            usage += answer.usage
            checked = check(answer.value, actions=actions, max_tasks=self._max_tasks, policy=policy)
            attempts.append(
                Attempt(problems=checked.problems, total_problems=checked.total, usage=answer.usage)
            )
            if checked.todos is not None:
                return PlannedTasks(
                    todos=checked.todos,
                    reasoning=answer.value.reasoning,
                    attempts=tuple(attempts),
                    usage=usage,
                    messages=rendered,
                )
            messages = [
                *messages,
                Message("assistant", answer.raw[:_MAX_ECHOED_ANSWER_CHARS]),
                prompts.repair(checked.problems),
            ]
        if bad_answer is not None:
            # The last answer did not even parse: the model's fault, not the plan's.
            raise bad_answer
        raise PlanRefused(attempts, usage)
