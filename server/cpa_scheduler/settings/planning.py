"""Planning: the intent catalog and the limits of routing and rendering."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

DEFAULT_INTENTS_PATH = Path(__file__).parent.parent / "planning" / "intents.yaml"


class PlanningSettings(BaseSettings):
    """Planning settings (CPA_*; see Settings)."""

    intents_path: Path = Field(
        default=DEFAULT_INTENTS_PATH,
        description="YAML catalog of intents for the rule-based router.",
    )
    routing_text_max_bytes: int = Field(
        default=1024,
        ge=1,
        description="Longest text (UTF-8 bytes) routed to an intent; longer is INVALID_ARGUMENT "
        "(TEXT_TOO_LONG).",
    )
    template_render_max_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Most text one intent's task templates may render for one request, all "
        "tasks together; more is INVALID_ARGUMENT (TEMPLATE_LIMIT_EXCEEDED).",
    )
    template_render_max_steps: int = Field(
        default=10_000,
        ge=1,
        description="Most loop iterations and calls one intent's task templates may take for "
        "one request; more is INVALID_ARGUMENT (TEMPLATE_LIMIT_EXCEEDED).",
    )
