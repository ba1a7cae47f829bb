"""Authentication end to end with real processes: `cpa serve` with authentication on (the
embedded default's local admin key), `cpa keys`, `cpa` commands with keys, and REST through a
real Envoy (`cpa gateway`), whose `authorization` / `x-api-key` headers reach the scheduler."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import httpx

from .conftest import START_TIMEOUT_S, StartCli, start_gateway, start_server

AUTH_ON = {"CPA_INSECURE_LOCAL": "false"}
LOCAL_KEY_LINE = re.compile(r"^\s+(cpa_[0-9a-f]{12}_\S+)$")
EXIT_TIMEOUT_S = 30.0


def _cpa(
    start_cli: StartCli, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = start_cli(*args, env=env)
    output = "\n".join(process.rest_of_output(EXIT_TIMEOUT_S))
    return process.exit_code(EXIT_TIMEOUT_S), output, process.stderr()


def test_keys_and_rest_with_authentication_on(start_cli: StartCli) -> None:
    server, address = start_server(start_cli, env=AUTH_ON)
    # The first start printed the local admin key once, on stderr, and where it is kept.
    local_key = next(
        m[1] for line in server.stderr().splitlines() if (m := LOCAL_KEY_LINE.match(line))
    )
    assert "data/local-admin.key" in server.stderr()

    # `cpa keys` on this machine uses the local admin key (data/local-admin.key) by itself.
    code, out, err = _cpa(
        start_cli, "keys", "create", "--role", "viewer", "--json", "--server", address
    )
    assert code == 0, err
    viewer = json.loads(out)
    viewer_key = viewer["secret"]
    assert viewer_key != local_key
    code, out, err = _cpa(start_cli, "keys", "list", "--server", address)
    assert code == 0, err
    assert viewer["key"]["keyId"] in out
    assert viewer_key not in out  # never a secret

    # Another credential: CPA_API_KEY wins; a viewer reads but may not submit.
    as_viewer = {"CPA_API_KEY": viewer_key}
    code, _, err = _cpa(start_cli, "jobs", "list", "--server", address, env=as_viewer)
    assert code == 0, err
    code, _, err = _cpa(start_cli, "submit", "--intent", "noop", "--server", address, env=as_viewer)
    assert code == 2
    assert "PERMISSION_DENIED" in err
    assert "jobs.submit" in err

    gateway, match = start_gateway(start_cli, address)
    with httpx.Client(base_url=f"http://{match['address']}", timeout=10.0, trust_env=False) as http:
        anonymous = http.get("/v1/jobs")
        assert anonymous.status_code == 401, anonymous.text
        status = anonymous.json()
        assert status["code"] == 16  # UNAUTHENTICATED, as a JSON google.rpc.Status
        assert status["details"][0]["reason"] == "UNAUTHENTICATED"
        assert http.get("/v1/jobs", headers={"x-api-key": viewer_key}).status_code == 200
        bearer = {"authorization": f"Bearer {viewer_key}"}
        assert http.get("/v1/jobs", headers=bearer).status_code == 200
        forbidden = http.post("/v1/jobs", headers=bearer, json={"spec": {"text": "x"}})
        assert forbidden.status_code == 403, forbidden.text
        assert forbidden.json()["details"][0]["reason"] == "PERMISSION_DENIED"

        code, _, err = _cpa(
            start_cli, "keys", "revoke", viewer["key"]["keyId"], "--server", address
        )
        assert code == 0, err
        revoked = http.get("/v1/jobs", headers=bearer)
        assert revoked.status_code == 401
        assert revoked.json()["details"][0]["reason"] == "CREDENTIAL_REVOKED"
    gateway.terminate()
    server.terminate()
    assert server.exit_code(START_TIMEOUT_S) == 0


def test_insecure_local_refuses_a_public_listen_address(start_cli: StartCli) -> None:
    code, _, err = _cpa(
        start_cli, "serve", "--insecure-local", "--listen", "0.0.0.0:0", "--data-dir", "data"
    )
    assert code == 2
    assert "loopback only" in err


def test_keys_in_files_secret_file_and_api_key_file(start_cli: StartCli, tmp_path: Path) -> None:
    server, address = start_server(start_cli, env=AUTH_ON)
    key_file = tmp_path / "viewer.key"
    create = ("keys", "create", "--role", "viewer", "--secret-file", str(key_file))

    code, out, err = _cpa(start_cli, *create, "--server", address)
    assert code == 0, err
    assert "cpa_" not in out  # the secret went to the file, readable by its owner only
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_id = key_file.read_text().split("_")[1]
    assert out.startswith(key_id)
    # Never over an existing file (that is what --bootstrap's keeping is for).
    code, _, err = _cpa(start_cli, *create, "--server", address)
    assert code == 2
    assert "exists" in err

    # CPA_API_KEY_FILE: the viewer reads but may not submit.
    from_file = {"CPA_API_KEY_FILE": str(key_file)}
    code, _, err = _cpa(start_cli, "jobs", "list", "--server", address, env=from_file)
    assert code == 0, err
    code, _, err = _cpa(start_cli, "submit", "--intent", "x", "--server", address, env=from_file)
    assert code == 2
    assert "PERMISSION_DENIED" in err
    # A key file named but unreadable is an error, not a fall back to the local admin key.
    missing = {"CPA_API_KEY_FILE": str(tmp_path / "missing.key")}
    code, _, err = _cpa(start_cli, "jobs", "list", "--server", address, env=missing)
    assert code == 2
    assert "CPA_API_KEY_FILE: cannot read" in err
    server.terminate()
    assert server.exit_code(START_TIMEOUT_S) == 0


def test_a_bootstrap_key_gets_the_servers_checks(start_cli: StartCli) -> None:
    code, _, err = _cpa(start_cli, "keys", "create", "--bootstrap", "--role", "agent")
    assert code == 2
    assert "agent_actions: an agent token must allow at least one action" in err
    code, _, err = _cpa(
        start_cli, "keys", "create", "--bootstrap", "--role", "agent", "--role", "viewer"
    )
    assert code == 2
    assert "AGENT stands alone" in err
