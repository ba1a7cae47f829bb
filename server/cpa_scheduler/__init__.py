"""CPA Scheduler: plans requests into task graphs and dispatches them to executor agents."""

__version__ = "0.1.0"
