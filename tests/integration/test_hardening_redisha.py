"""Redis that fails over: a master killed under the gateway's feet, behind Sentinel and in a Redis Cluster.

Real servers only (``tests/redisha.py``: a master, replicas and three sentinels; or a cluster made with
``redis-cli --cluster create``), real ``gateway serve`` processes in front of the standalone mock. What
``docs/keys-and-tenants.md`` and ``docs/limits-and-budgets.md`` promise through a failover:

- requests keep being answered, within the fail mode (``fail_open`` here: local limits at each worker's
  share) while no master is reachable; keys authenticate from each worker's table meanwhile;
- the store, the limits and the breaker sync reconnect to the promoted master by themselves (they ask
  Sentinel, or read the cluster's slot map again), without a restart;
- a write the store (and the admin API) answered was on a replica first (``[store] min_replicas_acked``,
  WAIT), so the promotion does not lose it; one the lagging replica did not confirm is answered 503;
- on a cluster, a planned failover (MOVED) costs the limits no failed call, and a seed node that never
  answers does not keep them from the others.

No timing is asserted: each wait has a deadline, generous for a loaded two-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
import redisha
import redisproc

from gateway.auth import digest, generate
from gateway.limits.budgets import utc_period
from gateway.limits.shared import Op, SharedStateUnavailable
from gateway.limits.shared_redis import RedisLeaseSource
from gateway.routing.sync import BreakerEvent, RedisSyncTransport
from gateway.store import open_store
from gateway.store.base import NotFound, Store, StoreUnavailable

from .conftest import Gateway, StartGateway
from .helpers import (
    RawClient,
    Response,
    assert_openai_error,
    chat_request,
    free_port,
    gateway_toml,
    http_request,
    http_status,
    wait_for,
)

#: seconds allowed for Sentinel (or the cluster) to notice the kill and promote a replica, and for the
#: gateway's parts to find the new master: several times what it takes on an idle machine
RECOVERY = 60.0
#: the tight policy: requests per minute, one lease each (exact across workers)
TIGHT = 6
#: the budget (USD a day), and the completion each request asks for (what it reserves)
BUDGET_USD = 0.02
MAX_TOKENS = 50
#: what a Redis call raises while no master answers
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _require_servers() -> None:
    try:
        redisproc.find_binary()
    except RuntimeError as exc:
        pytest.skip(f"needs redis-server (apt-get install -y redis-server redis-sentinel): {exc}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_store(url: str, fn: Callable[[Store], Any], **options: Any) -> Any:
    from gateway.store import StoreOptions

    store = await open_store(StoreOptions(url=url, **options))
    try:
        return await fn(store)
    finally:
        await store.close()


def make_key(url: str, tenant: str, acked: int | None = None, **fields: Any) -> tuple[str, str]:
    """A new key of ``tenant`` (made if need be) in the store at ``url``, confirmed by ``acked`` replicas
    (None: the default): (full key, key id)."""
    full, key_id, secret = generate()

    async def body(store: Store) -> None:
        try:
            await store.get_tenant(tenant)
        except NotFound:
            await store.create_tenant(tenant)
        await store.create_key(key_id=key_id, tenant=tenant, name="failover", digest=digest(secret, b""), **fields)

    run(_with_store(url, body, min_replicas_acked=acked))
    return full, key_id


def ask(port: int, key: str, **extra: Any) -> Response:
    with RawClient(port) as c:  # a new connection each time: the kernel spreads them over the workers
        return c.request(
            chat_request("hello there", headers=[("Connection", "close"), ("Authorization", f"Bearer {key}")], **extra)
        )


def metric(port: int, name: str) -> float:
    """The sum of a metric's samples on ``/metrics`` (0 when absent)."""
    with RawClient(port) as c:
        body = c.request(http_request("GET", "/metrics", headers=[("Connection", "close")])).body.decode()
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gateway_config(mock_port: int, store_url: str, store_extra: str = "") -> str:
    return gateway_toml(mock_port) + f"""
[auth]
required = true

[store]
url = "{store_url}"
poll_interval = 0.2
{store_extra}

[limits]
default_policy = "roomy"

[limits.policies.roomy]
requests_per_second = 1000

[limits.policies.strict]
requests_per_second = 1000
fail_mode = "fail_closed"

[limits.policies.tight]
requests_per_minute = {TIGHT}
lease = 1

[limits.budgets.small]
usd_per_day = {BUDGET_USD}
action = "block"

[pricing."mock-1"]
input = 100.0
output = 100.0
"""


