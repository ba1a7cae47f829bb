"""AIP-160 list filters: every field and operator, combinations, canonical text, every error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cpa_scheduler.api.list_filter import (
    MAX_FILTER_LENGTH,
    format_agent_filter,
    format_job_filter,
    parse_agent_filter,
    parse_job_filter,
)
from cpa_scheduler.domain import InvalidArgument, JobFilter, JobState, Reason
from cpa_scheduler.domain.agent_query import AgentFilter, AgentState

JOB_FIELDS = "(fields: state, intent, labels.<key>, create_time, dead_lettered)"
AGENT_FIELDS = "(fields: state, actions, capabilities, labels.<key>)"
JOB_STATES = "(states: PENDING, RUNNING, WAITING_APPROVAL, SUCCEEDED, FAILED, CANCELLED)"
RFC3339_HINT = '(expected RFC 3339, e.g. "2026-01-01T00:00:00Z")'
NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)


def _job_error(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_job_filter(text)
    assert caught.value.reason is Reason.INVALID_FILTER
    assert caught.value.field == "filter"
    return caught.value.message


def _agent_error(text: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        parse_agent_filter(text)
    assert caught.value.reason is Reason.INVALID_FILTER
    assert caught.value.field == "filter"
    return caught.value.message


# -- jobs: fields ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n "])
def test_empty_filter_matches_everything(text: str) -> None:
    assert parse_job_filter(text) == JobFilter()
    assert parse_agent_filter(text) == AgentFilter()


@pytest.mark.parametrize(
    "text",
    [
        "state = FAILED",
        "state=FAILED",
        "state = failed",
        "state = JOB_STATE_FAILED",
        "state = job_state_Failed",
        'state = "FAILED"',
        "(state = FAILED)",
    ],
)
def test_state_by_name_prefix_case_or_quotes(text: str) -> None:
    assert parse_job_filter(text) == JobFilter(states=frozenset({JobState.FAILED}))


def test_state_alternatives_in_parentheses() -> None:
    parsed = parse_job_filter("(state = FAILED OR state = CANCELLED or state = FAILED)")
    assert parsed == JobFilter(states=frozenset({JobState.FAILED, JobState.CANCELLED}))


def test_intent_is_a_quoted_string_with_escapes() -> None:
    assert parse_job_filter('intent = "send_mail"') == JobFilter(intent="send_mail")
    assert parse_job_filter(r'intent = "a \"b\" \\ c"') == JobFilter(intent='a "b" \\ c')
    assert parse_job_filter('intent = ""') == JobFilter(intent="")
    # Operators and keywords inside a string are just text.
    assert parse_job_filter('intent = "x AND y = (z)"') == JobFilter(intent="x AND y = (z)")


def test_labels_by_key() -> None:
    parsed = parse_job_filter('labels.team = "ops" AND labels.cost-center.v2_x = "4711"')
    assert parsed == JobFilter(labels={"team": "ops", "cost-center.v2_x": "4711"})


@pytest.mark.parametrize(
    ("text", "after", "before"),
    [
        ('create_time > "2026-01-01T00:00:00Z"', NEW_YEAR, None),
        # Bounds are exclusive: >= and <= move one microsecond out.
        ('create_time >= "2026-01-01T00:00:00Z"', NEW_YEAR - US, None),
        ('create_time < "2026-01-01T00:00:00Z"', None, NEW_YEAR),
        ('create_time <= "2026-01-01T00:00:00Z"', None, NEW_YEAR + US),
        # Offsets are converted to UTC, lower-case t and z are RFC 3339 too.
        ('create_time > "2026-01-01T01:30:00+01:30"', NEW_YEAR, None),
        ('create_time > "2025-12-31t19:00:00-05:00"', NEW_YEAR, None),
        ('create_time > "2026-01-01t00:00:00z"', NEW_YEAR, None),
        ('create_time > "2026-01-01T00:00:00.25Z"', NEW_YEAR + 250_000 * US, None),
        ('create_time > "2026-01-01T00:00:00.000001000Z"', NEW_YEAR + US, None),
    ],
)
def test_create_time_bounds(text: str, after: datetime | None, before: datetime | None) -> None:
    parsed = parse_job_filter(text)
    assert parsed == JobFilter(created_after=after, created_before=before)
    for bound in (parsed.created_after, parsed.created_before):
        assert bound is None or bound.tzinfo is UTC


@pytest.mark.parametrize(
    ("operator", "after", "before"),
    [
        # t = 00:00:00.0000005: no stored time (whole microseconds) equals it.
        (">", NEW_YEAR, None),  # stored > t  <=> stored >= .000001 <=> stored > .000000
        (">=", NEW_YEAR, None),  # stored >= t <=> stored >= .000001 <=> stored > .000000
        ("<", None, NEW_YEAR + US),  # stored < t  <=> stored <= .000000 <=> stored < .000001
        ("<=", None, NEW_YEAR + US),
    ],
)
def test_sub_microsecond_bounds_keep_their_meaning(
    operator: str, after: datetime | None, before: datetime | None
) -> None:
    parsed = parse_job_filter(f'create_time {operator} "2026-01-01T00:00:00.0000005Z"')
    assert (parsed.created_after, parsed.created_before) == (after, before)


def test_bounds_at_the_end_of_time_exclude_nothing() -> None:
    assert parse_job_filter('create_time >= "0001-01-01T00:00:00Z"') == JobFilter()
    assert parse_job_filter('create_time <= "9999-12-31T23:59:59.999999Z"') == JobFilter()


def test_a_time_range_takes_one_bound_of_each_direction() -> None:
    parsed = parse_job_filter(
        'create_time >= "2026-01-01T00:00:00Z" AND create_time < "2026-02-01T00:00:00Z"'
    )
    assert parsed.created_after == NEW_YEAR - US
    assert parsed.created_before == datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dead_lettered = true", True),
        ("dead_lettered = FALSE", False),
        ('dead_lettered = "True"', True),
    ],
)
def test_dead_lettered(text: str, expected: bool) -> None:
    assert parse_job_filter(text) == JobFilter(dead_lettered=expected)


def test_every_field_together_joined_by_and_in_either_case() -> None:
    text = (
        '(state = FAILED OR state = CANCELLED) AND intent = "send_mail" and labels.team = "ops"'
        ' AND create_time > "2026-01-01T00:00:00Z" AND create_time <= "2026-02-01T00:00:00Z"'
        " AND dead_lettered = true"
    )
    assert parse_job_filter(text) == JobFilter(
        states=frozenset({JobState.FAILED, JobState.CANCELLED}),
        intent="send_mail",
        labels={"team": "ops"},
        created_after=NEW_YEAR,
        created_before=datetime(2026, 2, 1, tzinfo=UTC) + US,
        dead_lettered=True,
    )


# -- jobs: errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stat = FAILED", f"filter: unknown field 'stat' at position 0 {JOB_FIELDS}"),
        ("State = FAILED", f"filter: unknown field 'State' at position 0 {JOB_FIELDS}"),
        ("labels = FAILED", f"filter: unknown field 'labels' at position 0 {JOB_FIELDS}"),
        (
            'labels.<key> = "x"',
            "filter: expected a label key after 'labels.' at position 7",
        ),
        (
            'state = FAILED AND actions:"echo"',
            f"filter: unknown field 'actions' at position 19 {JOB_FIELDS}",
        ),
        ("state = DONE", f"filter: unknown state 'DONE' at position 8 {JOB_STATES}"),
        (
            "state = JOB_STATE_UNSPECIFIED",
            f"filter: unknown state 'JOB_STATE_UNSPECIFIED' at position 8 {JOB_STATES}",
        ),
        (
            "(state = FAILED OR state = DONE)",
            f"filter: unknown state 'DONE' at position 27 {JOB_STATES}",
        ),
        ('intent "send_mail"', "filter: expected '=' after 'intent' at position 7"),
        ('intent != "send_mail"', "filter: expected '=' after 'intent' at position 7"),
        ('intent:"send_mail"', "filter: expected '=' after 'intent' at position 6"),
        ("state > FAILED", "filter: expected '=' after 'state' at position 6"),
        (
            'create_time = "2026-01-01T00:00:00Z"',
            "filter: expected one of '<', '<=', '>', '>=' after 'create_time' at position 12",
        ),
        ("intent =", "filter: expected a value after 'intent =' at position 8"),
        ("intent = )", "filter: expected a value after 'intent =' at position 9"),
        (
            "intent = send_mail",
            "filter: expected a double-quoted string after 'intent =' at position 9",
        ),
        (
            "labels.team = ops",
            "filter: expected a double-quoted string after 'labels.team =' at position 14",
        ),
        (
            "dead_lettered = yes",
            "filter: expected true or false after 'dead_lettered =' at position 16",
        ),
        (
            'create_time > "yesterday"',
            f'filter: invalid timestamp "yesterday" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "2026-01-01T00:00:00"',
            f'filter: invalid timestamp "2026-01-01T00:00:00" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "2026-01-01"',
            f'filter: invalid timestamp "2026-01-01" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "2026-13-01T00:00:00Z"',
            f'filter: invalid timestamp "2026-13-01T00:00:00Z" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "2026-01-01T00:00:60Z"',
            f'filter: invalid timestamp "2026-01-01T00:00:60Z" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "2026-01-01T00:00:00+24:00"',
            f'filter: invalid timestamp "2026-01-01T00:00:00+24:00" at position 14 {RFC3339_HINT}',
        ),
        (
            'create_time > "0001-01-01T00:00:00+01:00"',
            f'filter: invalid timestamp "0001-01-01T00:00:00+01:00" at position 14 {RFC3339_HINT}',
        ),
        (
            "create_time > 2026",
            "filter: expected a double-quoted RFC 3339 timestamp, e.g. "
            "\"2026-01-01T00:00:00Z\" after 'create_time >' at position 14",
        ),
        (
            'intent = "a" AND intent = "b"',
            "filter: duplicate condition on 'intent' at position 17",
        ),
        (
            "state = FAILED AND (state = PENDING OR state = RUNNING)",
            "filter: duplicate condition on 'state' at position 20",
        ),
        (
            'labels.team = "a" AND labels.site = "b" AND labels.team = "c"',
            "filter: duplicate condition on 'labels.team' at position 44",
        ),
        (
            "dead_lettered = true AND dead_lettered = false",
            "filter: duplicate condition on 'dead_lettered' at position 25",
        ),
        (
            'create_time > "2026-01-01T00:00:00Z" AND create_time >= "2026-01-02T00:00:00Z"',
            "filter: duplicate lower bound on 'create_time' at position 41",
        ),
        (
            'create_time < "2026-01-01T00:00:00Z" AND create_time <= "2026-01-02T00:00:00Z"',
            "filter: duplicate upper bound on 'create_time' at position 41",
        ),
        (
            "state = FAILED OR state = CANCELLED",
            "filter: OR needs parentheses, e.g. (state = A OR state = B), at position 15",
        ),
        (
            '(state = FAILED OR intent = "x")',
            "filter: OR is only supported between state conditions, found 'intent' at position 19",
        ),
        (
            "(state = FAILED AND state = CANCELLED)",
            "filter: expected OR or ')' at position 16",
        ),
        ("(state = FAILED", "filter: expected OR or ')' at position 15"),
        ("state = FAILED)", "filter: expected AND or end of filter at position 14"),
        (
            'state = FAILED intent = "x"',
            "filter: expected AND or end of filter at position 15",
        ),
        ("state = FAILED AND", f"filter: expected a field name at position 18 {JOB_FIELDS}"),
        ("AND state = FAILED", f"filter: expected a field name at position 0 {JOB_FIELDS}"),
        ("()", f"filter: expected a field name at position 1 {JOB_FIELDS}"),
        ('"state" = FAILED', f"filter: expected a field name at position 0 {JOB_FIELDS}"),
        (
            "((state = FAILED))",
            f"filter: expected a field name at position 1 {JOB_FIELDS}",
        ),
        ('labels. = "x"', "filter: expected a label key after 'labels.' at position 7"),
        (
            'labels.Team = "x"',
            "filter: invalid label key 'Team' at position 7 (keys use a-z, 0-9, _, . and -)",
        ),
        ('intent = "send_mail', "filter: unterminated string starting at position 9"),
        ('intent = "x\\', "filter: unterminated string starting at position 9"),
        (
            'intent = "a\\nb"',
            'filter: invalid escape \\n at position 11 (only \\" and \\\\ are allowed)',
        ),
        ("intent = 'x'", "filter: strings take double quotes, found ' at position 9"),
        ("state = FAILED && x", "filter: unexpected character '&' at position 15"),
        ("state ! FAILED", "filter: unexpected character '!' at position 6"),
        ("stäte = FAILED", "filter: unexpected character 'ä' at position 2"),
    ],
)
def test_job_filter_errors(text: str, message: str) -> None:
    assert _job_error(text) == message


def test_filter_length_is_bounded() -> None:
    at_limit = 'intent = "' + "x" * (MAX_FILTER_LENGTH - 11) + '"'
    assert len(at_limit) == MAX_FILTER_LENGTH
    assert parse_job_filter(at_limit).intent == "x" * (MAX_FILTER_LENGTH - 11)
    too_long = " " * (MAX_FILTER_LENGTH + 1)
    assert _job_error(too_long) == "filter: longer than 2048 characters (2049)"
    assert _agent_error(too_long) == "filter: longer than 2048 characters (2049)"


# -- agents ---------------------------------------------------------------------------------------


def test_agent_filter_every_field() -> None:
    parsed = parse_agent_filter(
        '(state = CONNECTED OR state = agent_state_draining) AND actions:"echo"'
        ' AND actions = "click" AND capabilities:"browser:chromium" and labels.site = "berlin"'
    )
    assert parsed == AgentFilter(
        states=frozenset({AgentState.CONNECTED, AgentState.DRAINING}),
        actions=frozenset({"echo", "click"}),
        capabilities=frozenset({"browser:chromium"}),
        labels={"site": "berlin"},
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('intent = "x"', f"filter: unknown field 'intent' at position 0 {AGENT_FIELDS}"),
        (
            "state = RUNNING",
            "filter: unknown state 'RUNNING' at position 8 "
            "(states: CONNECTED, DRAINING, DISCONNECTED)",
        ),
        (
            'actions > "echo"',
            "filter: expected one of ':', '=' after 'actions' at position 8",
        ),
        ("actions:echo", "filter: expected a double-quoted string after 'actions:' at position 8"),
        (
            'capabilities = "x" AND (capabilities = "y" OR capabilities = "z")',
            "filter: OR is only supported between state conditions, "
            "found 'capabilities' at position 24",
        ),
        (
            "state = CONNECTED AND state = DRAINING",
            "filter: duplicate condition on 'state' at position 22",
        ),
        (
            'labels.site = "a" AND labels.site = "b"',
            "filter: duplicate condition on 'labels.site' at position 22",
        ),
    ],
)
def test_agent_filter_errors(text: str, message: str) -> None:
    assert _agent_error(text) == message


@pytest.mark.parametrize(
    ("agent_filter", "expected"),
    [
        (AgentFilter(), True),
        (AgentFilter(states=frozenset({AgentState.CONNECTED, AgentState.DRAINING})), True),
        (AgentFilter(states=frozenset({AgentState.DISCONNECTED})), False),
        (AgentFilter(actions=frozenset({"echo", "click"})), True),
        (AgentFilter(actions=frozenset({"echo", "send_mail"})), False),
        (AgentFilter(capabilities=frozenset({"browser:chromium"})), True),
        (AgentFilter(capabilities=frozenset({"app:excel"})), False),
        (AgentFilter(labels={"site": "berlin"}), True),
        (AgentFilter(labels={"site": "hamburg"}), False),
        (AgentFilter(labels={"floor": "3"}), False),
    ],
)
def test_agent_filter_matches(agent_filter: AgentFilter, expected: bool) -> None:
    matched = agent_filter.matches(
        "CONNECTED",
        ["echo", "click", "wait"],
        ("browser:chromium",),
        {"site": "berlin", "team": "ops"},
    )
    assert matched is expected


def test_a_parsed_agent_filter_matches_its_agent() -> None:
    agent_filter = parse_agent_filter('actions:"echo" AND labels.site = "berlin"')
    assert agent_filter.matches(AgentState.DRAINING, {"echo"}, set(), {"site": "berlin"})
    assert not agent_filter.matches(AgentState.DRAINING, {"click"}, set(), {"site": "berlin"})


# -- canonical text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("state=failed", "state = FAILED"),
        (
            "(state = cancelled OR state = JOB_STATE_FAILED or state = PENDING)",
            "(state = PENDING OR state = FAILED OR state = CANCELLED)",
        ),
        (
            'dead_lettered = TRUE and labels.b = "2" AND labels.a = "1" AND intent = "x\\"y"',
            'intent = "x\\"y" AND labels.a = "1" AND labels.b = "2" AND dead_lettered = true',
        ),
        (
            'create_time <= "2026-01-01T01:00:00+01:00" AND create_time >= "2025-01-01T00:00:00Z"',
            'create_time > "2024-12-31T23:59:59.999999Z" AND '
            'create_time < "2026-01-01T00:00:00.000001Z"',
        ),
    ],
)
def test_job_filter_canonical_text(text: str, canonical: str) -> None:
    parsed = parse_job_filter(text)
    assert format_job_filter(parsed) == canonical
    assert parse_job_filter(canonical) == parsed


def test_agent_filter_canonical_text() -> None:
    parsed = parse_agent_filter(
        'labels.site = "berlin" AND capabilities = "b" AND actions = "y" AND actions:"x"'
        " AND (state = DISCONNECTED OR state = connected)"
    )
    canonical = format_agent_filter(parsed)
    assert canonical == (
        '(state = CONNECTED OR state = DISCONNECTED) AND actions:"x" AND actions:"y"'
        ' AND capabilities:"b" AND labels.site = "berlin"'
    )
    assert parse_agent_filter(canonical) == parsed
