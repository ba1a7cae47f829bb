"""Encode/decode time and encoded size of realistic messages: protobuf (upb, what the project
uses) against betterproto2 dataclasses, for ADR 0001's open question.

The messages are built once with the project's _pb2 classes (ParseDict of the JSON a client
would send or receive) and serialized; each codec then decodes those bytes and encodes its own
message again, so both work on the same wire data:
  - a Job of 100 tasks, each SUCCEEDED with one attempt, outputs and timestamps (GetJob's answer);
  - a ScheduleJobRequest of 10 ToDos with params, inputs and a retry policy (a client's call);
  - an Assignment with a ToDo, inputs, trace context and credential refs (the agent's hot path).

betterproto2 is not a project dependency: generate its classes into a throwaway venv and pass
their directory (a package named cpa_bp2, so its `google` does not shadow protobuf's):

    python -m venv /tmp/bp2venv && /tmp/bp2venv/bin/pip install betterproto2 \\
        betterproto2_compiler grpcio-tools googleapis-common-protos
    PATH=/tmp/bp2venv/bin:$PATH /tmp/bp2venv/bin/python -m grpc_tools.protoc -Iproto \\
        -Ithird_party/googleapis -I<grpc_tools>/_proto \\
        --python_betterproto2_out=/tmp/bp2pkg/cpa_bp2 $(cd proto && find . -name '*.proto')
    PYTHONPATH=clients/python /tmp/bp2venv/bin/python bench/bench_codecs.py \\
        --betterproto2 /tmp/bp2pkg

Without --betterproto2 only protobuf is measured. Times are the best of --rounds rounds, each
the mean over enough calls to last about 0.2 s.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from google.protobuf import json_format
from google.protobuf.internal import api_implementation
from google.protobuf.message import Message

from cpa.executor.v1 import executor_service_pb2
from cpa.scheduler.v1 import job_pb2, scheduler_service_pb2

TS = "2026-12-03T10:00:00.123456Z"


def _todo(index: int) -> dict[str, Any]:
    todo: dict[str, Any] = {
        "id": f"step-{index:03d}",
        "action": "ACTION_TYPE_CUSTOM",
        "custom_action": "http_request",
        "description": f"fetch page {index} of the customer export",
        "params": {
            "url": f"https://api.example.com/v2/customers?page={index}",
            "method": "GET",
            "headers": {"accept": "application/json", "x-request-id": f"req-{index}"},
            "timeout_s": 30,
            "retry": True,
        },
        "timeout": "60s",
        "retry_policy": {"max_attempts": 3, "initial_backoff": "1s", "backoff_multiplier": 2.0},
        "required_capabilities": ["network"],
        "credential_refs": {"api": "vault://kv/customers-api"},
    }
    if index:
        todo["depends_on"] = [f"step-{index - 1:03d}"]
        todo["inputs"] = {"cursor": {"task_id": f"step-{index - 1:03d}", "output_key": "next"}}
    return todo


def _outputs(index: int) -> dict[str, Any]:
    return {
        "status": 200,
        "next": f"cursor-{index + 1}",
        "items": [
            {"id": f"c-{index}-{k}", "name": f"Customer {k}", "active": True} for k in range(5)
        ],
    }


def job_message(tasks: int = 100) -> job_pb2.Job:
    todos = [_todo(i) for i in range(tasks)]
    return json_format.ParseDict(
        {
            "job_id": "7f3c2a9e4b1d4e6f8a0b1c2d3e4f5a6b",
            "tenant": "acme",
            "request_id": "export-2026-12-03",
            "spec": {"todos": {"todos": todos}, "labels": {"team": "billing", "run": "nightly"}},
            "state": "JOB_STATE_SUCCEEDED",
            "tasks": [
                {
                    "todo": todo,
                    "state": "TASK_STATE_SUCCEEDED",
                    "attempt": 1,
                    "attempts": [
                        {
                            "number": 1,
                            "state": "ATTEMPT_STATE_SUCCEEDED",
                            "agent_id": "agent-7",
                            "start_time": TS,
                            "end_time": TS,
                        }
                    ],
                    "outputs": _outputs(i),
                    "queue_time": TS,
                    "start_time": TS,
                    "end_time": TS,
                }
                for i, todo in enumerate(todos)
            ],
            "last_event_sequence": 412,
            "create_time": TS,
            "update_time": TS,
            "start_time": TS,
            "end_time": TS,
        },
        job_pb2.Job(),
    )


def schedule_message() -> scheduler_service_pb2.ScheduleJobRequest:
    return json_format.ParseDict(
        {
            "request_id": "export-2026-12-03",
            "spec": {
                "todos": {"todos": [_todo(i) for i in range(10)]},
                "labels": {"team": "billing"},
            },
        },
        scheduler_service_pb2.ScheduleJobRequest(),
    )


def assignment_message() -> executor_service_pb2.Assignment:
    return json_format.ParseDict(
        {
            "job_id": "7f3c2a9e4b1d4e6f8a0b1c2d3e4f5a6b",
            "todo": _todo(7),
            "attempt": 1,
            "deadline": TS,
            "trace_context": {
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            },
            "inputs": {"cursor": "cursor-7"},
            "tenant": "acme",
            "credential_refs": {"api": "vault://kv/customers-api"},
        },
        executor_service_pb2.Assignment(),
    )


def per_call_us(call: Callable[[], object], rounds: int) -> float:
    """Best of `rounds` means, in microseconds per call."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.05:  # calibrate: calls per ~0.2 s
        call()
        calls += 1
    batch = max(1, calls * 4)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        best = min(best, (time.perf_counter() - start) / batch)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betterproto2", metavar="DIR", help="directory holding package cpa_bp2")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bp2: dict[str, Any] = {}
    if args.betterproto2:
        sys.path.insert(0, args.betterproto2)
        bp2 = {
            "Job": importlib.import_module("cpa_bp2.cpa.scheduler.v1").Job,
            "ScheduleJobRequest": importlib.import_module(
                "cpa_bp2.cpa.scheduler.v1"
            ).ScheduleJobRequest,
            "Assignment": importlib.import_module("cpa_bp2.cpa.executor.v1").Assignment,
        }
    versions = f"python {platform.python_version()}, protobuf {api_implementation.Type()}"
    if bp2:
        versions += f", betterproto2 {importlib.metadata.version('betterproto2')}"
    print(versions)
    print(f"{'message':<34}{'bytes':>8}{'codec':>14}{'decode us':>12}{'encode us':>12}{'bytes':>8}")
    messages: list[tuple[str, Message]] = [
        ("Job (100 tasks)", job_message()),
        ("ScheduleJobRequest (10 ToDos)", schedule_message()),
        ("Assignment", assignment_message()),
    ]
    for label, message in messages:
        data = message.SerializeToString()
        kind = type(message)
        decoded = kind.FromString(data)
        assert decoded == message
        rows = [
            (
                "protobuf",
                per_call_us(partial(kind.FromString, data), args.rounds),
                per_call_us(decoded.SerializeToString, args.rounds),
                len(decoded.SerializeToString()),
            )
        ]
        if bp2:
            cls = bp2[kind.DESCRIPTOR.name]
            ours = cls.parse(data)
            again = bytes(ours)
            # Same content, whatever the field order: protobuf reads betterproto2's bytes back.
            assert kind.FromString(again) == message, f"{label}: betterproto2 changed the message"
            rows.append(
                (
                    "betterproto2",
                    per_call_us(partial(cls.parse, data), args.rounds),
                    per_call_us(ours.__bytes__, args.rounds),
                    len(again),
                )
            )
        for codec, decode, encode, size in rows:
            print(f"{label:<34}{len(data):>8}{codec:>14}{decode:>12.1f}{encode:>12.1f}{size:>8}")


if __name__ == "__main__":
    main()
