"""What authentication and tenant policies cost per call: the scheduler's CPU per call with both
off, with API-key authentication on, and with authentication and a realistic tenant policy on.

Each run starts `cpa serve` (embedded) and repeats one operation from C callers over real gRPC:
ScheduleJob of a one-task job whose params carry free text (an e-mail address, a phone number
and an IBAN among them; each job its own), then GetJob of it (two calls). With
authentication the calls carry a submitter's API key (`x-api-key`), made with the local admin
key; with the policy the tenant's file (written by this bench: action blocklist, app, URL,
callback and mail allowlists, every PII detector with per-field rules) is checked at submission.
Nothing is dispatched (no agent), so the figures are the calls' own. The issue's goal:
authentication + policy ≤ 10 % of the per-call server CPU. Figures of a busy or shared machine
are indicative: compare runs of one sitting, and mind the calibration line.

    python bench/bench_auth.py [--operations 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import grpc
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # bench.server_cpu and tests/fixtures

from bench.bench_throughput import Started, calibration_ms  # noqa: E402
from bench.server_cpu import Measured, Operation, Workload, measure  # noqa: E402
from cpa.admin.v1 import admin_service_pb2 as admin_pb  # noqa: E402
from cpa.admin.v1 import admin_service_pb2_grpc  # noqa: E402
from cpa.common.v1 import todo_pb2  # noqa: E402
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2_grpc  # noqa: E402
from cpa.scheduler.v1 import scheduler_service_pb2 as pb  # noqa: E402
from cpa_scheduler.api.convert import todos_from_proto  # noqa: E402
from cpa_scheduler.policy.enforce import check_request  # noqa: E402
from cpa_scheduler.policy.loading import parse_policy  # noqa: E402
from cpa_scheduler.policy.redaction import redact_job  # noqa: E402
from cpa_scheduler.security.api_keys import ApiKey, ApiKeyStore, new_secret  # noqa: E402
from cpa_scheduler.security.authenticator import Authenticator  # noqa: E402
from cpa_scheduler.security.principal import Role  # noqa: E402

# The embedded server's tenant: its policy file is default.yaml.
POLICY = """\
version: 1
description: What a tenant that files invoices may do.
actions:
  deny: [shell.exec, uia, run_script]
apps:
  allow: [excel, outlook, 'C:\\\\Program Files\\\\SAP\\\\FrontEnd\\\\SAPgui\\\\saplogon.exe']
urls:
  allow: [portal.acme.example, '*.intranet.acme.example', erp.acme.example]
callback_urls:
  allow: [hooks.acme.example]
mail:
  allow_domains: [acme.example, '*.acme.example']
pii:
  default_action: allow
  rules:
    - {field: params.iban, detectors: [iban], action: allow}
    - {field: params.note, action: redact}
    - {field: text, detectors: [card], action: refuse}
