"""TLS on the scheduler's listener, over real sockets: clients and agents that verify the server,
mutual TLS, and certificate rotation without a restart (docs/SECURITY.md).

Certificates come from tests/fixtures/tls.py (a CA of the test's own, cryptography).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cpa.executor.v1 import executor_service_pb2, executor_service_pb2_grpc
from cpa.scheduler.v1 import job_pb2
from cpa_agent import Agent, AgentSettings, builtin_registry
from cpa_client import ClientTls, CpaError, SchedulerClient, TlsFileError, open_channel
from cpa_client.channels import tls_failure
from cpa_scheduler.server import SchedulerServer
from cpa_scheduler.settings import Settings
from cpa_scheduler.tls import ServerTls, TlsConfigError
from tests.fixtures.tls import Pki

from .conftest import EVENT_TIMEOUT_S, finished, todo, todos_spec

CALL_TIMEOUT_S = 5.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


def tls_settings(tmp_path: Path, pki: Pki, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        **overrides,
    )


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[SchedulerServer, str]]:
    server = SchedulerServer(settings)
    port = await server.start("127.0.0.1:0")
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace_s=1.0)


async def health(channel: grpc.aio.Channel) -> str:
    """ "SERVING", or the failed call's code and details."""
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S
        )
    except grpc.aio.AioRpcError as error:
        return f"{error.code().name}: {error.details()}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def health_of_new_channel(target: str, tls: ClientTls | None) -> str:
    # A subchannel of its own: a new connection, so a new TLS handshake.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with open_channel(target, tls=tls, options=options) as channel:
        return await health(channel)


