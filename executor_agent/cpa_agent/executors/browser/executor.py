"""The browser executors: `playwright` (ops in params) and the UI actions click, type and
wait_for (ToDo.selector and ToDo.text), all on one BrowserPool per agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from playwright.async_api import Error as PlaywrightError
from pydantic import BaseModel, ConfigDict, Field

from cpa_agent.executors.base import ExecutionContext, ExecutorError
from cpa_agent.executors.browser import errors
from cpa_agent.executors.browser.errors import Scrubber
from cpa_agent.executors.browser.evidence import Evidence, step_name
from cpa_agent.executors.browser.ops import OpRun, run_op
from cpa_agent.executors.browser.params import (
    AnyOp,
    PlaywrightParams,
    Screenshot,
    Type,
)
from cpa_agent.executors.browser.params import Click as ClickOp
from cpa_agent.executors.browser.params import WaitFor as WaitForOp
from cpa_agent.executors.browser.pool import BrowserPool, BrowserSession
from cpa_agent.executors.browser.selectors import from_todo
from cpa_agent.executors.browser.settings import BrowserSettings
from cpa_agent.executors.params import INVALID_PARAMS

logger = logging.getLogger(__name__)

CAPABILITY = "browser:chromium"
_MIN_OP_TIMEOUT_S = 0.1


class BrowserActions:
    """Runs a list of ops in the task's session: the part the browser executors share."""

    def __init__(self, pool: BrowserPool, settings: BrowserSettings) -> None:
        self.pool = pool
        self.settings = settings

    async def perform(self, ctx: ExecutionContext, steps: Sequence[AnyOp]) -> dict[str, Any]:
        """Runs `steps` in order, a screenshot after each; the outputs, or the first failure
        with its evidence. A cancel closes the session's page (ending what is pending on it)
        and keeps its context."""
        scrubber = Scrubber()
        evidence = Evidence(
            ctx.artifacts,
            scrubber,
            dom_excerpt_chars=self.settings.dom_excerpt_chars,
            dom_artifact_bytes=self.settings.dom_artifact_bytes,
        )
        texts: dict[str, str] = {}
        downloads: dict[str, dict[str, Any]] = {}
        async with self.pool.session(ctx.job_id, ctx.session) as session:
            try:
                page = await session.page()
                for index, op in enumerate(steps, start=1):
                    await ctx.progress(
                        100.0 * (index - 1) / len(steps), _progress_message(index, len(steps), op)
                    )
                    run = OpRun(
                        ctx=ctx,
                        settings=self.settings,
                        scrubber=scrubber,
                        evidence=evidence,
                        index=index,
                        path=f"params.steps[{index - 1}]",
                        timeout_s=self._timeout_s(op.timeout_s, ctx.deadline),
                        texts=texts,
                        downloads=downloads,
                    )
                    try:
                        await run_op(page, op, run)
                        if not isinstance(op, Screenshot):
                            await evidence.screenshot(
                                page, step_name(index, op.op), timeout_s=run.timeout_s
                            )
                    except ExecutorError as error:
                        raise await evidence.failure(page, index, op.op, error) from None
                    except PlaywrightError as error:  # from the screenshot
                        failed = errors.op_failed(error)
                        raise await evidence.failure(page, index, op.op, failed) from None
                url = scrubber.scrub(page.url)
            except asyncio.CancelledError:
                await self._stopped(session)
                raise
        outputs: dict[str, Any] = {"url": url, "texts": texts, "artifacts": list(evidence.names)}
        if downloads:
            outputs["downloads"] = downloads
        return outputs

    async def _stopped(self, session: BrowserSession) -> None:
        # The runner cancelled the task (timeout, cancel, drain): a Playwright call may still be
        # pending in the driver (a click waiting for its element) and would act later, in the
        # next task's page. Closing the page ends it; the context and its cookies stay.
        logger.info("browser task stopped: closing the page of session %s/%s", *session.key)
        await session.discard_page()

    def _timeout_s(self, own: float | None, deadline: datetime | None) -> float:
        """The op's timeout, cut so that it ends evidence_reserve_s before the task's deadline
        (the runner cancels at the deadline, and a failure needs time for its evidence)."""
        timeout_s = own if own is not None else self.settings.op_timeout_s
        if deadline is not None:
            left_s = (deadline - datetime.now(UTC)).total_seconds()
            reserve_s = min(self.settings.evidence_reserve_s, left_s / 4)
            timeout_s = min(timeout_s, left_s - reserve_s)
        return max(_MIN_OP_TIMEOUT_S, timeout_s)

    async def close_session(self, job_id: str, session: str) -> None:
        await self.pool.close_session(job_id, session)

    async def aclose(self) -> None:
        await self.pool.aclose()


