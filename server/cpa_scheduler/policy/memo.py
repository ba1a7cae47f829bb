"""BoundedMemo: the policy's remembered answers (rules per field, redactions per text).

The same few fields and texts are asked about for every job, so answers are kept; a memo that
fills up is emptied at once, which costs one pass of fresh answers instead of bookkeeping per
call (no LRU order to maintain on the hot path). A dict, so a lookup stays dict.get.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V]):
    """At most `capacity` answers; `remember` adds one (emptying the memo when full)."""

    __slots__ = ("capacity",)

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def remember(self, key: K, value: V) -> V:
        if len(self) >= self.capacity:
            self.clear()
        self[key] = value
        return value