"""


def _spec(number: int) -> job_pb2.JobSpec:
    """Job `number`'s: its own invoice and note (texts a server may have seen before cost it
    less), the payee's IBAN every time."""
    params = struct_pb2.Struct()
    params.update(
        {
            "invoice": f"RE-2026-{number}",
            "customer": f"Globex Handels GmbH, Hauptstraße {number % 200}, 80331 München",
            "note": f"Rechnung {number}: bitte bis Freitag an buchhaltung@acme.example senden, "
            f"Rückfragen an +49 89 {1_000_000 + number}. Betrag {number},50 EUR, "
            "Zahlungsziel 30 Tage.",
            "iban": "DE89370400440532013000",
            "amount": number + 0.5,
            "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        }
    )
    todo = todo_pb2.ToDo(
        id="file", action=todo_pb2.ACTION_TYPE_CUSTOM, custom_action="file_invoice", params=params
    )
    return job_pb2.JobSpec(todos=job_pb2.TodoList(todos=[todo]))


async def _submitter_key(channel: grpc.aio.Channel, started: Started) -> str:
    """A submitter's key, made with the local admin key of the run's first start."""
    admin_key = (started.data_dirs[0] / "local-admin.key").read_text(encoding="ascii").strip()
    stub = admin_service_pb2_grpc.AdminServiceStub(channel)
    made = await stub.CreateApiKey(
        admin_pb.CreateApiKeyRequest(roles=[admin_pb.ROLE_SUBMITTER], description="bench"),
        metadata=(("x-api-key", admin_key),),
    )
    return made.secret


def _workload(*, authenticated: bool) -> Workload:
    async def prepare(channel: grpc.aio.Channel, started: Started) -> Operation:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(channel)
        metadata = (("x-api-key", await _submitter_key(channel, started)),) if authenticated else ()

        numbers = itertools.count()

        async def operation() -> None:
            spec = _spec(next(numbers))
            made = await stub.ScheduleJob(pb.ScheduleJobRequest(spec=spec), metadata=metadata)
            await stub.GetJob(pb.GetJobRequest(job_id=made.job.job_id), metadata=metadata)

        return operation

    return Workload(prepare=prepare, calls_per_operation=2)


class _OneKey:
    """An API key store of one key (the in-process measure reads no database)."""

    def __init__(self, key: ApiKey) -> None:
        self._key = key

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return self._key if key_id == self._key.key_id else None


def code_cost_us(operations: int) -> tuple[float, float]:
    """The CPU of the added code alone, in this process (steadier than the difference of two
    server runs on a shared machine): (an API-key check per call, the policy's work per
    operation: the submission check and the redaction of the two answers that show the job)."""
    key_id, secret, digest = new_secret()
    key = ApiKey(
        key_id=key_id,
        tenant="default",
        roles=frozenset({Role.SUBMITTER}),
        secret_sha256=digest,
        description="bench",
        created_by="bench",
        create_time=datetime.now(UTC),
    )
    authenticator = Authenticator(keys=cast(ApiKeyStore, _OneKey(key)), cache_ttl_s=5.0)
    metadata = (("x-api-key", secret), ("user-agent", "grpc-python"), (":authority", "bench"))

    async def authenticate_all() -> float:
        await authenticator.authenticate(metadata)
        started = time.process_time()
        for _ in range(operations * 2):
            await authenticator.authenticate(metadata)
        return time.process_time() - started

    auth_s = asyncio.run(authenticate_all())
    policy = parse_policy(POLICY, source="default.yaml")
    jobs = []
    for number in range(operations):
        job = job_pb2.Job()
        job.tasks.add().todo.CopyFrom(_spec(number).todos.todos[0])
        jobs.append((job, todos_from_proto([job.tasks[0].todo])))
    started = time.process_time()
    for job, todos in jobs:
        check_request(policy, todos)
        for _ in range(2):  # ScheduleJob's answer, GetJob's
            shown = job_pb2.Job()
            shown.CopyFrom(job)
            redact_job(policy, shown)
    policy_s = time.process_time() - started
    return auth_s / (operations * 2) * 1e6, policy_s / operations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operations", type=int, default=2000, help="ScheduleJob + GetJob pairs")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="each configuration this often")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, calibration {calibration_ms():.0f} ms "
        f"(lower is a faster machine), {args.operations} x (ScheduleJob + GetJob), "
        f"{args.concurrency} callers, embedded"
    )
    with tempfile.TemporaryDirectory(prefix="cpa-bench-policy-") as policies:
        (Path(policies) / "default.yaml").write_text(POLICY, encoding="utf-8")
        runs = {
            "auth off, policy off": ({"CPA_INSECURE_LOCAL": "true"}, False),
            "API key, policy off": ({"CPA_INSECURE_LOCAL": "false"}, True),
            "API key + policy": (
                {"CPA_INSECURE_LOCAL": "false", "CPA_POLICY_DIR": policies},
                True,
            ),
        }
        # The three runs in turn, `rounds` times: a shared machine's speed drifts, and each
        # configuration then meets the same drift; the medians are compared.
        results: dict[str, list[Measured]] = {label: [] for label in runs}
        for round_number in range(1, args.rounds + 1):
            for label, (env, authenticated) in runs.items():
                measured = measure(
                    env,
                    _workload(authenticated=authenticated),
                    operations=args.operations,
                    concurrency=args.concurrency,
                )
                results[label].append(measured)
                print(measured.line(f"{label} #{round_number}", distributed=False))
    median = {
        label: statistics.median(m.server_us_per_call for m in measured)
        for label, measured in results.items()
    }
    off = median["auth off, policy off"]
    print(f"medians of {args.rounds} rounds: auth off, policy off {off:.1f} µs CPU/call")
    for label in ("API key, policy off", "API key + policy"):
        on = median[label]
        share = (on - off) / off
        print(f"{label}: {on:.1f} µs CPU/call, {on - off:+.1f} ({share:+.1%} of the server's)")
    auth_us, policy_us = code_cost_us(args.operations)
    added = auth_us + policy_us / 2
    print(
        f"the added code alone, in process: API-key check {auth_us:.1f} µs/call, policy "
        f"{policy_us:.1f} µs/operation; {added:.1f} µs/call = {added / off:.1%} of the "
        "server's CPU per call with both off (median above)"
    )


if __name__ == "__main__":
    main()
