"""Decoded aggregates of unfinished jobs between their transitions, for the distributed store.

Reading and decoding every task row of a job on each of its transitions made a 10 000-task job
cost O(tasks) per transition. A replica keeps the aggregates it committed last; a transaction
that locks the job's row takes the cached one only if the row's last_event_sequence is still the
one it was committed at (every change of a job records at least one event, so another replica's
change shows there), and reads the task rows only of the jobs it has no valid aggregate for.
Lease renewals change no sequence: a cached task's lease_until may be older than its row's, which
no transition reads and every transition that writes the task sets anew.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from cpa_scheduler.domain import Job

# Jobs kept; the least recently changed go first.
DEFAULT_CAPACITY = 512


class AggregateCache:
    """Aggregates as this replica committed them, at most `capacity`, least recent dropped."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def take(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """Remove and return the cached aggregates of `job_ids`: a transaction owns them until
        it gives back (put) what it committed; one that fails gives back nothing."""
        taken = {}
        for job_id in job_ids:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                taken[job_id] = job
        return taken

    def put(self, job: Job) -> None:
        """Keep `job` as committed (an ended job is dropped: it changes rarely, if ever)."""
        self._jobs.pop(job.job_id, None)
        if job.is_terminal:
            return
        self._jobs[job.job_id] = job
        while len(self._jobs) > self._capacity:
            self._jobs.popitem(last=False)

    def clear(self) -> None:
        self._jobs.clear()

    def __len__(self) -> int:
        return len(self._jobs)
