"""Runs every example of docs/API_EXAMPLES.md, as a reader would, and checks what it prints.

The page's ```sh api-example blocks run in order, each as a bash script (`-euo pipefail`) in a
process of its own: Debian's curl and the venv's grpcurl, against a real `cpa serve`, a real Envoy
(`cpa gateway`) and an agent (in this process, over gRPC) whose actions include `store_file`. The
page's convention (written out at its top):
- `$GATEWAY` and `$GRPC` are the gateway's address (native gRPC passes through it);
- `# prints {JSON}`: some JSON document the command printed (its whole output, an SSE `data:`
  line, or one of grpcurl's objects) holds this fragment: objects at least these members, lists
  exactly as many items in order, other values equal; `$NAME` in it is a variable's value;
- `# sets NAME = a.b.0.c`: keeps that value of the first document that has it as `$NAME`.
- `$AUTH_GRPC` is a second `cpa serve` with authentication on and `$CPA_API_KEY` its local admin
  key (read from its data directory, as a user would), for AdminService; `$SCHEDULER` the first
  scheduler itself (ExecutorService's artifact calls).
Every example must exit 0 and print what it says. Every RPC of every service of deploy/api.binpb
must have a grpcurl example. Afterwards, the gateway's access log must show every REST binding of
the OpenAPI document and every SchedulerService RPC called natively.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

from cpa.scheduler.v1 import scheduler_service_pb2
from cpa_agent import Agent, AgentSettings
from tests.fixtures.artifact_executors import artifact_registry
from tools.apidoc import OPENAPI_FILE, OUT_DIR
from tools.codegen import DESCRIPTOR_SET

from .conftest import START_TIMEOUT_S, StartCli, start_server
from .rest_gateway import STOP_TIMEOUT_S, start_gateway

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "API_EXAMPLES.md"
BLOCK = re.compile(r"^```sh api-example\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PRINTS = re.compile(r"^# prints (.+)$", re.MULTILINE)
SETS = re.compile(r"^# sets ([A-Z][A-Z0-9_]*) = ([\w.]+)$", re.MULTILINE)
# One example: jobs are small and end in well under a second; a loaded machine gets more.
EXAMPLE_TIMEOUT_S = 30.0
SERVICE = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]
# A grpcurl call's method, wherever it stands in the command (after the address and flags).
GRPCURL_METHOD = re.compile(r"\b(cpa(?:\.\w+)+\.\w+Service/\w+)\b")


@dataclass(frozen=True)
class Example:
    line: int  # of its first line in the page, for messages
    script: str
    prints: tuple[str, ...]
    sets: tuple[tuple[str, str], ...]


@dataclass
class Run:
    variables: dict[str, str]
    workdir: Path


def parse_examples(text: str) -> list[Example]:
    examples = []
    for match in BLOCK.finditer(text):
        script = match.group(1)
        examples.append(
            Example(
                line=text.count("\n", 0, match.start()) + 2,
                script=script,
                prints=tuple(PRINTS.findall(script)),
                sets=tuple(SETS.findall(script)),
            )
        )
    return examples


def documents(output: str) -> list[Any]:
    """The JSON an example printed: SSE `data:` lines, else every JSON value one after another
    (one answer, or grpcurl's stream of objects)."""
    data = [line.removeprefix("data:") for line in output.splitlines() if line.startswith("data:")]
    if data:
        return [json.loads(line) for line in data]
    decoder = json.JSONDecoder()
    found, position = [], 0
    while position < len(output):
        if output[position].isspace():
            position += 1
            continue
        value, position = decoder.raw_decode(output, position)
        found.append(value)
    return found


def holds(actual: Any, expected: Any) -> bool:
    """Whether `actual` holds the fragment `expected` (see the module's docstring)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and holds(actual[key], value) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(holds(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return bool(type(actual) is type(expected) and actual == expected)


def lookup(document: Any, path: str) -> Any:
    value = document
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def substitute(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in variables, f"${name} is used before an example sets it"
        return variables[name]

    return re.sub(r"\$([A-Z][A-Z0-9_]*)", value, text)


async def run_example(example: Example, run: Run) -> None:
    where = f"{DOC_PATH.name}:{example.line}"
    assert example.prints, f"{where}: an example says what it prints (# prints ...)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPA_")}
    # grpcurl (and python3) of this venv first; curl, sha256sum and bash of the system.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(run.variables)
    process = await asyncio.create_subprocess_exec(
        *("bash", "-euo", "pipefail", "-c", example.script),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=run.workdir,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), EXAMPLE_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{where}: still running after {EXAMPLE_TIMEOUT_S}s:\n{example.script}")
    output = out.decode()
    report = f"{where}:\n{example.script}\n--- stdout:\n{output}\n--- stderr:\n{err.decode()}"
    assert process.returncode == 0, report
    try:
        printed = documents(output)
    except json.JSONDecodeError as error:
        pytest.fail(f"{report}\nnot JSON: {error}")
    for fragment in example.prints:
        expected = json.loads(substitute(fragment, run.variables))
        assert any(holds(d, expected) for d in printed), f"{report}\nholds no {expected}"
    for name, path in example.sets:
        values = [v for v in (lookup(d, path) for d in printed) if v not in (None, "")]
        assert values, f"{report}\nno value at {path}"
        assert isinstance(values[0], str), f"{report}\n{path} is not a string"
        run.variables[name] = values[0]


def every_rpc() -> set[str]:
    """`package.Service/Method` of every RPC the API publishes (its descriptor set)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    return {
        f"{file.package}.{service.name}/{method.name}"
        for file in files
        if file.package.startswith("cpa.")
        for service in file.service
        for method in service.method
    }


def test_every_rpc_of_every_service_has_a_grpcurl_example() -> None:
    """Checked without a server, so a new RPC fails here at once; the run below proves that
    each example works."""
    called = {
        method
        for example in parse_examples(DOC_PATH.read_text(encoding="utf-8"))
        for command in example.script.split("grpcurl ")[1:]
        for method in GRPCURL_METHOD.findall(command)
    }
    rpcs = every_rpc()
    assert {
        "cpa.admin.v1.AdminService/RevokeApiKey",
        "cpa.executor.v1.ExecutorService/Connect",
    } <= rpcs
    assert not rpcs - called, f"no grpcurl example in {DOC_PATH.name}: {sorted(rpcs - called)}"


def test_the_page_follows_its_convention() -> None:
    """The parser finds what a reader sees: each example's checks and captures."""
    examples = parse_examples(DOC_PATH.read_text(encoding="utf-8"))
    assert len(examples) >= 2 * len(SERVICE.methods)
    first = examples[0]
    assert first.sets == (("JOB_ID", "job.job_id"),)
    assert json.loads(first.prints[0])["created"] is True
    assert holds({"a": [{"b": 1, "c": 2}], "d": 3}, {"a": [{"b": 1}]})
    assert not holds({"a": [{"b": 1}, {"b": 2}]}, {"a": [{"b": 1}]})  # lists: every item
    assert not holds({"a": "1"}, {"a": 1})
    assert not holds({"a": True}, {"a": 1})
    assert documents('data: {"a": 1}\n\ndata: {"a": 2}\n\n') == [{"a": 1}, {"a": 2}]
    assert documents('{\n "a": 1\n}\n{\n "a": 2\n}\n') == [{"a": 1}, {"a": 2}]


@pytest.mark.timeout(300)
async def test_every_api_example_runs_as_documented(start_cli: StartCli, tmp_path: Path) -> None:
    examples = parse_examples(DOC_PATH.read_text(encoding="utf-8"))
    server, upstream = start_server(start_cli)
    gateway, address, _admin = start_gateway(start_cli, upstream)
    # Authentication on (the conftest turns it off): the server makes its local admin key.
    auth_env = {"CPA_INSECURE_LOCAL": "false"}
    auth_server, auth_address = start_server(start_cli, "--data-dir", "auth-data", env=auth_env)
    admin_key = (tmp_path / "auth-data" / "local-admin.key").read_text(encoding="ascii").strip()
    agent = Agent(
        settings=AgentSettings(server=upstream, agent_id="docs-agent"),
        registry=artifact_registry(),  # the built-in actions and store_file
    )
    agent_task = asyncio.create_task(agent.async_run())
    workdir = tmp_path / "examples"
    workdir.mkdir()
    variables = {"GATEWAY": address, "GRPC": address, "SCHEDULER": upstream}
    variables |= {"AUTH_GRPC": auth_address, "CPA_API_KEY": admin_key}
    run = Run(variables=variables, workdir=workdir)
    try:
        await asyncio.wait_for(agent.connected.wait(), START_TIMEOUT_S)
        for example in examples:
            await run_example(example, run)
    finally:
        agent_task.cancel()
        await asyncio.gather(agent_task, return_exceptions=True)
    assert (workdir / "report.pdf").stat().st_size == 3000  # the download example's file

    gateway.terminate()
    access_log = [json.loads(line) for line in gateway.rest_of_output(STOP_TIMEOUT_S)]
    assert gateway.exit_code(STOP_TIMEOUT_S) == 0, gateway.report()
    _every_operation_was_called(access_log)
    for process in (server, auth_server):
        process.terminate()
        assert process.exit_code(STOP_TIMEOUT_S) == 0, process.report()


def _every_operation_was_called(access_log: list[dict[str, Any]]) -> None:
    """Every REST binding of the OpenAPI document was called with curl, and every RPC natively
    (a native call logs its gRPC path as its path), each answered 200. The log's method is the
    one sent upstream (POST), so a REST call is told by its path and the RPC it became."""
    ok = [e for e in access_log if e.get("status") == 200 and "grpc_path" in e]
    native = {e["grpc_path"] for e in ok if e["path"] == e["grpc_path"]}
    assert native >= {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}, native
    rest = {(e["path"].split("?")[0], e["grpc_path"]) for e in ok if e["path"] != e["grpc_path"]}
    document = json.loads((OUT_DIR / OPENAPI_FILE).read_text(encoding="utf-8"))
    for template, verbs in document["paths"].items():
        pattern = re.compile(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")
        for verb, operation in verbs.items():
            called = [
                p for p, rpc in rest if rpc == operation["x-grpc-method"] and pattern.match(p)
            ]
            assert called, f"no example calls {verb.upper()} {template}"
