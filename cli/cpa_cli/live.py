"""Following a job live: its events, why a queued task waits, and a progress bar per running task.

`follow` is what `cpa watch`, `cpa submit --watch` and `cpa demo` print while a job runs:
- every event as one line (output.EventPrinter);
- while a task is QUEUED, why: the scheduler derives `Task.waiting_reason` whenever it answers
  GetJob (from the agents connected at that moment: "no connected agent offers action 'uia'",
  "all 2 capable agents are busy", the retry backoff), it is not an event; so the follower asks
  GetJob about once a second while its events say a task is queued, and prints the reason when
  it changes;
- on a terminal, a rich progress bar per running task that reports percent (the progress event
  lines are left out there, the bar shows them); elsewhere (a pipe, a file, a test) plain lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from cpa.scheduler.v1 import job_event_pb2, job_pb2
from cpa_client import CpaError, SchedulerClient

from .common import emit
from .output import EventPrinter

# How often the follower asks GetJob why queued tasks wait (only while some are queued).
WAITING_POLL_INTERVAL_S = 1.0


class ProgressDisplay(Protocol):
    """Where progress goes: bars on a terminal, or nothing more than the event lines."""

    shows_progress: bool

    def update(self, task_id: str, percent: float, message: str) -> None: ...

    def finish(self, task_id: str) -> None: ...


class PlainProgress:
    """Not a terminal: progress stays in the event lines ("progress 40%  waited 1.0s")."""

    shows_progress = False

    def update(self, task_id: str, percent: float, message: str) -> None:
        pass

    def finish(self, task_id: str) -> None:
        pass


class BarProgress:
    """A rich progress bar per running task that reported percent; removed when the task ends.

    Lines printed while the bars show (events, waiting reasons) go above them: rich's Live
    redirects stdout for as long as it runs.
    """

    shows_progress = True

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[message]}"),
            console=console,
            transient=True,
        )
        self._bars: dict[str, TaskID] = {}

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, task_id: str, percent: float, message: str) -> None:
        bar = self._bars.get(task_id)
        if bar is None:
            bar = self._progress.add_task(task_id, total=100.0, message="")
            self._bars[task_id] = bar
        self._progress.update(bar, completed=max(0.0, min(percent, 100.0)), message=message)

    def finish(self, task_id: str) -> None:
        bar = self._bars.pop(task_id, None)
        if bar is not None:
            self._progress.remove_task(bar)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@contextlib.contextmanager
def progress_display(*, as_json: bool, stream: TextIO | None = None) -> Iterator[ProgressDisplay]:
    """Bars when `stream` (stdout) is a terminal and the output is text; plain otherwise."""
    stream = stream or sys.stdout
    if as_json or not is_terminal(stream):
        yield PlainProgress()
        return
    with BarProgress(Console(file=stream)) as bars:
        yield bars


class JobFollower:
    """Prints one job's events and waiting reasons; keeps the progress display in step."""

    def __init__(
        self,
        client: SchedulerClient,
        job: job_pb2.Job,
        display: ProgressDisplay,
        *,
        as_json: bool = False,
        poll_interval_s: float = WAITING_POLL_INTERVAL_S,
    ) -> None:
        self._client = client
        self._job_id = job.job_id
        self._display = display
        self._as_json = as_json
        self._poll_interval_s = poll_interval_s
        self._printer = EventPrinter(
            origin=job.create_time,
            task_ids=[task.todo.id for task in job.tasks],
            as_json=as_json,
        )
        self._origin_ns = job.create_time.ToNanoseconds() if job.HasField("create_time") else 0
        self._queued = {t.todo.id for t in job.tasks if t.state == job_pb2.TASK_STATE_QUEUED}
        self._some_queued = asyncio.Event()
        if self._queued:
            self._some_queued.set()
        self._reasons: dict[str, str] = {}

    async def run(self, *, after_sequence: int = 0) -> None:
        """Until the server ends the stream (after the terminal event of the job's run)."""
        poller = asyncio.create_task(self._poll_waiting_reasons(), name="waiting-reasons")
        try:
            async for event in self._client.watch_job(self._job_id, after_sequence=after_sequence):
                self._on_event(event)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    def _on_event(self, event: job_event_pb2.JobEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "task_progress" and self._display.shows_progress:
            progress = event.task_progress
            self._display.update(progress.task_id, progress.percent, progress.message)
            return  # the bar shows it
        self._printer(event)
        if kind == "task_state_changed":
            change = event.task_state_changed
            if change.to_state == job_pb2.TASK_STATE_QUEUED:
                self._queued.add(change.task_id)
                self._some_queued.set()
            else:
                self._queued.discard(change.task_id)
                self._reasons.pop(change.task_id, None)
                if not self._queued:
                    self._some_queued.clear()
            if change.to_state != job_pb2.TASK_STATE_RUNNING:
                self._display.finish(change.task_id)

    async def _poll_waiting_reasons(self) -> None:
        while True:
            await self._some_queued.wait()
            await asyncio.sleep(self._poll_interval_s)  # a pace, not a synchronisation
            if not self._queued:
                continue
            try:
                job = await self._client.get_job(self._job_id, view=job_pb2.JOB_VIEW_BASIC)
            except CpaError:
                continue  # the stream reports a lost server; this is only commentary
            for task in job.tasks:
                self._note_reason(task)

    def _note_reason(self, task: job_pb2.Task) -> None:
        task_id = task.todo.id
        if task.state != job_pb2.TASK_STATE_QUEUED or task_id not in self._queued:
            return
        reason = task.waiting_reason
        if not reason or self._reasons.get(task_id) == reason:
            return
        self._reasons[task_id] = reason
        if self._as_json:
            return  # JSON output is the events, one per line, and nothing else
        offset_s = (time.time_ns() - self._origin_ns) / 1e9 if self._origin_ns else 0.0
        width = self._printer.subject_width
        emit(f"{'-':>4}  {offset_s:>+7.3f}s  {task_id:<{width}}  waiting: {reason}")


async def follow(
    client: SchedulerClient,
    job: job_pb2.Job,
    *,
    after_sequence: int = 0,
    as_json: bool = False,
) -> job_pb2.Job:
    """Prints the job's events (and why queued tasks wait) until the stream ends; returns the
    job as it ended.

    The server ends the stream after the terminal event of the job's current run. A re-driven
    job's history holds earlier terminal events too, so the stream, not the flag, says when.
    """
    with progress_display(as_json=as_json) as display:
        follower = JobFollower(client, job, display, as_json=as_json)
        await follower.run(after_sequence=after_sequence)
    return await client.get_job(job.job_id)
