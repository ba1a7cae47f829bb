"""The `iso_month` template filter: "November", "Nov 2026", "11/2026" or "2026-11" as `2026-11`.

People name a month the way they speak ("forward the November invoice"); portals and file names
use `YYYY-MM`. A month without a year is the latest such month that is not in the future: in
December 2026 "November" is 2026-11, in February 2027 it is still 2026-11. Pure (no I/O): the
clock is read only when the caller gives no `today`.
"""

from __future__ import annotations

from datetime import date

import re2

_NAMES = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_ISO = re2.compile(r"^(\d{4})-(\d{1,2})$")
_NUMERIC = re2.compile(r"^(\d{1,2})[/.](\d{4})$")
_NAMED = re2.compile(r"^([a-z]+)\.?(?:,?\s+(\d{4}))?$")
_MAX_INPUT = 40


def iso_month(value: object, today: date | None = None) -> str:
    """`value` as `YYYY-MM`; ValueError (a template error naming the value) when it is no month."""
    text = str(value).strip().lower()[: _MAX_INPUT + 1]
    if len(text) > _MAX_INPUT:
        raise ValueError(f"not a month: {str(value)[:_MAX_INPUT]!r}...")
    year: int | None
    if match := _ISO.match(text):
        year, month = int(match.group(1)), int(match.group(2))
    elif match := _NUMERIC.match(text):
        month, year = int(match.group(1)), int(match.group(2))
    elif (match := _NAMED.match(text)) and match.group(1) in _NAMES:
        month = _NAMES[match.group(1)]
        year = int(match.group(2)) if match.group(2) else None
    else:
        raise ValueError(f"not a month: {value!r} (use YYYY-MM or a month name)")
    if not 1 <= month <= 12:
        raise ValueError(f"not a month: {value!r} (month {month} is not 1-12)")
    if year is None:
        today = today or date.today()
        year = today.year if month <= today.month else today.year - 1
    return f"{year:04d}-{month:02d}"
