"""Active health checks with a fake probe: ejection after failed probes, restoration after passing ones."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.routing.config import DeploymentConfig, HealthCheckConfig, RoutingConfig
from gateway.routing.health import HealthChecker
from gateway.routing.router import Deployment, NoDeploymentAvailable, RequestInfo, Router, build_routers

HEALTH = HealthCheckConfig(interval=0.02, timeout=0.5, unhealthy_threshold=3, healthy_threshold=2)


def routers(health: HealthCheckConfig | None = HEALTH) -> dict[str, Router]:
    cfg = RoutingConfig(deployments=[DeploymentConfig(provider="a"), DeploymentConfig(provider="b")], health=health)
    return build_routers({"m": cfg, "plain": RoutingConfig(deployments=[DeploymentConfig(provider="c")])})


class FakeProbe:
    """Answers per deployment name from ``healthy``; records every call."""

    def __init__(self) -> None:
        self.healthy: dict[str, bool | Exception] = {}
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, deployment: Deployment, config: HealthCheckConfig) -> bool:
        self.calls.append((deployment.name, config.path))
        verdict = self.healthy.get(deployment.name, True)
        if isinstance(verdict, Exception):
            raise verdict
        return verdict


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 60.0)

    return asyncio.run(bounded())


def test_only_models_with_a_health_table_are_watched() -> None:
    checker = HealthChecker(routers(), FakeProbe())
    assert [(r.model, d.name) for r, d, _ in checker.targets] == [("m", "a"), ("m", "b")]
    assert HealthChecker(routers(HealthCheckConfig(enabled=False)), FakeProbe()).targets == []


def test_ejected_after_failed_probes_and_restored_after_passing_ones() -> None:
    async def go() -> None:
        rs = routers()
        m = rs["m"]
        probe = FakeProbe()
        checker = HealthChecker(rs, probe, clock=lambda: 100.0)
        a = m.by_name["a"]
        probe.healthy["a"] = False
        for expected in (False, False, False):
            assert await checker.check(m, a, HEALTH) is expected
            assert m.breaker(a).ejected is (checker.counts(a)[1] >= 3)
        assert m.breaker(a).ejected
        assert {next(m.plan(RequestInfo(), 100.0, lambda: 0.0)).deployment.name for _ in range(4)} == {"b"}
        probe.healthy["a"] = True
        assert await checker.check(m, a, HEALTH) and m.breaker(a).ejected  # one pass is not enough
        assert await checker.check(m, a, HEALTH) and not m.breaker(a).ejected
        assert checker.counts(a) == (2, 0)
        assert probe.calls[0] == ("a", "/models")

    run(go())


def test_a_probe_that_raises_or_hangs_has_failed() -> None:
    async def go() -> None:
        rs = routers()
        m = rs["m"]

        async def hangs(deployment: Deployment, config: HealthCheckConfig) -> bool:
            await asyncio.sleep(30)
            return True

        quick = HealthCheckConfig(timeout=0.01, interval=1.0, unhealthy_threshold=1)
        assert not await HealthChecker(rs, hangs).check(m, m.by_name["a"], quick)
        probe = FakeProbe()
        probe.healthy["b"] = ConnectionRefusedError("refused")
        assert not await HealthChecker(rs, probe).check(m, m.by_name["b"], quick)
        assert m.breaker(m.by_name["a"]).ejected and m.breaker(m.by_name["b"]).ejected
        try:
            m.plan(RequestInfo(), 0.0, lambda: 0.0)
        except NoDeploymentAvailable as exc:
            assert [u.reason for u in exc.reasons] == ["ejected by the health check"] * 2
        else:
            raise AssertionError("expected NoDeploymentAvailable")

    run(go())


def test_the_tasks_probe_every_deployment_until_stopped() -> None:
    async def go() -> None:
        rs = routers()
        m = rs["m"]
        probe = FakeProbe()
        probe.healthy["b"] = False
        checker = HealthChecker(rs, probe, rnd=lambda: 0.0)
        checker.start()
        b = m.by_name["b"]
        for _ in range(500):  # bounded wait for three probes of b
            if m.breaker(b).ejected:
                break
            await asyncio.sleep(0.01)
        await checker.stop()
        assert m.breaker(b).ejected and not m.breaker(m.by_name["a"]).ejected
        assert {name for name, _ in probe.calls} == {"a", "b"}
        calls = len(probe.calls)
        await asyncio.sleep(0.05)
        assert len(probe.calls) == calls  # stopped

    run(go())
