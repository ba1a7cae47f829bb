"""`cpa memory` as processes against `cpa serve`: put records, search them by a paraphrase,
filter by outcome, and a refused search exits non-zero naming the reason."""

from __future__ import annotations

import asyncio

from .conftest import SERVING, START_TIMEOUT_S, CliProcess, StartCli

WAIT_S = 30.0


async def _run(start_cli: StartCli, *arguments: str) -> tuple[int, list[str], CliProcess]:
    process = start_cli(*arguments)
    lines = await asyncio.to_thread(process.rest_of_output, WAIT_S)
    return await asyncio.to_thread(process.exit_code, WAIT_S), lines, process


async def test_put_then_search_by_a_paraphrase(start_cli: StartCli) -> None:
    server = start_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", "data")
    address = (await asyncio.to_thread(server.wait_for_line, SERVING, START_TIMEOUT_S))["address"]
    at = ("--server", address)

    code, lines, put = await _run(start_cli, "memory", "put", "archive the weekly reports", *at)
    assert code == 0, put.report()
    assert lines[0].startswith("remembered ")
    code, _, failed = await _run(
        start_cli, "memory", "put", "restart the build agent", "--failed", "HOST_DOWN: gone", *at
    )
    assert code == 0, failed.report()

    code, lines, search = await _run(
        start_cli, "memory", "search", "reports of the week to archive", "-k", "1", *at
    )
    assert code == 0, search.report()
    assert lines[0].split() == ["SCORE", "OUTCOME", "JOB", "TEXT", "FAILURE"]
    assert "SUCCEEDED" in lines[1]
    assert "archive the weekly reports" in lines[1]
    code, lines, only_failed = await _run(
        start_cli, "memory", "search", "build agent", "--outcome", "failed", *at
    )
    assert code == 0, only_failed.report()
    assert [line for line in lines[1:] if "HOST_DOWN: gone" in line] == lines[1:]
    assert len(lines) == 2

    code, _, refused = await _run(start_cli, "memory", "search", "x", "-k", "500", *at)
    assert code != 0, refused.report()
    assert "INVALID_FIELD" in refused.stderr(), refused.report()


async def test_delete_one_record_then_all(start_cli: StartCli) -> None:
    server = start_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", "data")
    address = (await asyncio.to_thread(server.wait_for_line, SERVING, START_TIMEOUT_S))["address"]
    at = ("--server", address)
    _, lines, _ = await _run(start_cli, "memory", "put", "archive the weekly reports", *at)
    memory_id = lines[0].removeprefix("remembered ")
    await _run(start_cli, "memory", "put", "restart the build agent", *at)

    code, lines, one = await _run(start_cli, "memory", "delete", memory_id, *at)
    assert code == 0, one.report()
    assert lines == ["deleted 1 memory"]
    code, lines, again = await _run(start_cli, "memory", "delete", memory_id, *at)
    assert (code, lines) == (0, ["deleted 0 memories"]), again.report()
    code, lines, everything = await _run(start_cli, "memory", "delete", "--all", *at)
    assert (code, lines) == (0, ["deleted 1 memory"]), everything.report()
    code, lines, search = await _run(start_cli, "memory", "search", "build agent", *at)
    assert (code, lines) == (0, ["no memories"]), search.report()

    code, _, both = await _run(start_cli, "memory", "delete", memory_id, "--all", *at)
    assert code != 0, both.report()
    assert "not allowed with" in both.stderr(), both.report()
