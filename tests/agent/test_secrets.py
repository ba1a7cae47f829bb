"""The agent's default secret provider (env:, file:, bare names), its plug-in, and the scrubbing
of resolved values out of everything an attempt reports."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from cpa.executor.v1 import executor_service_pb2 as pb
from cpa_agent import AgentSettings, ExecutionContext, ExecutorError, ExecutorRegistry
from cpa_agent.executors.testing import StaticSecrets
from cpa_agent.runner import AttemptRunner
from cpa_agent.secrets import DefaultSecretProvider, scrub_json, secret_provider
from tests.fixtures.dists import make_distribution

from .scripted_scheduler import todo

SECRET = "s3cr3t-Pa55"


async def test_env_file_and_bare_name_references(tmp_path: Path) -> None:
    secret_file = tmp_path / "portal.txt"
    secret_file.write_text("from-file\n", encoding="utf-8")
    (tmp_path / "mail-box.key").write_text("from-dir\r\n", encoding="utf-8")
    provider = DefaultSecretProvider(
        secrets_dir=tmp_path,
        environ={"PORTAL_PASSWORD": "from-env", "CPA_SECRET_MAIL_TOKEN": "from-prefixed-env"},
    )

    assert await provider.get("env:PORTAL_PASSWORD") == "from-env"
    assert await provider.get(f"file:{secret_file}") == "from-file"
    assert await provider.get("mail.token") == "from-prefixed-env"
    assert await provider.get("mail-box.key") == "from-dir"


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("env:NOPE", "no such environment variable"),
        ("file:relative/path", "absolute path"),
        ("file:/nonexistent/secret", "unreadable (FileNotFoundError)"),
        ("../etc/passwd", "not env:NAME, file:/path or a bare name"),
        (".hidden", "not env:NAME, file:/path or a bare name"),
        ("vault://x", "not env:NAME, file:/path or a bare name"),
        ("unknown", "no CPA_SECRET_UNKNOWN"),
    ],
)
async def test_unresolvable_references_are_key_errors_naming_the_reference(
    ref: str, why: str, tmp_path: Path
) -> None:
    provider = DefaultSecretProvider(environ={})

    with pytest.raises(KeyError) as caught:
        await provider.get(ref)

    assert why in str(caught.value)


async def test_a_secret_file_over_the_bound_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))

    with pytest.raises(KeyError, match="unreadable"):
        await DefaultSecretProvider(environ={}).get(f"file:{big}")


async def test_a_plugin_provider_is_asked_first_and_falls_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_distribution(
        tmp_path / "site",
        name="vaultish",
        module="vaultish",
        source="""
            class Vault:
                async def get(self, ref):
                    if ref.startswith("vault://"):
                        return "from-vault:" + ref.removeprefix("vault://")
                    raise KeyError(ref)

            def provider():
                return Vault()
        """,
        entry_points={},
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("CPA_SECRET_LOCAL", "from-env")
    try:
        provider = secret_provider(AgentSettings(secret_provider="vaultish:provider"))

        assert await provider.get("vault://portal") == "from-vault:portal"
        assert await provider.get("local") == "from-env"
    finally:
        sys.modules.pop("vaultish", None)


def test_a_malformed_plugin_path_is_refused() -> None:
    with pytest.raises(ValueError, match=r"package\.module:factory"):
        secret_provider(AgentSettings(secret_provider="no_colon_here"))


class _Leaky:
    """Resolves the portal secret, then tries to leak it everywhere an attempt reports."""

    action = "leaky"

    async def run(self, ctx: ExecutionContext) -> dict[str, Any]:
        value = await ctx.secret("portal")
        await ctx.progress(50.0, f"logging in with {value}")
        how = ctx.params["how"]
        if how == "error":
            raise ExecutorError(
                "LOGIN_FAILED",
                f"password {value} refused",
                retryable=False,
                details={"tried": value, value: "as a key"},
            )
        if how == "raise":
            raise RuntimeError(f"crashed holding {value}")
        return {"echo": value, "nested": [{"again": f"x{value}x"}], value: 1}


async def _run_leaky(how: str) -> tuple[pb.Result, list[pb.Progress]]:
    progress: list[pb.Progress] = []
    runner = AttemptRunner(
        assignment=pb.Assignment(
            job_id="job-1",
            todo=todo("leaky", params={"how": how}),
            attempt=1,
            credential_refs={"portal": "env:PORTAL"},
        ),
        registry=ExecutorRegistry(executors=[_Leaky()]),
        on_progress=progress.append,
        secrets=StaticSecrets({"env:PORTAL": SECRET}),
    )
    return await asyncio.wait_for(runner.run(), 10), progress


@pytest.mark.parametrize("how", ["outputs", "error", "raise"])
async def test_the_runner_scrubs_resolved_secrets_from_all_it_reports(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    result, progress = await _run_leaky(how)

    assert [p.message for p in progress] == ["logging in with ***"]
    assert SECRET not in str(result)
    assert SECRET not in caplog.text
    if how == "outputs":
        assert dict(result.outputs)["echo"] == "***"
        assert "***" in dict(result.outputs)
    elif how == "error":
        assert result.error.message == "password *** refused"
        assert dict(result.error.details) == {"tried": "***", "***": "as a key"}
    else:
        assert result.error.message == "RuntimeError: crashed holding ***"
        assert "crashed holding ***" in caplog.text


async def test_a_missing_credential_names_purpose_and_reference() -> None:
    runner = AttemptRunner(
        assignment=pb.Assignment(
            job_id="job-1",
            todo=todo("leaky", params={"how": "outputs"}),
            attempt=1,
            credential_refs={"portal": "env:ABSENT"},
        ),
        registry=ExecutorRegistry(executors=[_Leaky()]),
        on_progress=lambda progress: None,
        secrets=DefaultSecretProvider(environ={}),
    )

    result = await runner.run()

    assert result.error.code == "CREDENTIAL_NOT_FOUND"
    assert not result.error.retryable
    assert "'env:ABSENT'" in result.error.message
    assert "'portal'" in result.error.message


def test_scrubbing_replaces_the_longest_secret_first() -> None:
    assert scrub_json({"a": "abc-abcdef"}, ["abc", "abcdef"]) == {"a": "***-***"}
    assert scrub_json([1, None, "x"], []) == [1, None, "x"]
