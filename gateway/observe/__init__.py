"""Observability: call records (and, later, metrics and usage roll-ups)."""
