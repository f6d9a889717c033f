"""The request metrics and call records after their move off the request path, through real processes.

The engine hands each finished request's row to the records' hub, which counts it into the GenAI metrics
and encodes its record at the end of the loop iteration. These tests hold that nothing is lost or
delayed by that: a scrape pipelined right behind a request counts it, two workers' counts add up to
exactly the requests sent (by status), and every request's call record is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import StartGateway
from .helpers import RawClient, call_records, chat_request, gateway_toml, http_request, wait_for
from .test_metrics_export import get, samples, scrape

pytestmark = pytest.mark.timeout(120)

INTERVAL = 0.2
OK = 9
MISSING = 5


def _config(mock_port: int) -> str:
    return gateway_toml(mock_port) + f"\n[metrics]\ninterval = {INTERVAL}\n"


Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _count(values: Values, name: str, *labels: tuple[str, str]) -> float:
    """``name`` summed over the chat requests' series (the scrapes are requests too, without endpoint)."""
    return sum(v for (n, lab), v in values.items()
               if n == name and ("endpoint", "chat") in lab and all(x in lab for x in labels))


def test_a_scrape_pipelined_behind_a_request_counts_it(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(_config(mock_port))
    with RawClient(gw.port) as c:
        # one write: the scrape is read (and answered) in the same loop iteration as the request ends
        c.send(chat_request("pipelined") + http_request("GET", "/metrics"))
        first = c.read_response()
        second = c.read_response()
    assert first.status == 200, first
    values = samples(second)
    lab = {"endpoint": "chat", "dialect": "openai", "model": "chat-model", "provider": "upstream",
           "deployment": "", "status": "200", "tenant": "", "key": ""}
    assert get(values, "gateway_requests_total", **lab) == 1, values
    assert get(values, "gen_ai_client_operation_duration_seconds_count", **lab) == 1
    assert get(values, "gen_ai_client_token_usage_count", **lab, gen_ai_token_type="input") == 1


def test_two_workers_count_exactly_the_requests_sent_and_write_every_record(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    gw = start_gateway(_config(mock_port), workers=2, name="obs-cost")
    statuses = []
    for i in range(OK + MISSING):  # a new connection each: the kernel spreads them over the workers
        model = "chat-model" if i < OK else "no-such-model"
        with RawClient(gw.port) as c:
            resp = c.request(chat_request(f"count {i}", model=model, headers=[("Connection", "close")]))
        statuses.append(resp.status)
    assert statuses == [200] * OK + [404] * MISSING, statuses

    def all_counted() -> Values | None:
        values = samples(scrape(gw.port, token=None))
        return values if _count(values, "gateway_requests_total") == OK + MISSING else None

    values = wait_for(all_counted, 30.0, interval=INTERVAL, what="both workers' snapshots to count every request")
    # exactly: no request counted twice, none left behind in a worker
    for _ in range(4):
        assert _count(values, "gateway_requests_total", ("status", "200")) == OK, values
        assert _count(values, "gateway_requests_total", ("status", "404"), ("model", "no-such-model")) == MISSING
        assert _count(values, "gen_ai_client_operation_duration_seconds_count") == OK + MISSING
        assert _count(values, "gateway_overhead_seconds_count") == OK + MISSING
        # upstream time and tokens: the answered requests only (the 404s never reached an upstream)
        assert _count(values, "gen_ai_server_request_duration_seconds_count") == OK
        assert _count(values, "gen_ai_client_token_usage_count", ("gen_ai_token_type", "input")) == OK
        values = samples(scrape(gw.port, token=None))

    def chats(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rs if r["path"] == "/v1/chat/completions"]

    records = chats(call_records(gw.process, lambda rs: len(chats(rs)) >= OK + MISSING,
                                 what="every chat request's call record"))
    assert len(records) == OK + MISSING
    assert sorted(r["status"] for r in records) == [200] * OK + [404] * MISSING
    assert len({r["request_id"] for r in records}) == OK + MISSING
    assert {r["worker"] for r in records} <= {0, 1}
