"""The application layer: job lifecycle (orchestrator) over storage, queue and event bus."""

from .orchestrator import Orchestrator, ResultReport, Submission

__all__ = ["Orchestrator", "ResultReport", "Submission"]
