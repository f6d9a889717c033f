"""What guardrails cost, in process: CPU per chat request, and the stream's time to first token.

    python -m bench.guard_inproc                  # 50,000 requests per case, best of 5 runs
    python -m bench.guard_inproc --requests 20000 --runs 3

CPU per request: the rig of ``bench.inproc`` (the real listener, engine and upstream pool on a uvloop loop;
fake transports on both sides; a canned chat completion as the upstream's answer), with a chat request of
a typical size (a 600-byte user message), in these cases:

    case            | config                                      | the prompt
    ----------------+---------------------------------------------+--------------------------------------
    no guard        | no [guardrails]                             | ordinary text
    guard, clean    | the typical policy: e-mail, phone, card,    | ordinary text (dates, numbers, code):
                    | IBAN, API keys masked or blocked on the way | nothing found
                    | in and out, a deny list                     |
    guard, masking  | the same                                    | the text with an e-mail and a phone
                    |                                             | number: masked, the body rewritten

Stream time to first token: the stream observer's CPU on each event of a 20-event answer until the first
content byte is released (what it adds to the time to first token beyond holding back an unfinished
word), as p50 and p99 over many streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.inproc import CONFIG, KEY, ClientTransport, Driver, _fake_upstreams, _listener_state, _loop
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.server.listener import HttpProtocol

GUARD = """
[guardrails.policies.typical]
input = { email = "mask", phone = "mask", iban = "mask", card = "block", api_key = "block" }
output = { email = "mask", card = "block", api_key = "block" }
deny = { words = ["project phoenix", "internal only", "confidential draft"], action = "block" }

[guardrails.apply]
gateway = "typical"
"""

_TEXT = ("Please summarise the meeting notes below for the release of version 2.4.1 planned on 2024-03-15. "
         "The team reviewed order 48213 and invoice INV-2024-0042, fixed the retry loop in fetch() so that "
         "x = attempts * 2 stays below 64, and agreed to ship at 10:30 after the smoke tests. Open points: "
         "the dashboard shows 99.5% uptime for March, the on-call rota changes next week, and the budget "
         "line for Q2 needs a second look before it goes to finance. Reply with three bullet points and a "
         "one-line summary, in plain English, without any tables or headings please.")
_PII = _TEXT.replace("the on-call rota", "alice.smith@example.com (+1 415-555-0132) owns the on-call rota")


def _request(content: str) -> bytes:
    body = json.dumps({"model": "mock-1", "messages": [{"role": "user", "content": content}]}).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (KEY.encode(), len(body), body)
    )


#: name -> (config, request)
CASES: dict[str, tuple[str, bytes]] = {
    "no guard": (CONFIG, _request(_TEXT)),
    "guard, clean": (CONFIG + GUARD, _request(_TEXT)),
    "guard, masking": (CONFIG + GUARD, _request(_PII)),
}


async def _run(config_text: str, request: bytes, total: int, connections: int) -> float:
    loop = asyncio.get_running_loop()
    config = load_config_text(config_text)
    engine = Engine(config, worker=0)
    await engine.startup()
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
    await engine.shutdown()
    if driver.errors:
        raise SystemExit(f"{driver.errors} responses were not 200")
    return elapsed * 1e6 / total


def measure(case: str, total: int, connections: int) -> float:
    config_text, request = CASES[case]
    loop = _loop()
    try:
        return loop.run_until_complete(_run(config_text, request, total, connections))
    finally:
        loop.close()


def _events(words: list[str]) -> list[bytes]:
    head = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    out = [head + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
    out += [head + b'"delta":{"content":"%s "},"finish_reason":null}]}\n\n' % w.encode() for w in words]
    out.append(head + b'"delta":{},"finish_reason":"stop"}]}\n\n')
    out.append(b"data: [DONE]\n\n")
    return out


def stream_ttft(streams: int) -> tuple[float, float]:
    """p50 and p99 (us) of the observer's CPU until the first content byte is released."""
    import tomllib

    import msgspec

    from gateway.guard.config import GuardPolicy
    from gateway.guard.masking import Masker
    from gateway.guard.policy import Guard
    from gateway.guard.stream import ChatStreamGuard

    policy = msgspec.convert(tomllib.loads(GUARD)["guardrails"]["policies"]["typical"], GuardPolicy)
    guard = Guard([("typical", policy)])
    events = _events(_TEXT.split()[:20])
    costs = []
    perf = time.perf_counter
    for _ in range(streams):
        observer = ChatStreamGuard(guard.output, Masker(), "bench")
        spent = 0.0
        for event in events:
            t0 = perf()
            out = observer.feed(event)
            spent += perf() - t0
            if b'"content":"' in out and b'"content":""' not in out:
                break
        costs.append(spent * 1e6)
    costs.sort()
    return costs[len(costs) // 2], costs[int(len(costs) * 0.99)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.guard_inproc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", "-n", type=int, default=50_000)
    ap.add_argument("--connections", "-c", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--streams", type=int, default=20_000)
    args = ap.parse_args(argv)
    best: dict[str, float] = {}
    for case in CASES:
        measure(case, min(args.requests, 10_000), args.connections)  # warm-up
    for _ in range(args.runs):  # interleaved: a drift of the machine touches every case alike
        for case in CASES:
            r = measure(case, args.requests, args.connections)
            best[case] = min(best.get(case, r), r)
    base = best["no guard"]
    for case, us in best.items():
        print(f"{case:<15} {us:7.2f} us CPU per request ({(us - base) / base * 100:+.1f}% over no guard)")
    p50, p99 = stream_ttft(args.streams)
    print(f"stream: observer CPU until the first content byte: p50 {p50:.1f} us, p99 {p99:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
