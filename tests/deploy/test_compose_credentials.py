"""docker-compose.yml's credentials, run: its one-shot key services' commands against a migrated
PostgreSQL, then a replica with authentication on (the compose default), an agent with the
compose agents' environment (token and health key files), the agents' health check command, and
a job submitted with the admin key. Processes as compose would start them, minus Docker: the
volume path /var/lib/cpa-keys becomes a directory of the test, `gateway:8080` the replica."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

from tests.fixtures.cluster import PAGE_TOKEN_SECRETS, Cluster
from tests.fixtures.history import eventually

from .test_compose import SERVICES

KEYS_MOUNT = "/var/lib/cpa-keys"
AGENT_NAME = "compose-agent"
RUN_TIMEOUT_S = 60.0
OUTCOME = re.compile(r"^job [0-9a-f]{32} (?P<state>[A-Z_]+) in ", re.MULTILINE)


def _mounted(value: str, directory: Path) -> str:
    return value.replace(KEYS_MOUNT, str(directory))


def _cpa(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpa_cli", *argv],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CPA_")}, **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _one_shot(name: str, directory: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The compose service `name`'s command, its volume at `directory`."""
    service = SERVICES[name]
    (volume,) = service["volumes"]
    assert volume.endswith(f":{KEYS_MOUNT}"), volume
    return _cpa([_mounted(arg, directory) for arg in service["command"]], env)


def _agent_environment(directory: Path) -> dict[str, str]:
    environment: dict[str, str] = SERVICES["agent"]["environment"]
    return {name: _mounted(value, directory) for name, value in environment.items()}


def _health_check_argv(target: str) -> list[str]:
    test = SERVICES["agent"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL", test
    argv = shlex.split(test[1].replace("$$HOSTNAME", AGENT_NAME))
    assert argv[:2] == ["cpa", "health"], argv
    return [arg.replace("gateway:8080", target) for arg in argv[1:]]


async def test_the_compose_credentials_run_agents_and_jobs_with_authentication_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.migrate()
    store_env = {
        "CPA_DATABASE_URL": cluster.database_url,
        "CPA_PAGE_TOKEN_SECRETS": PAGE_TOKEN_SECRETS,
    }
    admin_dir, agent_dir = tmp_path / "admin-keys", tmp_path / "agent-keys"
    admin_dir.mkdir(mode=0o700)
    agent_dir.mkdir(mode=0o700)
    volumes = {"admin-key": admin_dir, "agent-token": agent_dir, "health-key": agent_dir}

    for name, directory in volumes.items():
        made = _one_shot(name, directory, store_env)
        assert made.returncode == 0, made.stderr
        assert "cpa_" not in made.stdout  # the secret went to the file only
    files = [admin_dir / "admin.key", agent_dir / "agent.token", agent_dir / "health.key"]
    secrets = [path.read_text().strip() for path in files]
    assert all(secret.startswith("cpa_") for secret in secrets)
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}
    # A later `up` runs them again: the files hold valid keys, so nothing changes.
    for name, directory in volumes.items():
        again = _one_shot(name, directory, store_env)
        assert again.returncode == 0, again.stderr
        assert "kept" in again.stderr
    assert [path.read_text().strip() for path in files] == secrets

    cluster.settings["CPA_INSECURE_LOCAL"] = "false"
    replica = cluster.replica("compose-replica")
    agents = _agent_environment(agent_dir)
    health = _health_check_argv(replica.target)

    # The health check needs its key: without it, ListAgents is refused.
    anonymous = _cpa(health, {})
    assert anonymous.returncode == 1
    assert "UNAUTHENTICATED" in anonymous.stderr

    # The agent reads its token file; the health key is the health check's.
    token_file = agents["CPA_AGENT_TOKEN_FILE"]
    cluster.agent(AGENT_NAME, replica, CPA_AGENT_NAME=AGENT_NAME, CPA_AGENT_TOKEN_FILE=token_file)

    async def healthy() -> bool:
        checked = await asyncio.to_thread(_cpa, health, agents)
        return checked.returncode == 0

    await eventually(healthy, what="the agent's compose health check to pass", timeout_s=30.0)

    todos = tmp_path / "todos.yaml"
    todos.write_text("- {id: first, action: noop}\n", encoding="utf-8")
    as_admin = {"CPA_API_KEY_FILE": str(files[0])}
    submitted = _cpa(
        ["submit", "--todos", str(todos), "--watch", "--server", replica.target], as_admin
    )
    outcome = OUTCOME.search(submitted.stdout)
    assert outcome is not None, submitted
    assert outcome["state"] == "SUCCEEDED", submitted


async def test_a_revoked_or_foreign_key_file_is_replaced_or_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.migrate()
    store_env = {
        "CPA_DATABASE_URL": cluster.database_url,
        "CPA_PAGE_TOKEN_SECRETS": PAGE_TOKEN_SECRETS,
    }
    assert _one_shot("admin-key", tmp_path, store_env).returncode == 0
    assert _one_shot("agent-token", tmp_path, store_env).returncode == 0
    token = (tmp_path / "agent.token").read_text().strip()

    # Another kind of key under the same file: refused, the file kept.
    viewer = ["keys", "create", "--bootstrap", "--role", "viewer", "--secret-file"]
    foreign = _cpa([*viewer, str(tmp_path / "agent.token")], store_env)
    assert foreign.returncode == 2
    assert "of another tenant, roles or agent scope" in foreign.stderr
    assert (tmp_path / "agent.token").read_text().strip() == token

    # Revoked (through a replica, with the admin key): the next run makes a new one.
    cluster.settings["CPA_INSECURE_LOCAL"] = "false"
    replica = cluster.replica("revoking-replica")
    key_id = token.split("_")[1]
    as_admin = {"CPA_API_KEY_FILE": str(tmp_path / "admin.key")}
    revoked = _cpa(["keys", "revoke", key_id, "--server", replica.target], as_admin)
    assert revoked.returncode == 0, revoked.stderr
    replaced = _one_shot("agent-token", tmp_path, store_env)
    assert replaced.returncode == 0, replaced.stderr
    assert "kept" not in replaced.stderr
    new_token = (tmp_path / "agent.token").read_text().strip()
    assert new_token.startswith("cpa_")
    assert new_token != token
