"""The application layer: job lifecycle (orchestrator) over storage, queue and event bus."""

from .orchestrator import Orchestrator, Submission
from .reports import ResultReport

__all__ = ["Orchestrator", "ResultReport", "Submission"]
