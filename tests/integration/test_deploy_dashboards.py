"""``deploy/``'s Grafana dashboard and Prometheus alerting rules name only metrics a real gateway exports:
a ``gateway serve`` with every subsystem the panels show (keys, limits and budgets, the response cache, a
routed model, streams, the anomaly signal) takes traffic, and its ``/metrics`` answer must hold every
series the dashboard's and the rules' expressions use (histograms by their ``_bucket``/``_sum`` series)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import yaml

from gateway.auth import digest, format_key

from .conftest import StartGateway
from .helpers import HOST, children_of, gateway_toml, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KEY_ID = "metricskeyaa"
SECRET = "M" * 43
KEY = format_key(KEY_ID, SECRET)
#: series of Prometheus itself, not of the gateway; label names the pattern also matches
NOT_METRICS = {"up", "gen_ai_token_type"}
_NAME = re.compile(r"\b((?:gateway|gen_ai)_[a-z0-9_]+|up)\b")


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "llm-gateway.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def used_names() -> set[str]:
    return {m for e in dashboard_exprs() + rule_exprs() for m in _NAME.findall(e)} - NOT_METRICS


def config(mock_port: int, store: Path) -> str:
    return gateway_toml(mock_port, extra_models="""
[models.routed]
[[models.routed.deployments]]
provider = "upstream"
upstream_model = "mock-1"
""") + f"""
[auth]
required = true

[[auth.keys]]
id = "{KEY_ID}"
digest = "{digest(SECRET, b'')}"
tenant = "acme"

[tenants.acme]
budget = "team"

[store]
url = "sqlite://{store}"

[limits]
default_policy = "standard"
[limits.policies.standard]
requests_per_minute = 100000
[limits.budgets.team]
usd_per_day = 1000.0

[pricing."mock-1"]
input = 1.0
output = 2.0

[cache]
enabled = true
[cache.default]
enabled = false
[cache.models."chat-model"]
enabled = true

[anomaly]
enabled = true
window = 0.3
warmup = 1
min_requests = 10
min_rate = 0.001

[metrics]
interval = 0.2
"""


def test_every_metric_the_dashboard_and_the_alerts_use_is_exported(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    names = used_names()
    assert len(names) > 25  # the expressions were read
    gw = start_gateway(config(mock_port, tmp_path / "gateway.db"), workers=2)
    url = f"http://{HOST}:{gw.port}"
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=30.0, headers=auth) as http:
        def chat(model: str, **extra: object) -> httpx.Response:
            return http.post(f"{url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "dashboards"}], **extra})

        # a worker killed and replaced by the supervisor (gateway_worker_restarts_total)
        workers = children_of(gw.pid)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(children_of(gw.pid) - {victim}) >= len(workers), 30.0, what="a new worker")
        assert chat("chat-model").status_code == 200
        assert chat("chat-model").status_code == 200  # a cache hit
        assert chat("routed", temperature=0.5).status_code == 200
        stream = chat("mock-1", stream=True, max_tokens=16)
        assert stream.status_code == 200 and b"[DONE]" in stream.content
        assert chat("no-such-model").status_code == 404
        # the anomaly signal: one request, quiet windows (its key's baseline: paced by the clock, the
        # detector's windows are time), then bursts far above it
        assert chat("routed", temperature=0.2).status_code == 200
        quiet = time.monotonic() + 4 * 0.3
        wait_for(lambda: time.monotonic() > quiet or None, 10.0, what="quiet windows")

        def metrics() -> str | None:
            for _ in range(30):
                chat("routed", temperature=0.1)
            text = http.get(f"{url}/metrics").text
            exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                        if line and not line.startswith("#")}
            return text if names <= exported else None

        try:
            wait_for(metrics, 30.0, what="every metric of the dashboard and the rules in /metrics")
        except AssertionError:
            text = http.get(f"{url}/metrics").text
            exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                        if line and not line.startswith("#")}
            raise AssertionError(f"not exported: {sorted(names - exported)}") from None
