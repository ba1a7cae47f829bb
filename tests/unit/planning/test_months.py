"""The `iso_month` template filter: months as people say them, as portals name them."""

from __future__ import annotations

from datetime import date

import pytest

from cpa_scheduler.domain.errors import InvalidArgument, Reason
from cpa_scheduler.planning import parse_catalog
from cpa_scheduler.planning.months import iso_month

DECEMBER_2026 = date(2026, 12, 3)


@pytest.mark.parametrize(
    ("said", "month"),
    [
        ("2026-11", "2026-11"),
        ("2026-1", "2026-01"),
        ("11/2026", "2026-11"),
        ("11.2026", "2026-11"),
        ("November 2026", "2026-11"),
        ("nov. 2026", "2026-11"),
        ("Sept, 2025", "2025-09"),
        ("November", "2026-11"),
        ("december", "2026-12"),
    ],
)
def test_months_as_said_become_yyyy_mm(said: str, month: str) -> None:
    assert iso_month(said, today=DECEMBER_2026) == month


def test_a_month_without_a_year_is_never_in_the_future() -> None:
    assert iso_month("November", today=date(2027, 2, 1)) == "2026-11"
    assert iso_month("February", today=date(2027, 2, 1)) == "2027-02"
    assert iso_month("March", today=date(2027, 2, 28)) == "2026-03"


@pytest.mark.parametrize("said", ["2026-13", "13/2026", "Novembre", "", "next month", "x" * 500])
def test_what_is_no_month_is_refused(said: str) -> None:
    with pytest.raises(ValueError, match="not a month"):
        iso_month(said, today=DECEMBER_2026)


def test_in_a_template_a_bad_month_is_a_template_error_naming_the_field() -> None:
    catalog = parse_catalog(
        """
        intents:
          - name: pick
            description: Pick a month.
            parameters: {month: {required: true}}
            tasks: [{id: a, action: echo, params: {month: "{{ month | iso_month }}"}}]
        """
    )
    intent = catalog.get("pick")
    assert intent is not None

    assert intent.render({"month": "Nov 2026"}, context={})[0].params == {"month": "2026-11"}
    with pytest.raises(InvalidArgument) as caught:
        intent.render({"month": "Brumaire"}, context={})
    assert caught.value.reason is Reason.TEMPLATE_ERROR
    assert "task 'a' field 'params.month'" in caught.value.message
    assert "not a month: 'Brumaire'" in caught.value.message
