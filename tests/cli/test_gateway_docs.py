"""The API reference the gateway serves itself: GET /openapi.json and GET /docs, answered by a real
Envoy (started by `cpa gateway` in front of `cpa serve`) from the files tools/apidoc generated,
next to the transcoded REST routes and native gRPC, which keep working."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from cpa_client import SchedulerClient
from tools.apidoc import OPENAPI_FILE, OUT_DIR, REFERENCE_FILE

from .conftest import StartCli, start_server
from .rest_gateway import STOP_TIMEOUT_S, gateway_refusal, start_gateway


def test_gateway_serves_the_reference_and_the_rest_routes_still_work(
    start_cli: StartCli,
) -> None:
    server, upstream = start_server(start_cli)
    gateway, address, _admin = start_gateway(start_cli, upstream)
    document_bytes = (OUT_DIR / OPENAPI_FILE).read_bytes()
    page_bytes = (OUT_DIR / REFERENCE_FILE).read_bytes()
    document = json.loads(document_bytes)

    with httpx.Client(base_url=f"http://{address}", timeout=10.0, trust_env=False) as http:
        served = http.get("/openapi.json")
        assert served.status_code == 200, served.text
        assert served.headers["content-type"] == "application/json"
        assert served.content == document_bytes  # whole: larger than Envoy's 4 KiB default
        assert served.json() == document

        page = http.get("/docs")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.content == page_bytes
        for path, verbs in document["paths"].items():
            for verb, operation in verbs.items():
                assert f'id="op-{operation["operationId"]}"' in page.text
                assert f"{verb.upper()} {path}" in page.text

        head = http.head("/docs")
        assert (head.status_code, head.content) == (200, b"")

        # Only GET and HEAD of those exact paths are the reference; anything else is still the
        # transcoder's, which refuses what no RPC binds.
        for refused in (http.post("/docs", json={}), http.get("/docs/more")):
            gateway_refusal(refused, 404, 5, "UNKNOWN_METHOD")

        # REST calls are transcoded as before.
        body = {
            "request_id": str(uuid.uuid4()),
            "spec": {
                "todos": {
                    "todos": [{"id": "a", "action": "ACTION_TYPE_CUSTOM", "custom_action": "echo"}]
                }
            },
        }
        created = http.post("/v1/jobs", json=body)
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["job_id"]
        got = http.get(f"/v1/jobs/{job_id}")
        assert got.status_code == 200, got.text
        assert got.json()["job"]["job_id"] == job_id

    async def native() -> None:  # and native gRPC on the same port
        async with SchedulerClient(address, timeout_s=10.0) as client:
            assert (await client.get_job(job_id)).job_id == job_id

    asyncio.run(native())
    for process in (gateway, server):
        process.terminate()
        assert process.exit_code(STOP_TIMEOUT_S) == 0, process.report()
