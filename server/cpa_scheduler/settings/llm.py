"""Language model: which provider plans and embeds, and how it is reached (docs/LLM.md).

The API key is never a setting's value (settings are logged and shown): a setting names the
environment variable that holds it, or a file that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class LLMSettings(BaseSettings):
    """Language-model settings (CPA_LLM_*; see Settings)."""

    llm_provider: str = Field(
        default="",
        description='Provider of the planner and the memory: "" (none: the rule router plans, '
        'memory embeds lexically), "openai" (any OpenAI-compatible server), "scripted" '
        "(answers from llm_script_path). An unknown name stops the start.",
    )
    llm_model: str = Field(
        default="gpt-4o-mini",
        description="Chat model of the openai provider (structured answers need a model with "
        "json_schema support).",
    )
    llm_embedding_model: str = Field(
        default="text-embedding-3-small",
        description="Embedding model of the openai provider.",
    )
    llm_embedding_dimension: int = Field(
        default=0,
        ge=0,
        le=65536,
        description="Length of the vectors embed() returns. openai: sent as `dimensions` "
        "(models that support it); the scripted provider's lexical embedder: its dimension. "
        "0: the model's own (openai), 256 (lexical).",
    )
    llm_embedding_batch_size: int = Field(
        default=128,
        ge=1,
        le=2048,
        description="Most texts in one embeddings request; more are sent in several, in order.",
    )
    llm_base_url: str = Field(
        default="",
        description="Base URL of the OpenAI-compatible API, /v1 included; empty: the SDK's "
        "default (OPENAI_BASE_URL, else OpenAI's).",
    )
    llm_api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="Name of the environment variable that holds the API key (the key itself "
        "is never a setting).",
    )
    llm_api_key_file: Path | None = Field(
        default=None,
        description="A file holding the API key (blanks around it ignored); wins over "
        "llm_api_key_env.",
    )
    llm_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest time one provider call may take, its retries included (a caller's "
        "shorter deadline wins).",
    )
    llm_max_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a 408/409/429/5xx answer or a lost connection, with the SDK's "
        "backoff (honouring retry-after up to 120 s) within llm_timeout_s.",
    )
    llm_script_path: Path | None = Field(
        default=None,
        description="YAML file of the scripted provider's answers (required with "
        'llm_provider="scripted"; format in docs/LLM.md).',
    )

    @field_validator("llm_provider", mode="before")
    @classmethod
    def _normalise_provider(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("llm_api_key_file", "llm_script_path", mode="before")
    @classmethod
    def _blank_path_is_none(cls, value: Any) -> Any:
        # CPA_LLM_API_KEY_FILE= (a compose file's blank) means "not set", not the directory ".".
        return None if isinstance(value, str) and not value.strip() else value
