"""The TypeScript package's tests (clients/typescript/test) in the distributed mode: two `cpa
serve` replicas on PostgreSQL and Redis with authentication on, the clients calling one and the
agents connected to the other, so every event the TypeScript client watches crossed Redis.
(`make typescript` runs the same tests against the embedded store, started by the tests.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.cluster import Cluster

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NPM_TEST_TIMEOUT_S = 240


@pytest.mark.timeout(NPM_TEST_TIMEOUT_S + 60)
def test_the_typescript_package_against_two_replicas(cluster: Cluster) -> None:
    npm = shutil.which("npm")
    if npm is None or not (PACKAGE / "node_modules").is_dir():
        message = "needs npm and `npm ci` in clients/typescript (make typescript does both)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster.settings.update(CPA_INSECURE_LOCAL="false")
    credential = cluster.bootstrap_admin_key()
    clients, agents = cluster.replica("ts-clients"), cluster.replica("ts-agents")
    done = subprocess.run(
        [npm, "test"],
        cwd=PACKAGE,
        env={
            **os.environ,
            "CPA_TEST_SERVER": clients.target,
            "CPA_TEST_AGENT_SERVER": agents.target,
            "CPA_TEST_CREDENTIAL": credential,
        },
        capture_output=True,
        text=True,
        timeout=NPM_TEST_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"npm test failed:\n{done.stdout[-8000:]}\n{done.stderr[-4000:]}"
    assert "# fail 0" in done.stdout
