"""`cpa demo`: the forward_invoice job end to end, portal → PDF → mail, across two agent processes.

This process runs the embedded scheduler (temporary SQLite store, a free port on 127.0.0.1), the
demo supplier portal (HTTP) and the loopback Microsoft Graph with its token endpoint (HTTPS, a
certificate made for the run). Two `cpa agent` processes connect to the scheduler: a browser
agent (Playwright + Chromium; the portal password reaches it as its own secret, never through
the scheduler) and a mail agent (MSAL client credentials against the loopback Graph). The demo
submits the forward_invoice intent, shows progress live, then prints the mail Graph received,
checks its attachment against the PDF the portal serves (sha256) and saves the screenshots of
every browser step. docs/DEMO.md describes the topology and how to aim it at a real portal.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from cpa_client import SchedulerClient
from cpa_scheduler.settings import Settings

from ..common import CliError, emit
from ..embedded import LocalStack
from ..live import follow
from ..output import render_job, render_outcome
from .parts import DEMO_INTENT, AgentProcess
from .portal import DemoPortal

BROWSER_AGENT = "demo-browser"
MAIL_AGENT = "demo-mail"
# The credential reference the intent's login step names; the browser agent resolves the bare
# name from its environment as CPA_SECRET_SUPPLIER_PORTAL (docs/EXECUTOR_GUIDE.md, "Secrets").
PORTAL_CREDENTIAL_REF = "supplier_portal"
PORTAL_SECRET_ENV = "CPA_SECRET_SUPPLIER_PORTAL"
# The portal's password, when the user wants to choose it (else a fresh random one per run).
PORTAL_PASSWORD_ENV = "CPA_DEMO_PORTAL_PASSWORD"
DEFAULT_RECIPIENT = "accounting@example.com"
_AGENT_CONNECT_S = 60.0


@dataclass(frozen=True)
class DemoOptions:
    month: str
    recipient: str
    timeout_s: float
    keep_data: bool
    output_dir: Path | None


def previous_month(today: date | None = None) -> str:
    """The month whose invoice a user forwards now: last month's (`2026-11` in December)."""
    today = today or date.today()
    year, month = (today.year, today.month - 1) if today.month > 1 else (today.year - 1, 12)
    return f"{year}-{month:02d}"


