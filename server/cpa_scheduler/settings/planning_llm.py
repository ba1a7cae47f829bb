"""Planning with a language model: when the LLM router's answer is trusted, how often a plan is
repaired, how many plans are made at once and how long one may take. The provider itself is
configured by the LLM settings; without one, text is routed by the rules alone."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class PlanningLLMSettings(BaseSettings):
    """LLM planning settings (CPA_*; see Settings)."""

    planning_llm_min_confidence: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Least confidence at which the LLM router's intent is taken; below it the "
        "rule router decides.",
    )
    planning_llm_repair_attempts: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Times an invalid LLM plan is sent back to the model with its problems "
        "before the request is refused (INVALID_ARGUMENT, PLAN_INVALID).",
    )
    planning_llm_concurrency: int = Field(
        default=4,
        ge=1,
        description="LLM plannings in progress at once on one replica; a request beyond is "
        "refused at once with RESOURCE_EXHAUSTED (PLANNING_BUSY).",
    )
    planning_llm_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Most time one request's LLM planning may take, all calls and repairs "
        "together (less when the request's deadline is nearer).",
    )
