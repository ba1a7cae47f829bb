"""Providers by name, and the one the settings choose (CPA_LLM_PROVIDER).

Called once at start: an unknown name, a missing key or script, or a broken script is an
LLMNotConfiguredError whose message names the setting or the file, and the start stops on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from ..settings import Settings
from .interface import LLMNotConfiguredError, LLMProvider
from .openai_provider import OpenAIProvider
from .scripted import ScriptedProvider


def _scripted(settings: Settings) -> ScriptedProvider:
    if settings.llm_script_path is None:
        raise LLMNotConfiguredError(
            "CPA_LLM_PROVIDER=scripted needs CPA_LLM_SCRIPT_PATH (the YAML file of its answers)"
        )
    return ScriptedProvider.from_file(
        settings.llm_script_path, embedding_dimension=settings.llm_embedding_dimension
    )


PROVIDERS: Mapping[str, Callable[[Settings], LLMProvider]] = MappingProxyType(
    {"openai": OpenAIProvider.from_settings, "scripted": _scripted}
)


def provider_from_settings(settings: Settings) -> LLMProvider | None:
    """The configured provider, or None when CPA_LLM_PROVIDER is empty (no model: the rule
    router plans and memory embeds lexically)."""
    name = settings.llm_provider
    if not name:
        return None
    factory = PROVIDERS.get(name)
    if factory is None:
        raise LLMNotConfiguredError(
            f"CPA_LLM_PROVIDER={name!r} is not a provider; use one of "
            f"{', '.join(sorted(PROVIDERS))}, or leave it empty for none"
        )
    return factory(settings)