def _progress_message(index: int, total: int, op: AnyOp) -> str:
    selector = getattr(op, "selector", None)
    where = "" if selector is None else f" {selector.describe()}"
    return f"step {index}/{total}: {op.op}{where}"


class _BrowserExecutor:
    """What the browser executors have in common: the shared actions and session hooks."""

    capabilities = (CAPABILITY,)

    def __init__(self, actions: BrowserActions) -> None:
        self._actions = actions

    @property
    def pool(self) -> BrowserPool:
        """The browser and sessions this executor shares with the agent's other browser ones."""
        return self._actions.pool

    def unavailable_reason(self) -> str | None:
        """Why this agent cannot run browser actions now (Chromium removed since the start), or
        None; the agent stops advertising the actions while it says so."""
        return self._actions.settings.chromium_missing()

    async def close_session(self, job_id: str, session: str) -> None:
        """The scheduler ended the session: its context closes (the pool is shared, so the first
        executor asked closes it and the others find nothing)."""
        await self._actions.close_session(job_id, session)

    async def aclose(self) -> None:
        await self._actions.aclose()


class PlaywrightExecutor(_BrowserExecutor):
    """Action `playwright`: params are one op or `{"steps": [...]}` (docs/BROWSER.md)."""

    action = "playwright"
    params_model = PlaywrightParams

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        # The runner validated ctx.params with params_model (a refusal never reaches here).
        params = _parsed(ctx, PlaywrightParams)
        return await self._actions.perform(ctx, params.steps)


class _UiParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class ClickParams(_UiParams):
    """Params of the `click` action; the element is ToDo.selector."""


class TypeParams(_UiParams):
    """Params of the `type` action: ToDo.text is typed, or the secret `secret` names."""

    secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class WaitForParams(_UiParams):
    """Params of the `wait_for` action: the state ToDo.selector's element must reach."""

    state: Literal["attached", "detached", "visible", "hidden"] = "visible"


class UiActionExecutor(_BrowserExecutor):
    """The built-in UI actions click, type and wait_for, run as one op in the task's session."""

    def __init__(
        self, action: Literal["click", "type", "wait_for"], actions: BrowserActions
    ) -> None:
        super().__init__(actions)
        self._action = action
        models: dict[str, type[_UiParams]] = {
            "click": ClickParams,
            "type": TypeParams,
            "wait_for": WaitForParams,
        }
        self.params_model = models[action]

    @property
    def action(self) -> str:
        return self._action

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        params = _parsed(ctx, self.params_model)
        selector = from_todo(ctx.todo)
        op: AnyOp
        if isinstance(params, TypeParams):
            if (params.secret is None) == (not ctx.todo.text):
                raise ExecutorError(
                    INVALID_PARAMS,
                    "todo.text: give the text to type in ToDo.text or the secret's purpose in "
                    "params.secret, one of them",
                    retryable=False,
                    details={"field": "todo.text"},
                )
            op = Type(
                op="type",
                selector=selector,
                text=None if params.secret is not None else ctx.todo.text,
                secret=params.secret,
                timeout_s=params.timeout_s,
            )
        elif isinstance(params, WaitForParams):
            op = WaitForOp(
                op="wait_for", selector=selector, state=params.state, timeout_s=params.timeout_s
            )
        else:
            op = ClickOp(op="click", selector=selector, timeout_s=params.timeout_s)
        return await self._actions.perform(ctx, [op])


_Model = TypeVar("_Model", bound=BaseModel)


def _parsed(ctx: ExecutionContext, model: type[_Model]) -> _Model:
    params = ctx.parsed_params
    if not isinstance(params, model):
        raise TypeError(
            f"ctx.parsed_params is {type(params).__name__}, not {model.__name__}: run browser "
            "executors through the agent's runner or cpa_agent.executors.testing"
        )
    return params


def browser_executors(
    settings: BrowserSettings | None = None,
) -> list[PlaywrightExecutor | UiActionExecutor]:
    """The four browser executors over one pool (nothing is launched until the first task)."""
    settings = settings if settings is not None else BrowserSettings()
    actions = BrowserActions(BrowserPool(settings), settings)
    return [
        PlaywrightExecutor(actions),
        UiActionExecutor("click", actions),
        UiActionExecutor("type", actions),
        UiActionExecutor("wait_for", actions),
    ]
