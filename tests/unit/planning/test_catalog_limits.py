"""What a catalog may not do to the server (issue 11): slow patterns, YAML bombs, huge templates."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cpa_scheduler.domain.errors import InvalidArgument, Reason
from cpa_scheduler.planning import (
    CatalogError,
    RenderLimits,
    RuleIntentRouter,
    load_catalog,
    parse_catalog,
)
from cpa_scheduler.strict_yaml import MAX_YAML_DEPTH

FIXTURES = Path(__file__).parents[2] / "fixtures" / "yaml"


def _catalog(pattern: str = "'send mail'", *, params: str = "{}", parameters: str = "{}") -> str:
    return textwrap.dedent(
        f"""\
        intents:
          - name: send_mail
            description: Send a mail.
            patterns:
              - regex: {pattern}
            parameters: {parameters}
            tasks:
              - id: send
                action: send_mail
                params: {params}
        """
    )


# --- Patterns run on RE2 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"'(?P<word>\w+) again (?P=word)'", "invalid perl operator: (?P"),
        (r"'(\w+) again \1'", "invalid escape sequence: \\1"),
        (r"'send(?= mail)'", "invalid perl operator: (?="),
        (r"'(?<!e)mail'", "invalid perl operator: (?<!"),
    ],
    ids=["named backreference", "backreference", "lookahead", "lookbehind"],
)
def test_a_pattern_only_a_backtracking_engine_can_run_is_refused_at_load(
    pattern: str, what: str
) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(_catalog(pattern, parameters="{word: {}}"), source="intents.yaml")

    error = caught.value
    assert error.line == 5
    assert error.field == "intents[0].patterns[0].regex"
    # The intent, the pattern, what RE2 cannot do, and what to do instead.
    assert str(error).startswith("intents.yaml:5: intent 'send_mail' field 'patterns[0].regex': ")
    assert f"regex {pattern.strip(chr(39))!r} cannot be matched in linear time" in error.problem
    assert what in error.problem
    assert "backreferences and lookarounds are not supported" in error.problem


def test_the_shipped_patterns_match_as_before_under_re2() -> None:
    router = RuleIntentRouter(
        parse_catalog(_catalog(r"'(?:e-?mail|send)\s+(?P<to>\S+)'", parameters="{to: {}}"))
    )

    routed = router.route("Please E-Mail bob@example.com today")
    assert (routed.intent, routed.parameters) == ("send_mail", {"to": "bob@example.com"})


def test_keywords_still_match_whole_words_only_in_any_script() -> None:
    catalog = parse_catalog(
        textwrap.dedent(
            """\
            intents:
              - name: pay
                description: Pay.
                patterns: [{keywords: [straße, pay now]}]
                tasks: [{id: a, action: click}]
            """
        )
    )
    router = RuleIntentRouter(catalog)

    assert router.route("PAY   NOW in der Straße").intent == "pay"
    assert router.route("pay\u00a0now, Straße").intent == "pay"  # a no-break space
    # "straßen" and "prepay" contain the keywords but are other words.
    assert router.route("pay now, straßen").intent == "unknown"
    assert router.route("prepay now straße").intent == "unknown"
    assert router.route("pay now_straße").intent == "unknown"


def test_an_unknown_intent_name_is_compared_and_echoed_by_its_head_only() -> None:
    router = RuleIntentRouter(parse_catalog(_catalog()))
    with pytest.raises(InvalidArgument) as caught:
        router.expand("send_mial" + "x" * 1_000_000)

    assert caught.value.reason is Reason.UNKNOWN_INTENT
    assert caught.value.message.endswith("...; closest: send_mail")
    assert len(caught.value.message) < 200


# --- YAML: no aliases, bounded depth ----------------------------------------------------------


def test_a_catalog_alias_bomb_is_refused_at_its_first_alias() -> None:
    path = FIXTURES / "catalog_alias_bomb.yaml"
    with pytest.raises(CatalogError) as caught:
        load_catalog(path)

    assert caught.value.line == 10  # `b: &b [*a, ...]`, the first alias
    assert str(caught.value).startswith(f"{path}:10: alias *a is not allowed")


def test_an_anchor_without_alias_is_harmless_and_loads() -> None:
    catalog = parse_catalog(_catalog(params="&p {to: bob}"))

    assert catalog.names == ("send_mail",)


def test_a_merge_key_needs_an_alias_and_is_refused() -> None:
    text = "base: &base {action: click}\n" + _catalog().replace("action: send_mail", "<<: *base")
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, source="intents.yaml")

    assert "alias *base is not allowed" in caught.value.problem


def test_nesting_deeper_than_the_bound_is_refused_not_a_recursion_error() -> None:
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(CatalogError) as caught:
        parse_catalog(_catalog(params=f"{{deep: {deep}}}"), source="intents.yaml")

    assert caught.value.line == 10
    assert f"nested deeper than {MAX_YAML_DEPTH} levels" in caught.value.problem


# --- Templates: bounded size and steps --------------------------------------------------------


def _rendered(template: str, *, limits: RenderLimits | None = None, **parameters: str) -> str:
    declared = "{" + ", ".join(f"{name}: {{}}" for name in parameters) + "}"
    catalog = parse_catalog(
        _catalog(params="{body: " + _quoted(template) + "}", parameters=declared)
    )
    router = RuleIntentRouter(catalog, render_limits=limits or RenderLimits())
    [todo] = router.expand("send_mail", parameters)
    body = todo.params["body"]
    assert isinstance(body, str)
    return body


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _limit_error(template: str, *, limits: RenderLimits | None = None, **parameters: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        _rendered(template, limits=limits, **parameters)
    assert caught.value.reason is Reason.TEMPLATE_LIMIT_EXCEEDED, caught.value
    # Which intent, task and field went past the limit.
    assert caught.value.message.startswith("intent 'send_mail' task 'send' field 'params.body': ")
    return caught.value.message


def test_ordinary_templates_render_as_before() -> None:
    assert _rendered("{% for w in words.split() %}{{ w|upper }} {% endfor %}", words="a b") == (
        "A B "
    )
    assert _rendered("{{ '%05d'|format(42) }} {{ 'x' * 3 }} {{ 2 ** 10 }}") == "00042 xxx 1024"


def test_output_past_the_byte_limit_is_refused_naming_the_intent() -> None:
    message = _limit_error(
        "{% for i in range(200) %}{{ text }}{% endfor %}",
        limits=RenderLimits(max_bytes=100_000),
        text="x" * 1000,
    )
    assert "exceed 100000 bytes" in message


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 100000000 }}",
        "{{ [text] * 100000000 }}",
        "{{ 2 ** 100000000 }}",
        "{{ '%0100000000d' % 1 }}",
        "{{ '%0100000000d'|format(1) }}",
        "{{ '{:>100000000}'.format(1) }}",
        "{{ text.ljust(100000000) }}",
        "{{ text|center(100000000) }}",
        "{{ [1]|batch(100000000, 0)|list }}",
        "{{ text|replace('x', text * 1000) }}",
        "{% set ns = namespace(s=text) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s|length }}",
        "{% macro grow(s) %}{{ grow(s ~ s) }}{% endmacro %}{{ grow(text) }}",
    ],
)
def test_a_value_too_large_is_refused_before_it_is_built(template: str) -> None:
    message = _limit_error(template, text="x" * 1000)
    assert "exceeds the render limit of 1048576" in message


def test_nested_loops_end_at_the_step_limit_instead_of_running_for_hours() -> None:
    # range() alone is bounded by the sandbox (100 000 items); nested, 10**10 iterations.
    message = _limit_error(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    assert "more than 10000 steps" in message


def test_recursion_without_end_is_a_template_error() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _rendered(
            "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
            limits=RenderLimits(max_steps=10**9),
        )
    assert caught.value.reason is Reason.TEMPLATE_ERROR


def test_the_sandbox_still_bounds_range() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _rendered("{{ range(10**9)|length }}")
    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert "MAX_RANGE" in caught.value.message


def test_lipsum_is_not_available_to_templates() -> None:
    with pytest.raises(CatalogError) as caught:
        _rendered("{{ lipsum(1000000) }}")
    assert "undefined variable 'lipsum'" in caught.value.problem


def test_the_budget_is_shared_by_the_tasks_of_one_render_and_fresh_for_the_next() -> None:
    catalog = parse_catalog(
        textwrap.dedent(
            """\
            intents:
              - name: two
                description: Two tasks.
                parameters: {text: {}}
                tasks:
                  - {id: a, action: echo, params: {body: '{{ text }}'}}
                  - {id: b, action: echo, params: {body: '{{ text }}'}}
            """
        )
    )
    router = RuleIntentRouter(catalog, render_limits=RenderLimits(max_bytes=1500))

    assert len(router.expand("two", {"text": "x" * 700})) == 2
    assert len(router.expand("two", {"text": "x" * 700})) == 2
    with pytest.raises(InvalidArgument) as caught:
        router.expand("two", {"text": "x" * 800})
    assert caught.value.message.startswith("intent 'two' task 'b' field 'params.body': ")


def test_large_numbers_that_size_nothing_are_fine() -> None:
    assert _rendered("{{ text.split('-', 100000000) }} {{ 10 ** 6 * 5 }}", text="a-b") == (
        "['a', 'b'] 5000000"
    )
