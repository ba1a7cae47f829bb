"""`cpa plan "..."` uses the configured provider and shows who decided, why, and the attempts."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.support.openai_server import OpenAIServer

from .answers import GOOD_STEPS, intent, plan, step


async def cpa_plan(server: OpenAIServer, tmp_path: Path, *arguments: str) -> tuple[int, str]:
    key = tmp_path / "key"
    key.write_text("sk-test")
    env = {
        **os.environ,
        "CPA_LLM_PROVIDER": "openai",
        "CPA_LLM_BASE_URL": server.base_url,
        "CPA_LLM_API_KEY_FILE": str(key),
        "CPA_LLM_MAX_RETRIES": "0",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cpa_cli",
        "plan",
        *arguments,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode()


async def test_cpa_plan_shows_the_models_plan_and_its_attempts(tmp_path: Path) -> None:
    async with OpenAIServer() as server:
        server.chat.push(intent("unknown", 0.9), plan(step("a", "nope")), plan(*GOOD_STEPS))
        code, output = await cpa_plan(server, tmp_path, "greet twice", "--prompts")
    assert code == 0, output
    assert "decided by  llm_planner:" in output
    assert "reasoning   because" in output
    assert "attempt 1   1 problem(s)\n  tasks[0].action: unknown action 'nope'" in output
    assert "attempt 2   accepted" in output
    assert "--- prompt plan, system ---" in output
    assert "  step 3: repeat" in output


async def test_cpa_plan_json_has_the_router_decision(tmp_path: Path) -> None:
    async with OpenAIServer() as server:
        server.chat.push(intent("send_mail", 0.99, recipient="a@b.example"))
        code, output = await cpa_plan(server, tmp_path, "note to a", "--json")
    assert code == 0, output
    assert '"decided_by": "llm_router"' in output
    assert '"prompt_tokens": "11"' in output
