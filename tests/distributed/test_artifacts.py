"""Artifacts across replicas on PostgreSQL + Redis: an agent on replica r1 stores a file, a
task on an agent of replica r2 takes it (its agent downloads it from r2, which reads the chunks
r1 wrote), and a caller on r2 downloads it too. Replicas are processes; the agents run in this
process, with a test executor that uses the real ctx.artifacts."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from google.protobuf import json_format

from cpa.common.v1 import todo_pb2
from cpa.scheduler.v1 import job_pb2
from cpa_client import CpaError, SchedulerClient
from tests.e2e.conftest import Agents, collect_events, todo, todos_spec
from tests.fixtures.artifact_executors import artifact_registry, content
from tests.fixtures.cluster import Cluster

TIMEOUT_S = 60.0


async def test_an_artifact_stored_through_one_replica_is_read_through_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    first, second = cluster.replica("r1"), cluster.replica("r2")
    producers, consumers = Agents(target=first.target), Agents(target=second.target)
    try:
        await producers.start("producer", registry=artifact_registry(), labels={"role": "producer"})
        await consumers.start("consumer", registry=artifact_registry(), labels={"role": "consumer"})
        size = 3 * 1024 * 1024 + 5
        async with SchedulerClient(second.target, timeout_s=TIMEOUT_S) as client:
            response = await client.schedule_job(
                todos_spec(
                    todo(
                        "make",
                        "store_file",
                        params={"name": "invoice.pdf", "size": size, "seed": 11},
                        required_labels={"role": "producer"},
                    ),
                    todo(
                        "use",
                        "read_file",
                        depends_on=["make"],
                        inputs={
                            "doc": todo_pb2.OutputReference(
                                task_id="make", artifact_name="invoice.pdf"
                            )
                        },
                        required_labels={"role": "consumer"},
                    ),
                )
            )
            job_id = response.job.job_id
            await asyncio.wait_for(collect_events(client, job_id), TIMEOUT_S)
            job = await client.get_job(job_id)
            assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
            expected = hashlib.sha256(content(size, 11)).hexdigest()
            use = next(t for t in job.tasks if t.todo.id == "use")
            assert json_format.MessageToDict(use.outputs)["sha256"] == expected
            [stored] = await client.list_artifacts(job_id)
            target = tmp_path / "invoice.pdf"
            await client.download_artifact(job_id, stored.artifact_id, target)
            assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
        async with SchedulerClient(
            first.target, metadata={"x-cpa-tenant": "intruder"}, timeout_s=TIMEOUT_S
        ) as intruder:
            with pytest.raises(CpaError) as refusal:
                await intruder.list_artifacts(job_id)
            assert refusal.value.reason == "JOB_NOT_FOUND"
    finally:
        await producers.stop_all()
        await consumers.stop_all()
