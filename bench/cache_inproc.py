"""What the response cache costs a request that it cannot answer, in process (µs of CPU per request).

    python -m bench.cache_inproc                  # 100,000 requests per case, best of 5 runs
    python -m bench.cache_inproc --requests 20000 --runs 3
    python -m bench.cache_inproc --redis redis://127.0.0.1:6379/0   # and a Redis-tier hit

The rig of ``bench.inproc`` (the real listener, engine and upstream pool on a uvloop loop; fake
transports on both sides; a canned chat completion as the upstream's answer), with the same chat
request each time, in four cases:

    case              | config                                        | the request
    ------------------+-----------------------------------------------+-------------------------------
    no cache          | no [cache]                                    | plain
    miss              | [cache] on (memory tier)                      | Cache-Control: no-store: the key
                      |                                               | is computed and looked up, never
                      |                                               | found, nothing stored
    miss + store      | [cache] on, max_entry_bytes = 1               | plain: looked up, missed, the
                      |                                               | answer read for storing and
                      |                                               | refused as too large
    hit (memory)      | [cache] on                                    | plain: answered from memory
    hit (redis)       | [cache] on, memory_bytes = 0, the Redis tier  | plain: answered from Redis
                      | (only with --redis URL: a running server)     | (the server's CPU not counted)

The target for the first two: a miss costs at most 2 µs more than no cache. ``docs/performance.md``
records the figures of a quiet machine beside this command.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.inproc import (
    BODY,
    CONFIG,
    KEY,
    ClientTransport,
    Driver,
    _fake_upstreams,
    _listener_state,
    _loop,
)
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.server.listener import HttpProtocol
from gateway.server.worker import freeze_heap

CACHE = "\n[cache]\nenabled = true\nmemory_bytes = 67108864\n"
CACHE_REFUSING = CACHE + "[cache.default]\nmax_entry_bytes = 1\n"


def _request(*headers: tuple[bytes, bytes]) -> bytes:
    extra = b"".join(b"%s: %s\r\n" % h for h in headers)
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\n%sContent-Length: %d\r\n\r\n%s" % (KEY.encode(), extra, len(BODY), BODY)
    )


#: name -> (config, request)
CASES: dict[str, tuple[str, bytes]] = {
    "no cache": (CONFIG, _request()),
    "miss": (CONFIG + CACHE, _request((b"Cache-Control", b"no-store"))),
    "miss + store": (CONFIG + CACHE_REFUSING, _request()),
    "hit (memory)": (CONFIG + CACHE, _request()),
}


def _redis_case(url: str) -> tuple[str, bytes]:
    section = f'\n[cache]\nenabled = true\nmemory_bytes = 0\nredis = true\nredis_url = "{url}"\n'
    return CONFIG + section, _request()


def _check(case: str, engine: Engine, total: int, connections: int) -> None:
    """The case measured what it says: misses are misses, hits are hits (SystemExit otherwise)."""
    cache = engine.cache
    if case == "no cache":
        ok = cache is None
    else:
        assert cache is not None
        st = cache.stats
        hits = st.hits_memory + st.hits_redis
        ok = hits == 0 if case.startswith("miss") else hits >= total - 2 * connections
        if case == "miss + store":
            ok = ok and st.too_large > 0
    if not ok:
        raise SystemExit(f"case {case!r} did not measure what it says")


async def _run(config_text: str, request: bytes, total: int, connections: int, case: str = "") -> float:
    loop = asyncio.get_running_loop()
    config = load_config_text(config_text)
    engine = Engine(config, worker=0)
    await engine.startup()
    freeze_heap()  # as a worker does once started (gateway.server.worker.serve_app)
    driver = Driver(loop, total, 0, request)
    _fake_upstreams(engine, driver.pieces, connections)
    state = _listener_state(engine, config)
    clients = []
    for _ in range(connections):
        tr = ClientTransport(driver)
        proto = HttpProtocol(state)
        tr.protocol = proto
        proto.connection_made(tr)
        clients.append(proto)
    t0 = time.process_time()
    for proto in clients:
        driver.sent += 1
        proto.data_received(driver.request)
    await driver.done
    elapsed = time.process_time() - t0
    for proto in clients:
        proto.connection_lost(None)
    await asyncio.sleep(0)
    if case:
        _check(case, engine, total, connections)
    await engine.shutdown()
    if driver.errors:
        raise SystemExit(f"{driver.errors} responses were not 200")
    return elapsed * 1e6 / total


def measure(case: str, total: int, connections: int) -> float:
    config_text, request = CASES[case]
    loop = _loop()
    try:
        return loop.run_until_complete(_run(config_text, request, total, connections, case))
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cache_inproc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", "-n", type=int, default=100_000)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--redis", metavar="URL", help="also measure a Redis-tier hit, on this server")
    args = ap.parse_args(argv)
    if args.redis:
        CASES["hit (redis)"] = _redis_case(args.redis)
    best: dict[str, float] = {}
    for case in CASES:
        measure(case, min(args.requests, 20_000), args.connections)  # warm-up
    for _ in range(args.runs):  # interleaved: a drift of the machine touches every case alike
        for case in CASES:
            r = measure(case, args.requests, args.connections)
            best[case] = min(best.get(case, r), r)
    base = best["no cache"]
    for case, us in best.items():
        print(f"{case:<14} {us:7.2f} us CPU per request ({us - base:+.2f} us over no cache)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
