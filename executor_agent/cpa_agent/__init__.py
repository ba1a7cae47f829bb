"""CPA executor agent: connects to the scheduler over ExecutorService.Connect and runs ToDos.

Depends on the generated contract (`cpa.*.v1`) only, never on the scheduler's code.
"""

__version__ = "0.1.0"
