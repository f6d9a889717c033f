"""``python -m bench.dialects``: the rows, the fast upstream's canned answers and their routing, the
generated configs, the recorder, the translation figures' parsing and the summary; one ``--quick`` run of
three rows (skipped without nginx or wrk). The harness, never the figures: no timing is asserted."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import dialects  # noqa: E402
from bench.configs import gateway_key_digest  # noqa: E402
from bench.procs import HOST, free_ports  # noqa: E402

needs_tools = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("wrk") is None,
    reason="needs nginx and wrk (apt-get install -y nginx wrk)",
)


def test_rows_carry_the_issues_bars() -> None:
    bars = {name: (row.bar, row.issue) for name, row in dialects.ROWS.items()}
    assert bars == {
        "chat": (None, None),
        "chat-anthropic": (0.5, 15),
        "chat-gemini": (0.5, 16),
        "chat-bedrock": (0.5, 16),
        "messages": (0.6, 17),
        "messages-openai": (0.5, 17),
        "responses": (None, None),
        "chat-stream": (None, None),
        "chat-anthropic-stream": (0.5, 15),
        "chat-gemini-stream": (0.5, 16),
        "chat-bedrock-stream": (0.5, 16),
        "messages-stream": (0.6, 17),
        "messages-openai-stream": (0.5, 17),
        "responses-stream": (None, None),
    }
    for row in dialects.ROWS.values():
        body = json.loads(row.body)
        assert body["model"], row.name
        assert body.get("stream", False) is row.name.endswith("-stream"), row.name
        assert row.path in ("/v1/chat/completions", "/v1/messages", "/v1/responses")


@pytest.mark.parametrize(("path", "wire"), [
    ("/v1/chat/completions", "openai"),
    ("/v1/messages", "anthropic"),
    ("/v1beta/models/gemini-bench:generateContent", "gemini"),
    ("/v1beta/models/gemini-bench:generateContent?alt=json", "gemini"),
    ("/model/bedrock-bench/converse", "bedrock"),
    ("/sse/v1/chat/completions", "openai-stream"),
    ("/sse/v1/messages", "anthropic-stream"),
    ("/v1beta/models/gemini-bench:streamGenerateContent?alt=sse", "gemini-stream"),
    ("/model/bedrock-bench/converse-stream", "bedrock-stream"),
])
def test_each_upstream_path_gets_its_wire_format(path: str, wire: str) -> None:
    kind = dialects.CONTENT_TYPES.get(wire, "application/json")
    assert dialects.answer_for(path) == (kind, dialects.UPSTREAM_ANSWERS[wire])


@pytest.mark.parametrize("path", ["/v1/embeddings", "/model/x/invoke", "/v1/messages/count_tokens"])
def test_other_paths_have_no_canned_answer(path: str) -> None:
    assert dialects.answer_for(path) is None


def test_canned_answers_are_in_each_wire_format() -> None:
    a = {k: json.loads(v) for k, v in dialects.UPSTREAM_ANSWERS.items() if k not in dialects.CONTENT_TYPES}
    assert a["openai"]["object"] == "chat.completion"
    assert a["anthropic"]["type"] == "message"
    assert a["gemini"]["candidates"][0]["content"]["parts"]
    assert a["bedrock"]["output"]["message"]["content"]
    assert dialects.UPSTREAM_ANSWERS["openai-stream"].endswith(b"data: [DONE]\n\n")
    assert b"event: message_stop" in dialects.UPSTREAM_ANSWERS["anthropic-stream"]
    assert b'"finishReason":"STOP"' in dialects.UPSTREAM_ANSWERS["gemini-stream"]
    assert b"messageStop" in dialects.UPSTREAM_ANSWERS["bedrock-stream"]


def test_upstream_conf_answers_every_upstream_path(tmp_path: Path) -> None:
    conf = dialects.upstream_conf(tmp_path, 9999)
    dialects.write_canned(tmp_path)
    for wire, answer in dialects.UPSTREAM_ANSWERS.items():
        if wire in dialects.CONTENT_TYPES:  # a stream: served from its file
            assert f"alias {tmp_path}/canned/{wire}.bin;" in conf
            assert (tmp_path / "canned" / f"{wire}.bin").read_bytes() == answer
        else:
            assert f"return 200 '{answer.decode()}';" in conf
    assert "listen 127.0.0.1:9999;" in conf
    assert "location = /healthz" in conf


def test_gateway_config_is_valid_with_records_on_by_default(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from gateway.config import load_config_text

    monkeypatch.setenv("BENCH_KEY", "k")
    for name, value in dialects.AWS_ENV.items():
        monkeypatch.setenv(name, value)
    cfg = load_config_text(dialects.gateway_toml(8080, 9090, store_path=tmp_path / "s.db"))
    assert cfg.log.call_records is True
    assert {p.type for p in cfg.providers.values()} == {"openai", "anthropic", "gemini", "bedrock"}
    models = {json.loads(row.body)["model"] for row in dialects.ROWS.values()}
    assert models <= set(cfg.models)
    off = load_config_text(dialects.gateway_toml(8080, 9090, store_path=tmp_path / "s.db", call_records=False,
                                                 auth_digest=gateway_key_digest()))
    assert off.log.call_records is False and off.auth.required is True


def test_recorder_keeps_bodies_and_answers_canned_bytes() -> None:
    (port,) = free_ports(1)
    with dialects._recorder(port) as rec:
        conn = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            conn.request("POST", "/v1/messages", body=b'{"x":1}', headers={"content-type": "application/json"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, dialects.UPSTREAM_ANSWERS["anthropic"])
            conn.request("POST", "/nowhere", body=b"{}")  # the same keep-alive connection
            resp = conn.getresponse()
            assert resp.status == 404
            resp.read()
        finally:
            conn.close()
        assert rec.seen == [("/v1/messages", b'{"x":1}'), ("/nowhere", b"{}")]


def test_translation_output_is_parsed_into_the_rows_figures() -> None:
    text = ("request OpenAI -> Anthropic: 4.10 us\nanswer Anthropic -> OpenAI:  5.00 us\n"
            "stream of 20 deltas:        120.00 us (5.00 us per event)\n"
            "stream of 20 deltas:        80.00 us (4.00 us per event)\n"
            "SigV4 signature per request: 25.07 us (of which formatting its two headers 0.38 us)\n")
    figures = dialects.parse_translation_output(text, "translate")
    assert figures["translate: request OpenAI -> Anthropic"] == 4.10
    assert figures["translate: stream of 20 deltas"] == 120.0
    assert figures["translate: stream of 20 deltas #2"] == 80.0  # printed again: numbered, not replaced
    assert figures["translate: SigV4 signature per request"] == 25.07
    assert dialects.row_translation_us(dialects.ROWS["chat-anthropic"], figures) == pytest.approx(9.10)
    assert dialects.row_translation_us(dialects.ROWS["chat-gemini"], figures) is None  # not measured
    assert dialects.row_translation_us(dialects.ROWS["chat"], figures) is None  # nothing to translate


def test_every_rows_translation_labels_are_printed_by_bench_translate() -> None:
    figures = dialects.translation_cpu(20)  # a handful of calls: the labels, not the values
    for row in dialects.ROWS.values():
        for label in row.translation:
            assert label in figures, (row.name, label)


def _round(requests: int, cpu: float, errors: int = 0) -> dict[str, Any]:
    return {"requests": requests, "rps": requests / 2.0, "server_cpu_s": cpu, "server_cpu_util": cpu / 2.0,
            "wrk": {"errors": errors, "percentiles_ms": {"50": 1.0, "99": 4.0}}}


def test_summary_ratio_is_per_core_over_all_rounds() -> None:
    rows = [dialects.ROWS["chat-anthropic"], dialects.ROWS["responses"]]
    rounds = [
        ("chat-anthropic", "gateway", _round(1000, 1.0)), ("chat-anthropic", "gateway", _round(3000, 1.0)),
        ("chat-anthropic", "nginx", _round(4000, 1.0)),
        ("responses", "gateway", _round(100, 1.0)), ("responses", "nginx", _round(1000, 1.0, errors=2)),
    ]
    result = dialects.summarise(rows, rounds, {"translate: request OpenAI -> Anthropic": 3.0,
                                               "translate: answer Anthropic -> OpenAI": 4.0})
    a = result["rows"]["chat-anthropic"]
    assert a["targets"]["gateway"]["req_per_cpu_s"] == 2000.0  # 4000 requests / 2 CPU-s, not a mean of rates
    assert a["ratio_per_core"] == 0.5 and a["passes"] is True
    assert a["translation_us"] == 7.0
    r = result["rows"]["responses"]
    assert r["ratio_per_core"] == pytest.approx(0.1) and r["passes"] is None  # no bar: reported
    assert result["ok"] is False  # nginx had errors in one row
    table = dialects.format_table(result)
    assert "chat-anthropic" in table and "0.50x" in table and "ERRORS" in table


@needs_tools
@pytest.mark.timeout(150)
def test_quick_run_measures_three_rows(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "bench.dialects", "--quick", "--rows", "chat,chat-anthropic,chat-bedrock-stream", "--timeout", "10",
            "--json", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its services and removes its temp dir
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail("the quick benchmark did not finish within 120 s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    result = json.loads(out.read_text())
    assert result["ok"] is True and set(result["rows"]) == {"chat", "chat-anthropic", "chat-bedrock-stream"}
    for name, row in result["rows"].items():
        assert row["ratio_per_core"] is not None, name
        for target in ("gateway", "nginx"):
            assert row["targets"][target]["req_per_cpu_s"] > 0, (name, target)
    # nginx was sent what the gateway sent upstream: the pass-through the client's bytes, the translated
    # row a Messages API request
    ups = result["upstream_requests"]
    assert ups["chat"]["path"] == "/v1/chat/completions"
    assert json.loads(ups["chat"]["body"]) == json.loads(dialects.ROWS["chat"].body)
    assert ups["chat-anthropic"]["path"] == "/v1/messages"
    assert json.loads(ups["chat-anthropic"]["body"])["messages"][0]["role"] == "user"
    assert result["rows"]["chat-anthropic"]["translation_us"] > 0
    assert ups["chat-bedrock-stream"]["path"] == "/model/bedrock-bench/converse-stream"
