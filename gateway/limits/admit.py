"""The ``admit`` phase: rate limits, token limits and budgets on the request path (being built)."""

from __future__ import annotations

from gateway.config import Config
from gateway.phases import Phase

__all__ = ["AdmitPhase", "LimitService"]


class AdmitPhase(Phase):
    name = "admit"


class LimitService:
    """One per worker: the limits and budgets of the config, and the shared state they draw on."""

    def __init__(self, config: Config, *, worker: int) -> None:
        self.config = config
        self.worker = worker
        self.phase = AdmitPhase()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def reload(self, config: Config) -> None:
        self.config = config
