"""Compact JSON text: the one encoding of the stores' JSON columns and of every Redis message.

orjson, not the standard library: these encodings run several times per job on the hot path
(a job's rows, its events, queue entries), and orjson does them several times faster. It
writes aware datetimes as RFC 3339 text, which PostgreSQL reads into timestamptz columns.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> str:
    """`value` as compact UTF-8 JSON text. Raises TypeError (orjson.JSONEncodeError) for what
    JSON cannot hold: another type, a non-string key, an integer beyond 64 bits."""
    return orjson.dumps(value).decode()
