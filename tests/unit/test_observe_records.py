"""Call records' parts without processes: redaction, the file sink's rotation, batching, the request
metrics' histograms, and the validation of ``[records]``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgspec
import pytest

from gateway.config import ConfigError, load_config_text
from gateway.observe.config import RecordSinkConfig
from gateway.observe.genai import GenAIMetrics, _Hist
from gateway.observe.records import REDACTED, Redactor
from gateway.observe.rows import Prices, to_record
from gateway.observe.sinks import FileSink, HttpSink, _pieces, _split, build_sinks, file_path_for
from gateway.wire import Usage

BASE = """
[providers.mock]
type = "mock"
[models.m]
provider = "mock"
"""


def test_key_material_is_redacted_by_name_and_by_shape() -> None:
    red = Redactor(["user"], limit=10_000)
    body = {"model": "m", "user": "alice", "Api-Key": "x", "nested": {"authorization": "Bearer abc"},
            "messages": [{"role": "user", "content": "key sk-ABCDEFGHIJKLMNOPQRST and gw-abc123-" + "s" * 20}],
            "n": 1}
    text, cut = red.text(json.dumps(body).encode())
    assert not cut and text is not None
    out = json.loads(text)
    assert out["user"] == REDACTED and out["Api-Key"] == REDACTED
    assert out["nested"]["authorization"] == REDACTED
    assert out["messages"][0]["content"] == f"key {REDACTED} and {REDACTED}"
    assert out["n"] == 1 and out["model"] == "m"


def test_a_body_that_is_not_json_is_redacted_as_text_and_cut() -> None:
    red = Redactor(limit=30)
    text, cut = red.text(b"token: Bearer abcdefghijklmnop then a lot more text here")
    assert cut and text is not None and text.startswith(f"token: {REDACTED}")
    assert len(text.encode()) <= 30
    assert red.text(b"") == (None, False)


def test_file_sink_rotates_between_lines_and_keeps_n(tmp_path: Path) -> None:
    path = str(tmp_path / "r.jsonl")
    sink = FileSink("file", path, max_bytes=50, keep=2)
    lines = [b'{"i":%d,"pad":"xxxxxxxxxxxxxx"}\n' % i for i in range(10)]  # 30-31 bytes each
    for ln in lines:
        sink.deliver([(ln, 1, [])])
    sink._release()
    names = sorted(os.listdir(tmp_path))
    assert names == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    kept = b"".join((tmp_path / n).read_bytes() for n in ("r.jsonl.2", "r.jsonl.1", "r.jsonl"))
    assert kept == b"".join(lines[-3:])  # one line a file (two do not fit in 50 bytes), 3 files kept
    assert sink.rotations == 9


def test_file_sink_splits_a_big_batch_at_line_boundaries(tmp_path: Path) -> None:
    path = str(tmp_path / "r.jsonl")
    sink = FileSink("file", path, max_bytes=100, keep=100)
    data = b"".join(b'{"i":%02d}\n' % i for i in range(40))  # 9 bytes a line
    sink.deliver([(data, 40, [])])
    sink._release()
    files = sorted(tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix != ".jsonl" else 0)
    assert all(len(p.read_bytes()) <= 100 and p.read_bytes().endswith(b"\n") for p in files)
    assert b"".join(p.read_bytes() for p in files) == data


def test_file_sink_rotates_by_age(tmp_path: Path) -> None:
    path = str(tmp_path / "r.jsonl")
    sink = FileSink("file", path, max_bytes=0, max_age=60.0, keep=3)
    sink.deliver([(b"{}\n", 1, [])])
    sink._opened = time.time() - 61  # the file's first record is older than max_age
    sink.deliver([(b"{}\n", 1, [])])
    sink._release()
    assert sorted(os.listdir(tmp_path)) == ["r.jsonl", "r.jsonl.1"]


def test_each_worker_gets_its_own_file() -> None:
    assert file_path_for("/var/log/calls.jsonl", 3) == "/var/log/calls-3.jsonl"
    assert file_path_for("/var/log/w{worker}/calls.jsonl", 1) == "/var/log/w1/calls.jsonl"
    assert file_path_for("calls", 0) == "calls-0"


def test_pieces_and_split_cut_between_lines() -> None:
    data = b"".join(b"x" * (i % 7 + 1) + b"\n" for i in range(100))
    pieces = _pieces(data, 16)
    assert b"".join(pieces) == data and all(len(p) <= 16 and p.endswith(b"\n") for p in pieces)
    head, rest = _split((data, 100, list(range(100))), 30)
    assert head[1] == 30 and head[0].count(b"\n") == 30 and head[2] == list(range(30))
    assert rest[1] == 70 and head[0] + rest[0] == data and rest[2] == list(range(30, 100))


def test_http_sink_batches_are_at_most_batch_records() -> None:
    sink = HttpSink("http", "http://127.0.0.1:9/x", batch=3)
    sink.offer((b"1\n2\n", 2, [1, 2]))
    sink.offer((b"3\n4\n5\n", 3, [3, 4, 5]))
    first = sink._take()
    second = sink._take()
    assert first is not None and second is not None
    assert [c[1] for c in first] == [2, 1] and b"".join(c[0] for c in first) == b"1\n2\n3\n"
    assert [c[1] for c in second] == [2] and second[0][0] == b"4\n5\n"


def test_a_full_queue_drops_and_counts() -> None:
    sink = HttpSink("http", "http://127.0.0.1:9/x", queue=3)
    assert sink.offer((b"1\n2\n", 2, []))
    assert not sink.offer((b"3\n4\n", 2, []))
    assert sink.dropped["queue_full"] == 2 and sink.queued == 2


def test_histograms_count_cumulatively_in_their_buckets() -> None:
    h = _Hist((1.0, 2.0, 4.0))
    for v in (0.5, 1.0, 1.5, 3.0, 9.0):
        h.observe(v)
    samples = {(n, lab[-1] if n.endswith("_bucket") else ""): v for n, lab, v in h.samples("x", ("a",))}
    assert samples[("x_bucket", "1.0")] == 2 and samples[("x_bucket", "2.0")] == 3
    assert samples[("x_bucket", "4.0")] == 4 and samples[("x_bucket", "+Inf")] == 5
    assert samples[("x_count", "")] == 5 and samples[("x_sum", "")] == 15.0


def test_records_feed_the_request_metrics_with_opt_in_labels() -> None:
    row = (time.time(), "r1", "POST", "/v1/chat/completions", 200, 12.5, "0.5", "m", "p", "up", True, 200,
           10.0, Usage(3, 5, 8), None, 0, None, None, 1, None, "chat", 4.0, None, None)
    rec = to_record(row)
    assert rec.ttft_ms == 4.0 and rec.dialect == "openai" and rec.endpoint == "chat"
    m = GenAIMetrics(["tenant"])
    m.observe([rec, rec])
    got = {(n, lab): v for n, lab, v in m.samples()}
    lab = ("chat", "openai", "m", "p", "", "200", "", "")
    assert got[("gateway_requests_total", lab)] == 2
    assert got[("gen_ai_client_token_usage_sum", (*lab, "output"))] == 10
    assert got[("gen_ai_server_time_to_first_token_seconds_count", lab)] == 2
    tpot = got[("gen_ai_server_time_per_output_token_seconds_sum", lab)]
    assert tpot == pytest.approx(2 * (0.0125 - 0.004) / 4)


def test_cost_without_limits_from_the_price_table() -> None:
    from gateway.limits.pricing import PriceConfig, PriceTable

    prices = Prices(PriceTable({"up": PriceConfig(input=1.0, output=2.0)}))
    row = (0.0, "r", "POST", "/v1/chat/completions", 200, 1.0, "0.1", "m", "p", "up", False, 200, 1.0,
           Usage(1000, 500, 1500), None, 0, None, None, 1, None, "chat", None, None, None)
    assert to_record(row, prices).cost_usd == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert to_record(row).cost_usd is None


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(BASE + text)
    return str(info.value)


def test_sinks_are_validated() -> None:
    assert "a file sink needs a path" in _problems('[[records.sinks]]\ntype = "file"\n')
    assert "needs a url" in _problems('[[records.sinks]]\ntype = "http"\n')
    assert "http:// or https://" in _problems('[[records.sinks]]\ntype = "otlp"\nurl = "ftp://x"\n')
    assert "names another sink" in _problems(
        '[[records.sinks]]\ntype = "stderr"\nname = "a"\n[[records.sinks]]\ntype = "stderr"\nname = "a"\n')
    assert 'must be "tenant" or "key"' in _problems('[metrics]\nlabels = ["model"]\n')
    assert "records.queue" in _problems("[records]\nqueue = 0\n")
    cfg = load_config_text(BASE + '[[records.sinks]]\ntype = "http"\nurl = "http://127.0.0.1:1/x"\n'
                                  'headers = { authorization = "env:PATH" }\n')
    sinks = build_sinks(cfg.records.sinks, 0, lambda ref: "resolved")
    assert isinstance(sinks[0], HttpSink) and sinks[0].headers == {"authorization": "resolved"}
    assert [s.name for s in build_sinks([RecordSinkConfig(type="stderr")] * 2, 0, str)] == [
        "stderr", "stderr-2"]
    assert [s.kind for s in build_sinks([], 0, str)] == ["stderr"]
    assert msgspec.to_builtins(cfg.records)["bodies"] == "none"
