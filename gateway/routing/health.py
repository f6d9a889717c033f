"""Active health checks: a probe request to each deployment every ``interval`` seconds.

Two ways a deployment leaves rotation:

- *Passive*: requests fail, and its breaker opens (``gateway.routing.breaker``). It comes back through
  half-open probes made of real requests.
- *Active* (here): ``unhealthy_threshold`` probes in a row fail, and the checker *ejects* it (its breaker
  opens without end). ``healthy_threshold`` probes in a row that pass *restore* it. A deployment that no
  request reaches (all traffic went elsewhere, or it sits in a fallback) is still watched, and it is
  ejected before a client request meets the failure.

The checker does not know how to send a request: it takes ``probe``, a callable that sends the model's
configured probe (``HealthCheckConfig.path``/``body``) to one deployment and answers whether it passed.
A probe that raises, answers False, or takes longer than ``timeout`` has failed.

One checker per worker is simplest; with ``BreakerSync`` one per node (or cluster) is enough, since
ejections and restorations are shared like any other open and close.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from gateway.aio import cancel_and_wait, within
from gateway.routing.config import HealthCheckConfig
from gateway.routing.router import Deployment, Router

__all__ = ["HealthChecker", "Probe"]

log = logging.getLogger("gateway.routing.health")

#: sends the health probe to a deployment; True when it passed
Probe = Callable[[Deployment, HealthCheckConfig], Awaitable[bool]]


class _Counts:
    __slots__ = ("failures", "passes")

    def __init__(self) -> None:
        self.passes = 0
        self.failures = 0


class HealthChecker:
    """One task per deployment of every model with an enabled ``health`` table."""

    def __init__(
        self,
        routers: Mapping[str, Router],
        probe: Probe,
        *,
        clock: Callable[[], float] = time.monotonic,
        rnd: Callable[[], float] = random.random,
    ) -> None:
        """``clock``: the clock the routers' ``now`` comes from; ``rnd``: spreads the first probes over
        one interval, so that a restart does not probe everything at once."""
        self._probe = probe
        self._clock = clock
        self._rnd = rnd
        self.targets: list[tuple[Router, Deployment, HealthCheckConfig]] = []
        for router in routers.values():
            cfg = router.health
            if cfg is not None and cfg.enabled:
                self.targets.extend((router, d, cfg) for d in router.deployments)
        self._counts: dict[str, _Counts] = {d.id: _Counts() for _, d, _ in self.targets}
        self._tasks: list[asyncio.Task[None]] = []

    def counts(self, deployment: Deployment) -> tuple[int, int]:
        """(probes passed in a row, probes failed in a row)."""
        c = self._counts[deployment.id]
        return c.passes, c.failures

    async def check(self, router: Router, deployment: Deployment, config: HealthCheckConfig) -> bool:
        """Probe once and act on the thresholds; returns whether the probe passed."""
        try:
            passed = bool(await within(self._probe(deployment, config), config.timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a probe's own failure is the verdict, not the checker's
            log.debug("health probe of %s/%s failed: %r", deployment.model, deployment.name, exc)
            passed = False
        c = self._counts[deployment.id]
        now = self._clock()
        if passed:
            c.failures = 0
            c.passes += 1
            if c.passes >= config.healthy_threshold and router.restore(deployment, now):
                log.info("deployment %s/%s is healthy again: restored", deployment.model, deployment.name)
        else:
            c.passes = 0
            c.failures += 1
            if c.failures >= config.unhealthy_threshold and router.eject(deployment, now):
                log.warning(
                    "deployment %s/%s failed %d health probes in a row: ejected",
                    deployment.model, deployment.name, c.failures,
                )
        return passed

    async def _watch(self, router: Router, deployment: Deployment, config: HealthCheckConfig) -> None:
        await asyncio.sleep(self._rnd() * config.interval)
        while True:
            await self.check(router, deployment, config)
            await asyncio.sleep(config.interval)

    def start(self) -> None:
        """Start the probe tasks (on the running loop)."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(r, d, c)) for r, d, c in self.targets]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)