async def until_serving(target: str, tls: ClientTls) -> None:
    """Until a new connection with `tls` gets SERVING (a file change is noticed by a check)."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while (status := await health_of_new_channel(target, tls)) != "SERVING":
        assert time.monotonic() < deadline, f"still {status}"
        await asyncio.sleep(0.05)


def noop_spec() -> job_pb2.JobSpec:
    return todos_spec(todo("t1", "noop"))


@contextlib.asynccontextmanager
async def running_agent(**settings: Any) -> AsyncIterator[Agent]:
    agent = Agent(settings=AgentSettings(**settings), registry=builtin_registry())
    task = asyncio.create_task(agent.async_run())
    try:
        yield agent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_agent_and_a_client_that_trust_the_ca_run_a_job_over_tls(
    tmp_path: Path, pki: Pki
) -> None:
    async with serving(tls_settings(tmp_path, pki)) as (server, target):
        assert server.tls is not None
        assert not server.tls.mutual
        async with running_agent(
            server=target, agent_id="tls-agent", tls_ca_file=pki.ca_file
        ) as agent:
            await asyncio.wait_for(agent.connected.wait(), EVENT_TIMEOUT_S)
            async with SchedulerClient(target, tls=pki.client_tls()) as client:
                job = (await client.schedule_job(noop_spec())).job
                assert (await finished(client, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


async def test_clients_that_do_not_verify_against_the_ca_are_refused_with_a_certificate_message(
    tmp_path: Path, pki: Pki
) -> None:
    stranger = Pki.create(tmp_path / "stranger", name="stranger")
    async with serving(tls_settings(tmp_path, pki)) as (_, target):
        # The system's roots, or another CA: the handshake fails on the server's certificate.
        for tls in (ClientTls(), stranger.client_tls()):
            async with SchedulerClient(target, tls=tls, timeout_s=CALL_TIMEOUT_S) as client:
                with pytest.raises(CpaError) as refused:
                    await client.get_job("any")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message
            assert tls_failure(refused.value.message).startswith(
                "the server's certificate is not trusted"
            )
        # Plaintext to a TLS listener gets no answer either.
        assert (await health_of_new_channel(target, None)).startswith("UNAVAILABLE")
        assert await health_of_new_channel(target, pki.client_tls()) == "SERVING"


async def test_a_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones(
    tmp_path: Path, pki: Pki
) -> None:
    successor = Pki.create(tmp_path / "successor", name="successor")
    # No file check during the test: only reload_tls() (what SIGHUP calls) changes anything.
    settings = tls_settings(tmp_path, pki, tls_reload_check_s=3600)
    async with (
        serving(settings) as (server, target),
        open_channel(target, tls=pki.client_tls()) as before,
    ):
        assert await health(before) == "SERVING"
        successor.issue_server(pki.cert_file, pki.key_file)  # the old CA no longer signs it
        assert await health_of_new_channel(target, successor.client_tls()) != "SERVING"
        assert server.reload_tls() is True
        assert await health_of_new_channel(target, successor.client_tls()) == "SERVING"
        old_trust = await health_of_new_channel(target, pki.client_tls())
        assert old_trust.startswith("UNAVAILABLE")
        assert "CERTIFICATE_VERIFY_FAILED" in old_trust
        # The connection opened before the reload was not dropped: it still answers.
        assert await health(before) == "SERVING"
        assert before.get_state() == grpc.ChannelConnectivity.READY


async def test_changed_files_are_picked_up_without_a_signal(tmp_path: Path, pki: Pki) -> None:
    successor = Pki.create(tmp_path / "successor", name="successor")
    async with serving(tls_settings(tmp_path, pki, tls_reload_check_s=0.1)) as (server, target):
        assert await health_of_new_channel(target, pki.client_tls()) == "SERVING"
        successor.issue_server(pki.cert_file, pki.key_file)
        await until_serving(target, successor.client_tls())
        assert server.tls is not None
        assert server.tls.reloads == 1


async def test_a_half_rotated_pair_keeps_the_current_certificate(tmp_path: Path, pki: Pki) -> None:
    successor = Pki.create(tmp_path / "successor", name="successor")
    async with serving(tls_settings(tmp_path, pki, tls_reload_check_s=3600)) as (server, target):
        # A new certificate whose key has not been written yet.
        pki.cert_file.write_bytes(successor.cert_file.read_bytes())
        assert server.reload_tls() is False
        assert await health_of_new_channel(target, pki.client_tls()) == "SERVING"


async def test_mutual_tls_refuses_an_agent_without_a_client_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    stranger = Pki.create(tmp_path / "stranger", name="stranger")
    settings = tls_settings(tmp_path, pki, tls_client_ca_file=pki.ca_file)
    async with serving(settings) as (server, target):
        assert server.tls is not None
        assert server.tls.mutual
        # An agent's stream without a client certificate, or with one another CA signed.
        foreign = ClientTls(
            ca_file=pki.ca_file,
            cert_file=stranger.client_cert_file,
            key_file=stranger.client_key_file,
        )
        for tls in (pki.client_tls(), foreign):
            async with open_channel(target, tls=tls) as channel:
                hello = executor_service_pb2.Hello(agent_id="no-cert")
                call = executor_service_pb2_grpc.ExecutorServiceStub(channel).Connect(
                    iter([executor_service_pb2.ConnectRequest(hello=hello)]),
                    timeout=CALL_TIMEOUT_S,
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call.read()
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert server.sessions.get("default", "no-cert") is None
        # With the CA's client certificate the agent connects and works.
        async with running_agent(
            server=target,
            agent_id="mtls-agent",
            tls_ca_file=pki.ca_file,
            tls_cert_file=pki.client_cert_file,
            tls_key_file=pki.client_key_file,
        ) as agent:
            await asyncio.wait_for(agent.connected.wait(), EVENT_TIMEOUT_S)
            tls = pki.client_tls(with_client_cert=True)
            async with SchedulerClient(target, tls=tls) as client:
                job = (await client.schedule_job(noop_spec())).job
                assert (await finished(client, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert_file": "cert"}, "CPA_TLS_CERT_FILE and CPA_TLS_KEY_FILE go together"),
        ({"tls_client_ca_file": "ca"}, "CPA_TLS_CLIENT_CA_FILE needs CPA_TLS_CERT_FILE"),
        (
            {"tls_cert_file": "missing.pem", "tls_key_file": "server-key"},
            "cannot read missing.pem",
        ),
        ({"tls_cert_file": "server-key", "tls_key_file": "server-key"}, "holds no PEM certificate"),
        (
            {"tls_cert_file": "server", "tls_key_file": "client-key"},
            "is not the key of the certificate",
        ),
    ],
)
def test_unusable_tls_settings_stop_the_start_naming_the_setting(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(pki.directory)
    files = {
        "cert": pki.cert_file.name,
        "server": pki.cert_file.name,
        "server-key": pki.key_file.name,
        "client-key": pki.client_key_file.name,
        "ca": pki.ca_file.name,
    }
    values: dict[str, Any] = {key: files.get(value, value) for key, value in settings.items()}
    with pytest.raises(TlsConfigError, match=message):
        ServerTls.from_settings(Settings(**values))


def test_a_client_tls_file_that_cannot_be_used_is_named(pki: Pki) -> None:
    with pytest.raises(TlsFileError, match=r"cannot read the CA file .*nowhere\.pem"):
        ClientTls(ca_file=pki.directory / "nowhere.pem").credentials()
    pki.client_key_file.write_text("not a key")
    with pytest.raises(TlsFileError, match=r"client key file .* holds no PEM data"):
        pki.client_tls(with_client_cert=True).credentials()
    with pytest.raises(TlsFileError, match="needs both"):
        ClientTls(cert_file=pki.client_cert_file)
