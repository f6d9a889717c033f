"""What guardrails add to a stream's time to first token, through real processes.

    python -m bench.guard_ttft [--streams 1000] [--delays 0,20] [--policy typical|shaped] [--json PATH]
                               [--quick]

One mock upstream and two gateways (one worker each, call records on, as a deployment runs them): one
without ``[guardrails]``, one with the typical policy of ``bench.guard_inproc`` (e-mail masked in answers,
cards and API keys refused, a deny list), or with ``--policy shaped`` one of detectors that find numbers
and IBANs only (cards refused, phone numbers and IBANs masked, both ways). Each stream asks the mock for
8 content events ``DELAY`` ms apart (``!mock chunk_delay_ms=DELAY``); the figure is the time from sending
the request to the first event with visible content, p50 and p99 over ``--streams`` streams per target,
the targets alternated stream by stream so that a drift of the machine touches both alike.

With ``DELAY`` 0 (events back to back) the difference is what the guard's window costs; with events
apart, the window also holds a word that the first event leaves unfinished until the next event says
whether it goes on (it could be the start of an e-mail address): that is one event's interval, by design
(see docs/guardrails.md, *Streams*).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.configs import BENCH_KEY
from bench.guard_inproc import GUARD
from bench.procs import HOST, Service, free_ports, start_service, terminate_as_exit, wait_ready

#: --policy shaped: detectors whose findings the window holds by their shape, not as unfinished words
SHAPED = """
[guardrails.policies.shaped]
input = { phone = "mask", iban = "mask", card = "block" }
output = { phone = "mask", iban = "mask", card = "block" }

[guardrails.apply]
gateway = "shaped"
"""

__all__ = ["main", "measure_streams"]

_CONFIG = """
[server]
host = "{host}"
port = {port}
workers = 1

[log]
level = "warning"

[providers.upstream]
type = "openai"
base_url = "http://{host}:{mock}/v1"
api_key = "env:BENCH_KEY"

[models.mock-1]
provider = "upstream"
"""


def _body(delay_ms: int) -> bytes:
    prompt = f"!mock chunk_delay_ms={delay_ms} chunks=8 Summarise the release notes in a few words."
    return json.dumps({"model": "mock-1", "stream": True,
                       "messages": [{"role": "user", "content": prompt}]}).encode()


def first_content_ms(port: int, body: bytes, timeout: float = 10.0) -> float:
    """Milliseconds from sending the request to the first stream event with visible content (the stream
    is read to its ``[DONE]``)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body,
                     {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
        seen: float | None = None
        while True:
            line = resp.fp.readline()  # the raw chunked body: chunk sizes and events' lines
            if not line or line.startswith(b"data: [DONE]"):
                break
            if seen is None and b'"content":"' in line and b'"content":""' not in line:
                seen = (time.perf_counter() - t0) * 1000.0
        if seen is None:
            raise RuntimeError("the stream had no content")
        return seen
    finally:
        conn.close()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure_streams(ports: dict[str, int], delay_ms: int, streams: int) -> dict[str, dict[str, float]]:
    body = _body(delay_ms)
    got: dict[str, list[float]] = {name: [] for name in ports}
    for port in ports.values():  # one stream each first: connections and caches warm
        first_content_ms(port, body)
    for i in range(streams):
        order = list(ports.items()) if i % 2 == 0 else list(reversed(ports.items()))
        for name, port in order:
            got[name].append(first_content_ms(port, body))
    return {name: {"p50_ms": _pct(v, 0.5), "p99_ms": _pct(v, 0.99), "streams": len(v)}
            for name, v in got.items()}


def _start(tmp: Path, policy: str) -> tuple[list[Service], dict[str, int]]:
    mock_port, off_port, on_port = free_ports(3)
    services = [start_service("mock", [sys.executable, "-m", "gateway", "mock", "--host", HOST, "--port",
                                       str(mock_port), "-q"], tmp)]
    env = {**os.environ, "BENCH_KEY": BENCH_KEY}
    ports = {"guard-off": off_port, "guard-on": on_port}
    for name, port in ports.items():
        text = _CONFIG.format(host=HOST, port=port, mock=mock_port) + (
            (SHAPED if policy == "shaped" else GUARD) if name == "guard-on" else "")
        path = tmp / f"{name}.toml"
        path.write_text(text)
        services.append(start_service(name, [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                                      tmp, env=env))
    wait_ready(services[0], mock_port, "/healthz")
    for svc, port in zip(services[1:], ports.values(), strict=True):
        wait_ready(svc, port, "/readyz")
    return services, ports


def format_table(result: dict[str, Any]) -> str:
    lines = ["time to first content, through real processes (mock upstream, 8 events per stream), "
             f"policy {result.get('policy', 'typical')}", "",
             f"{'events apart':>12}  {'target':<10} {'p50':>9} {'p99':>9}"]
    for row in result["delays"]:
        for name in ("guard-off", "guard-on"):
            r = row["targets"][name]
            lines.append(f"{row['delay_ms']:>10} ms  {name:<10} {r['p50_ms']:>6.2f} ms "
                         f"{r['p99_ms']:>6.2f} ms")
        lines.append(f"{'':>12}  guard adds p50 {row['added_p50_ms']:+.2f} ms, "
                     f"p99 {row['added_p99_ms']:+.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.guard_ttft", description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--delays", default="0,20", help="ms between the mock's events, comma-separated")
    ap.add_argument("--policy", choices=("typical", "shaped"), default="typical")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="20 streams, events back to back (a harness check)")
    args = ap.parse_args(argv)
    delays = [0] if args.quick else [int(d) for d in args.delays.split(",") if d.strip()]
    streams = 20 if args.quick else args.streams
    result: dict[str, Any] = {"streams": streams, "policy": args.policy, "delays": []}
    with terminate_as_exit(), tempfile.TemporaryDirectory(prefix="bench-guard-ttft-") as tmp:
        services, ports = _start(Path(tmp), args.policy)
        try:
            for delay in delays:
                targets = measure_streams(ports, delay, streams)
                result["delays"].append({
                    "delay_ms": delay, "targets": targets,
                    "added_p50_ms": targets["guard-on"]["p50_ms"] - targets["guard-off"]["p50_ms"],
                    "added_p99_ms": targets["guard-on"]["p99_ms"] - targets["guard-off"]["p99_ms"],
                })
        finally:
            for svc in services:
                svc.stop()
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