class Load:
    """A few threads calling the gateway with one key until stopped (at most ``per_thread`` calls each),
    paced so that a few hundred calls cover a failover; every answer (or failure to get one) is kept."""

    def __init__(self, port: int, key: str, threads: int = 4, per_thread: int = 200, pause: float = 0.05) -> None:
        self.port, self.key, self.per_thread, self.pause = port, key, per_thread, pause
        self.answers: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        for _ in range(self.per_thread):
            if self._stop.is_set():
                return
            try:
                answer = ask(self.port, self.key)
                outcome: int | str = answer.status
                if answer.status != 200:
                    outcome = f"{answer.status} {answer.json()['error']['code']}"
            except OSError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.answers.append((time.monotonic(), outcome))
            self._stop.wait(self.pause)  # pacing, not synchronisation

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def more_after(self, at: float, n: int = 20) -> bool:
        """``n`` more answers came after ``at`` (or every thread is done: ``after`` says how many)."""
        return self.after(at) >= n or not any(t.is_alive() for t in self._threads)

    def after(self, at: float) -> int:
        with self._lock:
            return sum(1 for when, _ in self.answers if when >= at)


def admitted_of(port: int, key: str, n: int) -> list[int]:
    with ThreadPoolExecutor(4) as pool:
        return [r.status for r in pool.map(lambda _: ask(port, key), range(n))]


def spend_until_blocked(port: int, key: str) -> list[Response]:
    """Calls with ``key`` until its budget refuses for good (429 insufficient_quota, not to be retried)."""
    answers: list[Response] = []
    while True:
        answers.append(last := ask(port, key, max_tokens=MAX_TOKENS))
        if last.status == 429 and last.header("x-should-retry") == "false":
            return answers
        assert last.status in (200, 429), last
        assert len(answers) < 200, last.body


# -- Sentinel --------------------------------------------------------------------------------------------


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[redisha.RedisHA]:
    """A master, two replicas (one failover leaves one to acknowledge writes) and three sentinels."""
    _require_servers()
    with redisha.start(tmp_path / "redis-ha", replicas=2) as servers:
        yield servers


