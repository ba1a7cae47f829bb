"""Callbacks in the distributed mode: a replica killed -9 while its delivery's answer is held
open leaves the delivery to the other replica once its claim ends; the receiver gets every
message of the job, duplicates counted, printed and bounded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg

from cpa.scheduler.v1 import job_pb2
from cpa_client import SchedulerClient
from tests.e2e.conftest import todo, todos_spec
from tests.fixtures.cluster import Cluster
from tests.fixtures.webhook import LOOPBACK_NETWORKS, WebhookReceiver, receiver_tls

SECRET = "a shared test secret for both replicas"
CLAIM_S = "4"
WAIT_S = 40.0
# A killed replica may have had its POST reach the receiver: at most one copy more per message
# it held when it died (here one).
MAX_DUPLICATES = 1


async def test_a_delivery_held_by_a_replica_killed_mid_post_is_sent_by_the_other(
    cluster: Cluster, tmp_path: Path
) -> None:
    tls = receiver_tls(tmp_path / "tls")
    secrets_file = tmp_path / "callback-secrets.json"
    secrets_file.write_text(json.dumps({"default": {"key_id": "k1", "secret": SECRET}}))
    cluster.settings.update(
        CPA_CALLBACK_SECRETS_FILE=str(secrets_file),
        CPA_CALLBACK_CA_FILE=str(tls.ca_file),
        CPA_CALLBACK_ALLOWED_NETWORKS=LOOPBACK_NETWORKS,
        CPA_CALLBACK_CLAIM_S=CLAIM_S,
        CPA_CALLBACK_TIMEOUT_S="3",
        CPA_CALLBACK_POLL_INTERVAL_S="0.1",
    )
    receiver = WebhookReceiver(tls=tls, secret=SECRET.encode(), hold_first=True)
    await receiver.start()
    try:
        replicas = {name: cluster.replica(name) for name in ("r1", "r2")}
        cluster.agent("agent-1", replicas["r1"], replicas["r2"])
        async with SchedulerClient(replicas["r2"].target) as client:
            spec = todos_spec(todo("a", "echo", params={"x": 1}), callback_url=receiver.url)
            job_id = (await client.schedule_job(spec)).job.job_id
            await asyncio.wait_for(receiver.held.wait(), WAIT_S)
            held_id = receiver.received[0].delivery_id
            with psycopg.connect(cluster.database_url, autocommit=True) as database:
                [(token,)] = database.execute(
                    "SELECT claim_token FROM callback_deliveries WHERE delivery_id = %s",
                    (held_id,),
                ).fetchall()
            holder = token.split("/", 1)[0]
            survivor = "r2" if holder == "r1" else "r1"
            replicas[holder].kill()  # SIGKILL, mid-POST: its answer never arrives
            receiver.release.set()

            def all_delivered(received: list) -> bool:  # type: ignore[type-arg]
                ok = {r.headers["cpa-event-type"] for r in received if r.status == 200}
                return held_id in {r.delivery_id for r in received if r.status == 200} and (
                    "done" in ok
                )

            await receiver.wait_for(all_delivered, WAIT_S)
            async with SchedulerClient(replicas[survivor].target) as other:
                job = await other.get_job(job_id)
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED
        assert all(r.verified for r in receiver.received)
        copies = receiver.acknowledged()
        duplicates = {i: len(c) - 1 for i, c in copies.items() if len(c) > 1}
        print(f"callback duplicates after kill -9 of {holder}: {duplicates or 'none'}")
        assert sum(duplicates.values()) <= MAX_DUPLICATES
        # Deduplicated by delivery id: each message of the job once, the held one included.
        events = sorted(c[0].headers["cpa-event-type"] for c in copies.values())
        assert events == ["done", "inform"], events
        assert held_id in copies
    finally:
        await receiver.stop()
