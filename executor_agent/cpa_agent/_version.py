"""The agent's software version, sent in every hello; kept apart so any module can import it."""

__version__ = "0.1.0"