def test_a_gateway_on_sentinel_rides_out_a_master_kill_under_load(
    start_gateway: StartGateway, mock_port: int, ha: redisha.RedisHA
) -> None:
    url = ha.url
    key, key_id = make_key(url, "acme")
    gw: Gateway = start_gateway(gateway_config(mock_port, url), workers=2, name="sentinel")
    wait_for(lambda: ask(gw.port, key).status == 200, 10.0, what="the key made before the failover")

    strict, _ = make_key(url, "strict", limit_policy="strict")
    with Load(gw.port, key) as load, Load(gw.port, strict, threads=2) as closed:
        wait_for(lambda: load.count() >= 40, 30.0, what="the load to be under way")
        old = ha.kill_master()
        killed_at = time.monotonic()
        ha.wait_promoted(old, timeout=RECOVERY)
        # the limits' clients of both workers went to fail_open and came back on the new master
        wait_for(lambda: metric(gw.port, "gateway_limits_degraded_total") >= 1, RECOVERY,
                 what="the limits to notice the lost master")
        wait_for(lambda: metric(gw.port, "gateway_limits_degraded_workers") == 0, RECOVERY,
                 what="every worker's limits back on the shared state")
        recovered_at = time.monotonic()
        wait_for(lambda: load.more_after(recovered_at), 60.0, what="more load after the recovery")
    assert load.after(killed_at) and load.after(recovered_at), "no request was sent after the kill"
    # fail_open: every request answered, admitted by the key table every worker holds and local limits
    assert all(outcome == 200 for _, outcome in load.answers), sorted({str(o) for _, o in load.answers})
    assert len(load.answers) <= 4 * 200
    # fail_closed: admitted, or refused with 503 limits_unavailable while no master answers (leases
    # held before the kill still admit until they expire), never anything else
    outcomes = {o for _, o in closed.answers}
    assert outcomes <= {200, "503 limits_unavailable"}, outcomes
    assert closed.after(recovered_at), "no fail_closed request after the recovery"

    # the key made before the failover is on the promoted master, and still authenticates
    got = run(_with_store(url, lambda store: store.get_key(key_id)))
    assert got.id == key_id
    assert ask(gw.port, key).status == 200
    # the store's watchers follow the new master: a key made now reaches every worker (the key's write
    # waits for a replica's acknowledgement: the surviving replica must be online on the new master first)
    ha.wait_replicas_online(1, timeout=RECOVERY)
    fresh, _ = make_key(url, "acme")
    wait_for(lambda: all(ask(gw.port, fresh).status == 200 for _ in range(6)), RECOVERY,
             what="a key made after the failover to work on every worker")
    # limits enforce on the new master: exactly the policy's count, the rest 429
    tight, _ = make_key(url, "tight", limit_policy="tight")
    statuses = admitted_of(gw.port, tight, 3 * TIGHT)
    assert TIGHT <= statuses.count(200) <= TIGHT + 1, statuses
    assert statuses.count(200) + statuses.count(429) == len(statuses), statuses
    # the budget too: spent on the new master until it refuses, and the spend is in the store
    thrifty, _ = make_key(url, "thrifty", budget="small")
    answers = spend_until_blocked(gw.port, thrifty)
    assert [a for a in answers if a.status == 200], [a.status for a in answers]
    gw.process.stop()  # SIGTERM: the spend still in memory is written
    day = utc_period(time.time())[0]
    spent = run(_with_store(url, lambda store: store.get_spend("key", _key_id(thrifty), day)))
    assert 0.0 < spent <= BUDGET_USD + 1e-9, spent


def _key_id(full: str) -> str:
    return full.split("-")[1]


def test_the_store_limits_and_breaker_sync_follow_the_promoted_master(ha: redisha.RedisHA) -> None:
    """Each part, straight: unavailable while no master answers (the caller's fail mode applies), then
    back on the new master by itself: same objects, no restart."""

    async def scenario() -> None:
        url = ha.url
        store = await open_store(url)
        source = await RedisLeaseSource.open(url, timeout=0.5)
        sync = await RedisSyncTransport.open(url)
        peer = await RedisSyncTransport.open(url)
        try:
            await store.create_tenant("before")
            op = Op("acquire", "failover-limit", 0.001, 3.0, 1.0, 1.0)  # no refill to speak of
            assert (await source.batch([op], time.monotonic()))[0].granted == 1.0
            await peer.snapshot()  # subscribed
            old = ha.kill_master()
            await asyncio.get_running_loop().run_in_executor(None, ha.wait_promoted, old, RECOVERY)

            deadline = time.monotonic() + RECOVERY
            while not await source.ping():
                assert time.monotonic() < deadline, "the limits never reached the new master"
                await asyncio.sleep(0.1)
            # the bucket was replicated: two units left of three, then refused
            grants = await source.batch([op, op, op], time.monotonic())
            assert [g.granted for g in grants] == [1.0, 1.0, 0.0]

            await _eventually(lambda: store.get_tenant("before"))
            await _eventually(lambda: store.create_tenant("after"))
            # breaker changes published on the new master reach the peer by pub/sub: its subscription died
            # with the old master (its next call raises), the call after subscribes on the new one
            received: list[BreakerEvent] = []
            while not received:
                assert time.monotonic() < deadline, "no breaker change came through after the failover"
                event = BreakerEvent(deployment="d1", state="open", until=None, at=time.time(), origin="other")
                await _eventually(lambda event=event: sync.publish([event]))
                with contextlib.suppress(*REDIS_DOWN):
                    received = await peer.receive(0.5)
            assert received[-1].deployment == "d1"
            assert received[-1] in await peer.snapshot()
        finally:
            for part in (store, source, sync, peer):
                await part.close()

    run(scenario())