def run_forward_invoice(options: DemoOptions) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="cpa-demo-"))
    try:
        return asyncio.run(_demo(data_dir, options))
    finally:
        if options.keep_data:
            emit(f"data kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _demo(data_dir: Path, options: DemoOptions) -> int:
    graph_module: Any = importlib.import_module("cpa_cli.demo.graph_server")
    logs = data_dir / "logs"
    logs.mkdir()
    stack = LocalStack(
        Settings(
            # The demo's own throwaway server on loopback: authentication off (docs/SECURITY.md).
            data_dir=data_dir,
            listen_address="127.0.0.1:0",
            insecure_local=True,
        )
    )
    portal = DemoPortal(password=os.environ.get(PORTAL_PASSWORD_ENV) or None)
    graph = graph_module.LoopbackGraph(data_dir / "tls")
    agents: list[AgentProcess] = []
    try:
        address = await stack.start()
        emit(f"scheduler  serving on {address} (store {data_dir / 'cpa.sqlite3'})")
        await portal.start()
        emit(f"portal     {portal.base_url}/login (user {portal.user})")
        await graph.start()
        emit(f"graph      {graph.base_url} (tenant {graph.tenant_id}, HTTPS, demo CA)")
        agents.append(
            await AgentProcess.start(
                agent_id=BROWSER_AGENT,
                server=address,
                executors="browser",
                env={PORTAL_SECRET_ENV: portal.password},
                log_dir=logs,
                timeout_s=_AGENT_CONNECT_S,
            )
        )
        emit(f"agent      {BROWSER_AGENT} connected (process {agents[-1].process.pid}: browser)")
        agents.append(
            await AgentProcess.start(
                agent_id=MAIL_AGENT,
                server=address,
                executors="mail",
                env=graph.agent_environment(secret_file=data_dir / "graph-client-secret"),
                log_dir=logs,
                timeout_s=_AGENT_CONNECT_S,
            )
        )
        emit(f"agent      {MAIL_AGENT} connected (process {agents[-1].process.pid}: mail)")
        async with SchedulerClient(address) as client:
            job = await _submit(client, portal, options)
            emit(f"job        {job.job_id} ({DEMO_INTENT}, {len(job.tasks)} tasks) submitted")
            emit()
            try:
                job = await asyncio.wait_for(follow(client, job), options.timeout_s)
            except TimeoutError:
                job = await client.get_job(job.job_id)
                emit(f"the job did not end within {options.timeout_s:g}s")
            emit()
            for line in render_job(job):
                emit(line)
            emit()
            emit(render_outcome(job))
            if job.state != job_pb2.JOB_STATE_SUCCEEDED:
                emit(f"agent logs in {logs} (run with --keep-data to keep them)")
                return 1
            matches = await _print_mail(graph, portal, options.month)
            await _save_screenshots(address, job, options.output_dir)
            return 0 if matches else 1
    except RuntimeError as error:
        raise CliError(f"demo: {error}") from None
    finally:
        for agent in reversed(agents):
            await agent.stop()
        await graph.stop()
        await portal.stop()
        await stack.stop(grace_s=1.0)


async def _submit(client: SchedulerClient, portal: DemoPortal, options: DemoOptions) -> job_pb2.Job:
    spec = forward_invoice_spec(portal, month=options.month, recipient=options.recipient)
    return (await client.schedule_job(spec)).job


def forward_invoice_spec(portal: DemoPortal, *, month: str, recipient: str) -> job_pb2.JobSpec:
    """The forward_invoice job the demo submits (tests submit the same one): the portal's URL
    and user as parameters, the password as the credential reference the browser agent holds."""
    parameters = struct_pb2.Struct()
    parameters.update(
        {"portal_url": portal.base_url, "user": portal.user, "month": month, "recipient": recipient}
    )
    spec = job_pb2.JobSpec(
        intent=job_pb2.IntentInvocation(name=DEMO_INTENT, parameters=parameters),
        labels={"example": DEMO_INTENT},
    )
    spec.context.update({"portal_credential": PORTAL_CREDENTIAL_REF})
    return spec


async def _print_mail(graph: Any, portal: DemoPortal, month: str) -> bool:
    """Prints the mail the loopback Graph received; True when its PDF is the portal's."""
    delivered = await graph.wait_for_deliveries(1, timeout_s=10.0)
    mail = delivered[-1]
    expected = portal.pdf_sha256(month)
    emit()
    emit(f"mail       delivered to the loopback Graph ({len(delivered)} sendMail)")
    emit(f"  from       {mail.mailbox}")
    emit(f"  to         {', '.join(mail.to)}")
    emit(f"  subject    {mail.subject}")
    matches = False
    for attachment in mail.attachments:
        same = attachment.sha256 == expected
        matches = matches or same
        emit(f"  attachment {attachment.name} ({attachment.content_type}, {attachment.size} bytes)")
        verdict = "= the portal's PDF" if same else f"!= the portal's PDF ({expected})"
        emit(f"  sha256     {attachment.sha256} {verdict}")
    if not mail.attachments:
        emit("  attachment none")
    return matches


async def _save_screenshots(address: str, job: job_pb2.Job, output_dir: Path | None) -> None:
    """Downloads the job's image artifacts (a screenshot per browser step) into a directory
    that outlives the demo, and says where it is."""
    target = output_dir or Path(tempfile.gettempdir()) / f"cpa-demo-{job.job_id[:12]}"
    target.mkdir(parents=True, exist_ok=True)
    # Artifacts are the artifacts helper's RPCs; reached through the generated stub by name.
    list_request: Any = getattr(scheduler_service_pb2, "ListArtifactsRequest")  # noqa: B009
    download_request: Any = getattr(scheduler_service_pb2, "DownloadArtifactRequest")  # noqa: B009
    saved: list[Path] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        listed = await stub.ListArtifacts(list_request(job_id=job.job_id))
        for artifact in listed.artifacts:
            if not artifact.media_type.startswith("image/"):
                continue
            path = target / f"{artifact.task_id}-{artifact.attempt}-{artifact.name}"
            with path.open("wb") as file:
                async for part in stub.DownloadArtifact(
                    download_request(job_id=job.job_id, artifact_id=artifact.artifact_id)
                ):
                    if part.WhichOneof("kind") == "chunk":
                        file.write(part.chunk)
            saved.append(path)
    emit(f"screens    {len(saved)} screenshots of the browser steps in {target}")
    for path in saved:
        emit(f"  {path.name}")
