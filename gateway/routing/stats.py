"""Plain counters of routing, per deployment, for the metrics exporter to read (``gateway.observe.metrics``).

A router is rebuilt on every config reload and its ``Deployment`` objects with it, so the counters do not
live there: each deployment id (model and name) has one ``DeploymentStats`` for the life of the worker
process, found again by the deployment of the same name after a reload. Counters never go back, which is
what Prometheus and the node-wide sums need. A deployment removed by a reload keeps its counters.

Incrementing an attribute costs a few nanoseconds; a success adds one increment to ``Router.record``.
"""

from __future__ import annotations

__all__ = ["DeploymentStats", "all_deployment_stats", "deployment_stats"]


class DeploymentStats:
    """One deployment's routing counters in this worker since it started (never reset)."""

    __slots__ = ("breaker_opens", "deployment", "fallbacks", "model", "ok", "outcomes", "retries")

    def __init__(self, model: str, deployment: str) -> None:
        self.model = model
        self.deployment = deployment
        #: attempts reported with outcome "ok"; the others by outcome value ("5xx", "timeout", ...)
        self.ok = 0
        self.outcomes: dict[str, int] = {}
        #: attempts sent here after another attempt of the request failed: on the same model (a retry),
        #: or as the first attempt on a fallback model (also when the model asked for had none available)
        self.retries = 0
        self.fallbacks = 0
        #: times this worker's breaker of the deployment opened (health-check ejections included; opens
        #: learnt from other workers are counted by the worker that opened it)
        self.breaker_opens = 0

    def failed(self, outcome: str) -> None:
        """Count an attempt that did not end ``ok`` (not on the success path)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


#: deployment id -> its counters, for the worker process's lifetime (see the module docstring)
_STATS: dict[str, DeploymentStats] = {}


def deployment_stats(model: str, deployment: str) -> DeploymentStats:
    """The counters of ``model``'s deployment ``deployment``: the same object across config reloads."""
    key = f"{model}\x1f{deployment}"
    stats = _STATS.get(key)
    if stats is None:
        stats = _STATS[key] = DeploymentStats(model, deployment)
    return stats


def all_deployment_stats() -> list[DeploymentStats]:
    """Every deployment's counters this worker has (including deployments no longer configured)."""
    return list(_STATS.values())