async def _eventually(call: Callable[[], Any], timeout: float = RECOVERY) -> Any:
    """``await call()`` until it stops failing with the store or Redis unavailable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except (StoreUnavailable, *REDIS_DOWN):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("min_replicas_acked", [None, 1])
def test_a_write_the_store_answered_survives_the_failover(tmp_path: Path, min_replicas_acked: int | None) -> None:
    """The replica's link lags (its master's stream held in a relay): a write made then is not confirmed
    by the replica, so the store must not answer it as done; the master dies with it, and every write
    that was answered is on the promoted replica. (None: the default behind Sentinel.)"""
    _require_servers()
    with redisha.start(tmp_path / "redis-ha", replicas=1, lag_proxy=True) as servers:

        async def scenario() -> tuple[list[str], list[str]]:
            answered: list[str] = []
            refused: list[str] = []
            store = await open_store_with(servers.url, min_replicas_acked)
            try:
                await store.create_tenant("acme")
                answered.append("tenant:acme")
                servers.proxies[0].hold()
                for n in range(3):
                    try:
                        await store.create_tenant(f"lagging-{n}")
                    except StoreUnavailable:
                        refused.append(f"tenant:lagging-{n}")
                    else:
                        answered.append(f"tenant:lagging-{n}")
            finally:
                await store.close()
            return answered, refused

        answered, refused = run(scenario())
        old = servers.kill_master()
        servers.proxies[0].drop()
        servers.wait_promoted(old, timeout=RECOVERY)

        async def present() -> list[str]:
            store = await open_store(servers.url)
            try:
                found = []
                for name in answered:
                    try:
                        await _eventually(lambda name=name: store.get_tenant(name.split(":", 1)[1]))
                        found.append(name)
                    except NotFound:
                        pass
                return found
            finally:
                await store.close()

        assert run(present()) == answered, (answered, refused)
        assert refused == [f"tenant:lagging-{n}" for n in range(3)]


async def open_store_with(url: str, min_replicas_acked: int | None) -> Store:
    from gateway.store import StoreOptions

    return await open_store(StoreOptions(url=url, min_replicas_acked=min_replicas_acked, replica_ack_timeout=0.5))


# -- Redis Cluster ---------------------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[redisha.RedisCluster]:
    """Three masters with a replica each: killing one master promotes its replica."""
    _require_servers()
    if redisha.cluster_cli() is None:
        pytest.skip("needs redis-cli to create a cluster (apt-get install -y redis-tools)")
    with redisha.start_cluster(tmp_path / "redis-cluster", masters=3, replicas=1) as servers:
        yield servers


def test_a_gateway_on_redis_cluster_keeps_keys_limits_and_budgets_through_a_failover(
    start_gateway: StartGateway, mock_port: int, cluster: redisha.RedisCluster
) -> None:
    url = cluster.url
    # each master has a replica: a record write waits for it (on a cluster the default is not to)
    key, key_id = make_key(url, "acme", acked=1)
    gw = start_gateway(gateway_config(mock_port, url, "min_replicas_acked = 1"), workers=2, name="cluster")
    wait_for(lambda: ask(gw.port, key).status == 200, 10.0, what="the key made before the failover")
    # limits on the cluster, before: exact across the two workers
    tight, _ = make_key(url, "tight", acked=1, limit_policy="tight")
    statuses = admitted_of(gw.port, tight, 2 * TIGHT)
    assert TIGHT <= statuses.count(200) <= TIGHT + 1, statuses

    # kill the master that serves the store's records ({gw}); its replica takes over
    victim = cluster.master_of("{gw}")
    with Load(gw.port, key) as load:
        wait_for(lambda: load.count() >= 40, 30.0, what="the load to be under way")
        victim.process.kill()
        victim.process.wait(timeout=10)
        killed_at = time.monotonic()
        cluster.wait_promoted("{gw}", victim, timeout=RECOVERY)
        promoted_at = time.monotonic()
        wait_for(lambda: load.more_after(promoted_at), 60.0, what="more load after the promotion")
    assert load.after(killed_at) and load.after(promoted_at), "no request was sent after the kill"
    assert all(outcome == 200 for _, outcome in load.answers), sorted({str(o) for _, o in load.answers})

    assert run(_with_store(url, lambda store: store.get_key(key_id))).id == key_id
    # the dead master comes back as a replica of its successor: record writes are confirmed again
    cluster.restart(victim)
    cluster.wait_replicas_linked(timeout=RECOVERY)
    fresh, _ = make_key(url, "acme", acked=1)
    wait_for(lambda: all(ask(gw.port, fresh).status == 200 for _ in range(6)), RECOVERY,
             what="a key made after the failover to work on every worker")
    wait_for(lambda: metric(gw.port, "gateway_limits_degraded_workers") == 0, RECOVERY,
             what="every worker's limits back on the shared state")
    tighter, _ = make_key(url, "tighter", acked=1, limit_policy="tight")
    statuses = admitted_of(gw.port, tighter, 3 * TIGHT)
    assert TIGHT <= statuses.count(200) <= TIGHT + 1, statuses
    thrifty, _ = make_key(url, "thrifty", acked=1, budget="small")
    answers = spend_until_blocked(gw.port, thrifty)
    assert [a for a in answers if a.status == 200], [a.status for a in answers]


def test_the_limits_follow_a_planned_cluster_failover_without_a_failed_call(cluster: redisha.RedisCluster) -> None:
    """``CLUSTER FAILOVER`` on a replica swaps it with its master, which stays up and answers MOVED for
    the slots it gave away: the limits read the slot map again and send the call to the new master, in
    the same round trip, instead of falling back to the fail mode."""
    limit_key = "planned"
    bucket = "{gw:lim:" + limit_key + "}"
    old = cluster.master_of(bucket)
    successor = cluster.replica_of(old)

    async def scenario() -> None:
        source = await RedisLeaseSource.open(cluster.url)
        try:
            op = Op("acquire", limit_key, 0.001, 3.0, 1.0, 1.0)  # no refill to speak of
            assert (await source.batch([op], time.monotonic()))[0].granted == 1.0
            await asyncio.get_running_loop().run_in_executor(None, cluster.planned_failover, successor)
            grants = await source.batch([op, op, op], time.monotonic())
            assert [g.granted for g in grants] == [1.0, 1.0, 0.0]
            assert source.healthy
        finally:
            await source.close()

    run(scenario())
    assert cluster.master_of(bucket, asked=successor) is successor


def test_the_limits_find_the_cluster_past_a_seed_node_that_never_answers(cluster: redisha.RedisCluster) -> None:
    """The first seed node of the URL takes connections and never replies (a hung host): the slot map
    comes from the others, asked at the same time, well within the round trip's time."""
    with socket.create_server((redisproc.HOST, 0)) as silent:  # the kernel accepts; nothing ever answers
        hung = f"{redisproc.HOST}:{silent.getsockname()[1]}"
        url = f"redis+cluster://{hung}," + cluster.url.partition("://")[2]

        async def scenario() -> None:
            source = await RedisLeaseSource.open(url, timeout=0.5)
            try:
                assert source.healthy
                op = Op("acquire", "past-a-hung-seed", 0.001, 2.0, 1.0, 1.0)
                grants = await source.batch([op, op, op], time.monotonic())
                assert [g.granted for g in grants] == [1.0, 1.0, 0.0]
            finally:
                await source.close()

        run(scenario())


