"""Labels and capability names: the keys work is matched and filtered by.

One rule for every map of labels (JobSpec.labels, ToDo.required_labels, an agent's
AgentCapabilities.labels) and every list of names (capabilities, actions an agent serves), so
what a job asks for can always be written on an agent, and what a job carries can always be
filtered (`labels.<key> = "..."` takes exactly these keys). Bounded because they are stored with
every job and agent, shown in every view and, for agents, kept in memory for the session's life.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .errors import InvalidArgument, echo

MAX_LABELS = 64
MAX_LABEL_VALUE_CHARS = 256
# The filter grammar's key alphabet (api/list_filter.py), starting with a letter or digit.
LABEL_KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}")
MAX_NAMES = 256
MAX_NAME_CHARS = 128
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def check_labels(labels: Mapping[str, str], field: str) -> None:
    """INVALID_FIELD naming `field` (or `field[key]`): more than MAX_LABELS entries, a key not
    1-63 of a-z, 0-9, '_', '.', '-' (first a letter or digit), a value over
    MAX_LABEL_VALUE_CHARS characters or with control characters."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{field} has {len(labels)} entries; at most {MAX_LABELS}", field=field
        )
    for key in sorted(labels):  # sorted: the first problem reported must not vary
        if not LABEL_KEY_PATTERN.fullmatch(key):
            raise InvalidArgument(
                f"label key {echo(key)} must be 1-63 of a-z, 0-9, '_', '.' or '-', starting "
                "with a letter or digit",
                field=f"{field}[{key}]",  # the error layer bounds what it echoes
            )
        value = labels[key]
        if len(value) > MAX_LABEL_VALUE_CHARS or CONTROL_CHARACTERS.search(value):
            raise InvalidArgument(
                f"label {key} must be at most {MAX_LABEL_VALUE_CHARS} characters without "
                "control characters",
                field=f"{field}[{key}]",
            )


def check_names(names: Iterable[str], field: str) -> None:
    """INVALID_FIELD naming `field`: more than MAX_NAMES names, or one empty, over MAX_NAME_CHARS
    characters or with control characters."""
    listed = list(names)
    if len(listed) > MAX_NAMES:
        raise InvalidArgument(
            f"{field} has {len(listed)} entries; at most {MAX_NAMES}", field=field
        )
    for name in listed:
        if not name or len(name) > MAX_NAME_CHARS or CONTROL_CHARACTERS.search(name):
            raise InvalidArgument(
                f"{field} entry {echo(name)} must be 1-{MAX_NAME_CHARS} characters without "
                "control characters",
                field=field,
            )
