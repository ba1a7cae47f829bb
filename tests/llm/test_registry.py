"""The provider the settings choose, and clear errors at start when they cannot give one."""

from __future__ import annotations

from pathlib import Path

import pytest

from cpa_scheduler.llm import LLMNotConfiguredError, Message
from cpa_scheduler.llm.openai_provider import OpenAIProvider
from cpa_scheduler.llm.registry import provider_from_settings
from cpa_scheduler.llm.scripted import ScriptedProvider, ScriptError
from cpa_scheduler.settings import Settings
from tests.support.openai_server import OpenAIServer, chat_reply

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm" / "scripted.yaml"


def test_no_provider_by_default() -> None:
    assert provider_from_settings(Settings()) is None


def test_an_unknown_name_is_refused_naming_the_choices() -> None:
    with pytest.raises(LLMNotConfiguredError, match=r"CPA_LLM_PROVIDER='gpt'.*openai, scripted"):
        provider_from_settings(Settings(llm_provider="gpt"))


def test_the_name_is_read_loosely() -> None:
    provider = provider_from_settings(Settings(llm_provider=" Scripted ", llm_script_path=EXAMPLE))
    assert isinstance(provider, ScriptedProvider)


def test_scripted_needs_a_script_and_a_good_one(tmp_path: Path) -> None:
    with pytest.raises(LLMNotConfiguredError, match="CPA_LLM_SCRIPT_PATH"):
        provider_from_settings(Settings(llm_provider="scripted"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("answers:\n  - pattern: x\n")
    with pytest.raises(ScriptError, match=r"broken\.yaml:2"):
        provider_from_settings(Settings(llm_provider="scripted", llm_script_path=broken))


async def test_scripted_embeds_with_the_configured_dimension() -> None:
    settings = Settings(
        llm_provider="scripted", llm_script_path=EXAMPLE, llm_embedding_dimension=48
    )
    provider = provider_from_settings(settings)
    assert provider is not None
    assert len((await provider.embed(["x"])).vectors[0]) == 48


def test_openai_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CPA_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(LLMNotConfiguredError, match="CPA_TEST_NO_SUCH_KEY"):
        provider_from_settings(
            Settings(llm_provider="openai", llm_api_key_env="CPA_TEST_NO_SUCH_KEY")
        )


async def test_openai_from_settings_talks_to_the_base_url_with_the_key(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPA_TEST_LLM_KEY", "sk-settings")
    settings = Settings(
        llm_provider="openai",
        llm_api_key_env="CPA_TEST_LLM_KEY",
        llm_base_url=openai_server.base_url,
        llm_model="local-model",
    )
    provider = provider_from_settings(settings)
    assert isinstance(provider, OpenAIProvider)
    openai_server.chat.push(chat_reply("hi"))
    assert (await provider.generate([Message("user", "hello")])).text == "hi"
    await provider.aclose()
    (request,) = openai_server.chat_requests
    assert request.json["model"] == "local-model"
    assert request.headers["authorization"] == "Bearer sk-settings"