OPERATOR = "operator-token-for-the-failover-tests"


def admin_call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Response:
    data = json.dumps(body).encode() if body is not None else None
    headers = [("Connection", "close"), ("Authorization", f"Bearer {OPERATOR}")]
    with RawClient(port, timeout=20.0) as c:
        return c.request(http_request(method, path, data, headers=headers))


def test_the_admin_api_answers_a_write_only_once_a_replica_has_it(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    """Through the admin API of a real gateway: while the replica lags, a tenant's creation is answered
    503 ``store_unavailable`` (applied on the master, not confirmed); the master dies, the replica is
    promoted, and every creation that was answered 201 is there."""
    _require_servers()
    with redisha.start(tmp_path / "redis-ha", replicas=1, lag_proxy=True) as servers:
        admin_port = free_port()
        text = gateway_config(mock_port, servers.url) + (
            f'\n[admin]\nport = {admin_port}\noperator_token = "{digest(OPERATOR, b"")}"\n'
        )
        start_gateway(text, workers=1, name="admin-failover")
        wait_for(lambda: http_status(admin_port, "/admin/healthz") == 200, 30.0, what="the admin API")

        answered = []
        created = admin_call(admin_port, "POST", "/admin/v1/tenants", {"id": "acme"})
        assert created.status == 201, created
        answered.append("acme")
        servers.proxies[0].hold()
        lagging = admin_call(admin_port, "POST", "/admin/v1/tenants", {"id": "lagging"})
        if lagging.status == 201:
            answered.append("lagging")
        assert_openai_error(lagging, 503, "store_unavailable")
        assert "confirmed by 0 of 1 replica" in lagging.json()["error"]["message"]

        old = servers.kill_master()
        servers.proxies[0].drop()
        servers.wait_promoted(old, timeout=RECOVERY)
        for tenant in answered:
            wait_for(lambda tenant=tenant: admin_call(admin_port, "GET", f"/admin/v1/tenants/{tenant}").status != 503,
                     RECOVERY, what="the admin API on the promoted master")
            found = admin_call(admin_port, "GET", f"/admin/v1/tenants/{tenant}")
            assert found.status == 200, (tenant, found)


def test_a_failed_script_load_does_not_leave_the_limits_reading_stale_replies(tmp_path: Path) -> None:
    """A promoted replica that never saw the scripts answers NOSCRIPT; if loading them then fails (here:
    an ACL that forbids SCRIPT LOAD), the round trip fails with replies still unread. The next round trip
    must not read those: once the script is there, the answers are right again."""
    _require_servers()
    with redisproc.start(tmp_path / "redis") as server:
        admin = redis.Redis(port=server.port)
        admin.execute_command("ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-script|load")
        admin.execute_command("SCRIPT", "FLUSH")

        async def scenario() -> None:
            source = RedisLeaseSource(f"redis://limited:pw@{redisproc.HOST}:{server.port}/0", timeout=2.0)
            try:
                op = Op("acquire", "reload", 0.001, 3.0, 1.0, 1.0)
                with pytest.raises(SharedStateUnavailable, match="SCRIPT LOAD"):
                    await source.batch([op, op], time.monotonic())
                from gateway.limits.shared_redis import BUCKET_SCRIPT

                admin.script_load(BUCKET_SCRIPT)
                grants = await source.batch([op, op, op, op], time.monotonic())
                assert [g.granted for g in grants] == [1.0, 1.0, 1.0, 0.0]
                assert await source.ping()
            finally:
                await source.close()
                admin.close()

        run(scenario())
