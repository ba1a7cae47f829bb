"""`cpa submit`, `cpa jobs ...` and `cpa watch` called in-process against one shared server."""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from cpa_cli.main import build_parser, main

from .conftest import SharedServer

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def cpa(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """Runs `cpa ARGS` in this process: exit code, stdout lines, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


@pytest.fixture
def run_label() -> str:
    """A label value of this test's own, to find its jobs among the shared server's."""
    return f"t{uuid.uuid4().hex[:12]}"


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_submit_watch_then_get_and_list(
    capsys: pytest.CaptureFixture[str],
    shared_server: SharedServer,
    server_address: str,
    run_label: str,
    tmp_path: Path,
) -> None:
    todos = _write(
        tmp_path / "todos.yaml",
        "- {id: fetch, action: wait, params: {seconds: 0.05}}\n"
        "- {id: report, action: echo, depends_on: [fetch], params: {pages: 3}}\n",
    )

    code, out, err = cpa(
        capsys, "submit", "--todos", todos, "--label", f"run={run_label}", "--watch"
    )

    assert (code, err) == (0, "")
    job_id = out[0]
    assert JOB_ID.match(job_id)
    assert out[1].split() == ["SEQ", "TIME", "TASK", "EVENT"]
    assert re.match(rf"^job {job_id} SUCCEEDED in \d+\.\d\ds \(2/2 tasks succeeded\)$", out[-1])
    assert any(
        re.search(rf"\sfetch\s+QUEUED -> RUNNING  attempt 1 on {shared_server.agent_id}$", line)
        for line in out
    )

    code, out, _ = cpa(capsys, "jobs", "get", job_id)
    assert code == 0
    assert out[:3] == [f"job       {job_id}", "state     SUCCEEDED", "source    todos"]
    assert f"labels    run={run_label}" in out
    assert out[-3].split() == [
        "TASK",
        "ACTION",
        "STATE",
        "ATTEMPTS",
        "AGENT",
        "AFTER",
        "OUTPUT",
        "/",
        "ERROR",
    ]
    assert out[-1].split() == [
        "report",
        "echo",
        "SUCCEEDED",
        "1",
        shared_server.agent_id,
        "fetch",
        '{"pages":',
        "3}",
    ]

    code, out, _ = cpa(capsys, "jobs", "get", job_id, "--json")
    document = json.loads("\n".join(out))
    assert (document["job_id"], document["state"]) == (job_id, "JOB_STATE_SUCCEEDED")
    assert document["tasks"][1]["todo"]["custom_action"] == "echo"

    code, out, _ = cpa(capsys, "jobs", "list", "--filter", f'labels.run = "{run_label}"')
    assert code == 0
    assert out[0].split() == ["JOB", "STATE", "SOURCE", "TASKS", "CREATED", "NOTES"]
    assert out[1].split()[:4] == [job_id, "SUCCEEDED", "todos", "2/2"]
    assert len(out) == 2


def test_list_limit_json_and_no_match(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    todos = _write(tmp_path / "todos.yaml", "- {id: only, action: noop}\n")
    ids = set()
    for _ in range(2):
        code, out, _ = cpa(capsys, "submit", "--todos", todos, "--label", f"run={run_label}")
        assert code == 0
        ids.add(out[0])
    run_filter = f'labels.run = "{run_label}"'

    code, out, _ = cpa(capsys, "jobs", "list", "--filter", run_filter, "--json")
    assert code == 0
    assert {job["job_id"] for job in json.loads("\n".join(out))["jobs"]} == ids

    code, out, _ = cpa(capsys, "jobs", "list", "--filter", run_filter, "--limit", "1")
    assert (code, len(out)) == (0, 2)  # header and one job
    assert out[1].split()[0] in ids

    code, out, _ = cpa(capsys, "jobs", "list", "--filter", 'labels.run = "nobody"')
    assert (code, out) == (0, ["no jobs match the filter"])


def test_cancel_ends_a_running_job(
    capsys: pytest.CaptureFixture[str], server_address: str, tmp_path: Path
) -> None:
    todos = _write(tmp_path / "slow.yaml", "- {id: slow, action: wait, params: {seconds: 30}}\n")
    code, out, _ = cpa(capsys, "submit", "--todos", todos)
    job_id = out[0]

    code, out, err = cpa(capsys, "jobs", "cancel", job_id, "--reason", "test")

    assert (code, err) == (0, "")
    cancelling = r"[A-Z_]+ \(cancel requested: running tasks are being stopped\)"
    assert re.match(rf"^job {job_id} (CANCELLED|{cancelling})$", out[0]), out
    # watch returns once the job ended: 1, because it did not succeed.
    code, out, _ = cpa(capsys, "watch", job_id)
    assert code == 1
    assert re.match(rf"^job {job_id} CANCELLED", out[-1]), out
    assert any(line.endswith("job   cancel requested: test") for line in out), out
    code, out, _ = cpa(capsys, "jobs", "get", job_id)
    assert "state     CANCELLED" in out
    assert "cancelled test" in out


def test_retry_re_drives_a_dead_lettered_job_and_watch_follows_the_new_run(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    todos = _write(
        tmp_path / "flaky.yaml",
        "- {id: flaky, action: fail, params: {code: PORTAL_DOWN, until_attempt: 1}}\n",
    )
    code, out, _ = cpa(capsys, "submit", "--todos", todos, "--label", f"run={run_label}", "--watch")
    assert code == 1
    job_id = out[0]
    assert any(
        re.search(r"\sflaky\s+RUNNING -> FAILED  PORTAL_DOWN: failed on purpose$", ln) for ln in out
    )
    assert re.match(rf"^job {job_id} FAILED in .*: PORTAL_DOWN: failed on purpose$", out[-1])
    code, out, _ = cpa(
        capsys, "jobs", "list", "--filter", f'dead_lettered = true AND labels.run = "{run_label}"'
    )
    assert out[1].split()[:2] == [job_id, "FAILED"]
    assert out[1].endswith("dead-lettered")

    code, out, err = cpa(capsys, "jobs", "retry", job_id)

    assert (code, err) == (0, "")
    assert re.match(rf"^job {job_id} [A-Z_]+ \(retry 1\)$", out[0]), out
    # The history holds the first run's terminal event; watch follows on to the second run's end.
    code, out, _ = cpa(capsys, "watch", job_id)
    assert code == 0, out
    assert any(re.search(r"\sjob\s+RUNNING -> FAILED", line) for line in out)
    assert any(re.search(r"\sflaky\s+QUEUED -> RUNNING  attempt 2 on ", line) for line in out)
    assert re.match(rf"^job {job_id} SUCCEEDED", out[-1])


def test_retry_with_a_filter_re_drives_the_matching_dead_lettered_jobs(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    flaky = _write(
        tmp_path / "flaky.yaml",
        "- {id: flaky, action: fail, params: {code: PORTAL_DOWN, until_attempt: 1}}\n",
    )
    fine = _write(tmp_path / "fine.yaml", "- {id: fine, action: noop}\n")
    dead = []
    for _ in range(2):
        code, out, _ = cpa(
            capsys, "submit", "--todos", flaky, "--label", f"run={run_label}", "--watch"
        )
        assert code == 1
        dead.append(out[0])
    newest_first = dead[::-1]
    code, out, _ = cpa(capsys, "submit", "--todos", fine, "--label", f"run={run_label}", "--watch")
    assert code == 0
    succeeded = out[0]
    run_filter = f'dead_lettered = true AND labels.run = "{run_label}"'
    retry = ("jobs", "retry", "--filter", run_filter)

    code, out, err = cpa(capsys, *retry, "--dry-run")

    assert (code, err) == (0, "")
    assert [line.split() for line in out] == [
        ["JOB", "RESULT"],
        *([job_id, "would", "be", "re-driven"] for job_id in newest_first),
        ["2", "jobs", "would", "be", "re-driven"],
    ]

    code, out, err = cpa(capsys, *retry, "--max-jobs", "1")

    assert (code, err) == (0, "")
    assert [line.split() for line in out[:2]] == [["JOB", "RESULT"], [newest_first[0], "re-driven"]]
    assert out[2] == "1 job re-driven; --max-jobs 1 reached, more may match: run again"

    code, out, _ = cpa(capsys, *retry, "--json")

    assert code == 0
    assert json.loads("\n".join(out)) == {"job_ids": [newest_first[1]]}
    code, out, _ = cpa(capsys, *retry)
    assert (code, out) == (0, ["no FAILED or CANCELLED job matches the filter"])
    for job_id in dead:
        code, out, _ = cpa(capsys, "watch", job_id)
        assert code == 0, out
    code, out, _ = cpa(capsys, "jobs", "get", succeeded, "--json")
    assert "retry_count" not in json.loads("\n".join(out))

    code, _, err = cpa(capsys, "jobs", "retry", "--filter", "state = SUCCEEDED")

    assert code == 2
    assert err.startswith(
        "cpa: INVALID_ARGUMENT: INVALID_FILTER: filter: only CANCELLED or FAILED jobs can be "
        "re-driven"
    )
    assert err.splitlines()[1] == "  field filter"


def test_watch_resumes_after_a_sequence_and_prints_json_lines(
    capsys: pytest.CaptureFixture[str], server_address: str, tmp_path: Path
) -> None:
    todos = _write(tmp_path / "one.yaml", "- {id: one, action: echo, params: {n: 1}}\n")
    code, out, _ = cpa(capsys, "submit", "--todos", todos, "--watch")
    job_id = out[0]
    sequences = [int(line.split()[0]) for line in out[2:-1]]

    code, out, _ = cpa(capsys, "watch", job_id, "--after-sequence", "2", "--json")

    assert code == 0
    events = [json.loads(line) for line in out]
    assert [int(event["sequence"]) for event in events] == sequences[2:]
    assert events[-1]["terminal"] is True
    assert events[-1]["job_state_changed"]["to_state"] == "JOB_STATE_SUCCEEDED"


def test_request_id_makes_submit_idempotent(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str
) -> None:
    args = ("submit", "--intent", "send_mail", "--param", "recipient=bob@example.com")
    code, out, err = cpa(capsys, *args, "--request-id", run_label, "--json")
    first = json.loads("\n".join(out))
    assert (code, err, first["created"]) == (0, "", True)
    assert first["job"]["intent"] == "send_mail"

    code, out, err = cpa(capsys, *args, "--request-id", run_label)

    assert (code, out) == (0, [first["job"]["job_id"]])
    assert err == f"cpa submit: request id '{run_label}' was used before: same job\n"
    cpa(capsys, "jobs", "cancel", first["job"]["job_id"])  # no agent sends mail here


ECHO = {"todos": {"todos": [{"id": "a", "action": "ACTION_TYPE_CUSTOM", "customAction": "echo"}]}}


def _requests(*lines: Mapping[str, object]) -> str:
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def test_batch_submits_one_job_per_line_in_order_and_again_returns_the_same(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    spec = {
        "todos": {"todos": [{"id": "a", "action": "ACTION_TYPE_CUSTOM", "customAction": "echo"}]},
        "labels": {"run": run_label},
    }
    batch = _write(
        tmp_path / "jobs.jsonl",
        _requests({"requestId": f"{run_label}-1", "spec": spec})
        + "\n"  # blank lines are skipped
        + _requests({"spec": spec}, {"request_id": f"{run_label}-3", "spec": spec}),
    )

    code, out, err = cpa(capsys, "submit", "--batch", batch)

    assert (code, err) == (0, "")
    assert len(out) == 3
    assert all(JOB_ID.match(job_id) for job_id in out)
    code, listed, _ = cpa(capsys, "jobs", "list", "--filter", f'labels.run = "{run_label}"')
    assert sorted(line.split()[0] for line in listed[1:]) == sorted(out)

    code, again, err = cpa(capsys, "submit", "--batch", batch)

    assert code == 0
    assert (again[0], again[2]) == (out[0], out[2])  # lines with a request id: the same jobs
    assert again[1] not in out
    assert err.splitlines() == [
        f"cpa submit: {batch}:1: request id used before: same job",
        f"cpa submit: {batch}:4: request id used before: same job",
    ]


def test_the_example_batch_runs(capsys: pytest.CaptureFixture[str], server_address: str) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "batch_requests.jsonl"

    code, job_ids, err = cpa(capsys, "submit", "--batch", str(example))

    assert (code, err, len(job_ids)) == (0, "", 3)
    for job_id in job_ids:
        code, out, _ = cpa(capsys, "watch", job_id)
        assert code == 0, out  # cpa watch exits 0 only for a job that SUCCEEDED


def test_a_refused_batch_names_the_file_line_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    good = {
        "todos": {"todos": [{"id": "a", "action": "ACTION_TYPE_CUSTOM", "customAction": "echo"}]},
        "labels": {"run": run_label},
    }
    cycle = {
        "todos": {
            "todos": [
                {
                    "id": "a",
                    "action": "ACTION_TYPE_CUSTOM",
                    "customAction": "echo",
                    "dependsOn": ["b"],
                },
                {
                    "id": "b",
                    "action": "ACTION_TYPE_CUSTOM",
                    "customAction": "echo",
                    "dependsOn": ["a"],
                },
            ]
        }
    }
    batch = _write(tmp_path / "jobs.jsonl", _requests({"spec": good}, {"spec": cycle}))

    code, out, err = cpa(capsys, "submit", "--batch", batch)

    assert (code, out) == (2, [])
    assert err.splitlines() == [
        "cpa: INVALID_ARGUMENT: GRAPH_CYCLE: dependency cycle: a -> b -> a",
        f"  field requests[1].spec.todos.todos[1].depends_on[0] ({batch}:2)",
    ]
    code, listed, _ = cpa(capsys, "jobs", "list", "--filter", f'labels.run = "{run_label}"')
    assert listed == ["no jobs match the filter"]


def test_a_batch_reusing_a_request_id_names_its_line(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    first = _write(tmp_path / "first.jsonl", _requests({"requestId": run_label, "spec": ECHO}))
    code, [job_id], _ = cpa(capsys, "submit", "--batch", first)
    other = {
        "todos": {"todos": [{"id": "b", "action": "ACTION_TYPE_CUSTOM", "customAction": "echo"}]}
    }
    second = _write(
        tmp_path / "second.jsonl",
        _requests({"spec": ECHO}, {"requestId": run_label, "spec": other}),
    )

    code, out, err = cpa(capsys, "submit", "--batch", second)

    assert (code, out) == (2, [])
    assert err.splitlines() == [
        f"cpa: ALREADY_EXISTS: REQUEST_ID_REUSED: request_id '{run_label}' was already used for "
        f"a different request (job {job_id})",
        f"  field requests[1].request_id ({second}:2)",
    ]


def test_a_batch_longer_than_one_call_says_what_was_created_when_a_later_call_fails(
    capsys: pytest.CaptureFixture[str], server_address: str, tmp_path: Path
) -> None:
    bad = {"todos": {"todos": [{"id": "a"}]}}
    batch = _write(tmp_path / "jobs.jsonl", _requests(*[{"spec": ECHO}] * 1000, {"spec": bad}))

    code, out, err = cpa(capsys, "submit", "--batch", batch)

    assert code == 2
    assert len(out) == 1000  # the first call's jobs, created
    assert err.splitlines()[0] == (
        "cpa submit: the jobs of the lines before line 1001 were created (their ids are "
        "above); none from that line on"
    )
    assert f"field requests[0].spec.todos.todos[0].action ({batch}:1001)" in err


def test_a_batch_line_that_is_no_request_is_refused_before_any_call(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    batch = _write(tmp_path / "jobs.jsonl", '{"spec": {"text": "hi"}}\n{"spec": 3}\n')

    code, out, err = cpa(capsys, "submit", "--batch", batch, "--server", "127.0.0.1:1")

    assert (code, out) == (2, [])
    assert err.startswith(f"cpa: {batch}:2: not a ScheduleJobRequest: ")


@pytest.mark.parametrize(
    "args",
    [("jobs", "get"), ("jobs", "cancel"), ("jobs", "retry"), ("watch",)],
    ids=["get", "cancel", "retry", "watch"],
)
def test_an_unknown_job_is_not_found(
    capsys: pytest.CaptureFixture[str], server_address: str, args: tuple[str, ...]
) -> None:
    code, out, err = cpa(capsys, *args, "no-such-job")

    assert (code, out) == (2, [])
    assert err == "cpa: NOT_FOUND: JOB_NOT_FOUND: job 'no-such-job' not found\n"


def test_field_violations_name_the_todo_file_line(
    capsys: pytest.CaptureFixture[str], server_address: str, tmp_path: Path
) -> None:
    todos = _write(
        tmp_path / "cycle.yaml",
        "- id: a\n  action: echo\n  depends_on: [b]\n- id: b\n  action: echo\n  depends_on: [a]\n",
    )

    code, out, err = cpa(capsys, "submit", "--todos", todos)

    assert (code, out) == (2, [])
    assert err.splitlines() == [
        "cpa: INVALID_ARGUMENT: GRAPH_CYCLE: dependency cycle: a -> b -> a",
        f"  field spec.todos.todos[1].depends_on[0] ({todos}:6)",
    ]


def test_a_bad_filter_is_reported_with_its_field(
    capsys: pytest.CaptureFixture[str], server_address: str
) -> None:
    code, _, err = cpa(capsys, "jobs", "list", "--filter", "state = BOGUS")

    assert code == 2
    assert err.startswith("cpa: INVALID_ARGUMENT: INVALID_FILTER: filter: unknown state 'BOGUS'")
    assert err.splitlines()[1] == "  field filter"


def test_an_unreachable_server_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"

    code, out, err = cpa(capsys, "jobs", "list", "--server", address)

    assert (code, out) == (2, [])
    first, second = err.splitlines()
    assert first.startswith(f"cpa: UNAVAILABLE: cannot reach the scheduler at {address} (")
    assert second == "  is `cpa serve` running there? Point --server or $CPA_SERVER at it."


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("submit",),
            "cpa: submit: give exactly one of TEXT, --intent NAME, --todos FILE or --batch FILE",
        ),
        (
            ("submit", "hello", "--intent", "send_mail"),
            "cpa: submit: give exactly one of TEXT, --intent NAME, --todos FILE or --batch FILE",
        ),
        (("submit", "hello", "--param", "a=b"), "cpa: submit: --param goes with --intent"),
        (
            ("submit", "--batch", "jobs.jsonl", "--label", "a=b", "--watch"),
            "cpa: submit: --batch takes everything from its file, not --label, --watch",
        ),
        (
            ("submit", "--intent", "x", "--param", "novalue"),
            "cpa: --param needs KEY=VALUE, got 'novalue'",
        ),
        (("jobs", "list", "--limit", "-1"), "cpa: jobs list: --limit must be >= 0"),
        (("jobs", "retry"), "cpa: jobs retry: give either JOB_ID or --filter"),
        (
            ("jobs", "retry", "some-job", "--filter", "state = FAILED"),
            "cpa: jobs retry: give either JOB_ID or --filter",
        ),
        (("jobs", "retry", "some-job", "--dry-run"), "cpa: jobs retry: --dry-run needs --filter"),
        (
            ("jobs", "retry", "some-job", "--max-jobs", "5"),
            "cpa: jobs retry: --max-jobs needs --filter",
        ),
        (
            ("jobs", "retry", "--filter", "", "--max-jobs", "0"),
            "cpa: jobs retry: --max-jobs must be >= 1",
        ),
        (
            ("serve", "--agent-slots", "2"),
            "cpa: serve: --agent-slots, --agent-id and --agent-label go with --with-agent",
        ),
    ],
)
def test_usage_errors_exit_2_before_any_call(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, out, err = cpa(
        capsys, *args, *(("--server", "127.0.0.1:1") if args[0] != "serve" else ())
    )

    assert (code, out, err) == (2, [], message + "\n")


@pytest.mark.parametrize(
    "command",
    [
        ("plan",),
        ("serve",),
        ("agent",),
        ("submit",),
        ("jobs",),
        ("jobs", "list"),
        ("jobs", "get"),
        ("jobs", "cancel"),
        ("jobs", "retry"),
        ("watch",),
        ("demo",),
    ],
)
def test_every_command_has_help(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, "--help"])

    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cpa {' '.join(command)}")


def test_get_is_full_and_list_basic_unless_view_says_otherwise(
    capsys: pytest.CaptureFixture[str], server_address: str, run_label: str, tmp_path: Path
) -> None:
    todos = _write(tmp_path / "todos.yaml", "- {id: only, action: noop, params: {pages: 3}}\n")
    code, out, _ = cpa(capsys, "submit", "--todos", todos, "--label", f"run={run_label}")
    assert code == 0
    job_id = out[0]
    run_filter = f'labels.run = "{run_label}"'

    def params_of(*args: str) -> list[object]:
        code, out, err = cpa(capsys, *args, "--json")
        assert code == 0, err
        document = json.loads("\n".join(out))
        jobs = document.get("jobs", [document])
        return [task["todo"].get("params") for job in jobs for task in job["tasks"]]

    assert params_of("jobs", "get", job_id) == [{"pages": 3}]
    assert params_of("jobs", "get", job_id, "--view", "basic") == [None]
    assert params_of("jobs", "list", "--filter", run_filter) == [None]
    assert params_of("jobs", "list", "--filter", run_filter, "--view", "full") == [{"pages": 3}]
