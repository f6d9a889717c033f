"""The cache's Redis tier behind Sentinel, through real processes: a master, a replica and three
sentinels (tests/redisha.py). Hits from the master the sentinels name; while the master is gone every
request is still answered; after the failover the tier reconnects to the promoted replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redisha

from .conftest import StartGateway
from .helpers import wait_for
from .test_cache import ask, outcome, redis_cache


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[redisha.RedisHA]:
    with redisha.start(tmp_path / "ha") as servers:
        yield servers


def test_the_redis_tier_follows_a_sentinel_failover(start_gateway: StartGateway, mock_port: int,
                                                     ha: redisha.RedisHA) -> None:
    # no memory tier: every hit is read from Redis
    gw = start_gateway(redis_cache(mock_port, ha.url), name="behind-sentinel")
    assert outcome(ask(gw, "before the failover")) == "miss"
    wait_for(lambda: ask(gw, "before the failover").header("x-gateway-cache") == "hit", 15,
             what="a hit from the master the sentinels name")
    old = ha.kill_master()
    for i in range(10):  # the master is gone: answered all the same (bypass or miss, never an error)
        assert outcome(ask(gw, f"during the failover {i}")) in ("bypass", "miss")
    ha.wait_promoted(old)
    # the tier reconnects to the promoted replica: entries are written there and read back
    wait_for(lambda: ask(gw, "after the failover").header("x-gateway-cache") == "hit", 30,
             what="a hit from the promoted master")
