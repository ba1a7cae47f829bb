"""What the agent measures of itself (docs/OBSERVABILITY.md)."""
