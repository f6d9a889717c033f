"""W3C traceparent parsing, sampling, and the per-attempt upstream headers."""

from __future__ import annotations

from typing import Any

from gateway.observe.tracing import OtlpSpanExporter, Trace, Tracer, TracingConfig, parse_traceparent

T, P = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Req:
    def __init__(self, **headers: str) -> None:
        self.h = {k.encode(): v.encode() for k, v in headers.items()}

    def header(self, name: bytes) -> Any:
        return self.h.get(name)


def test_traceparent_parsing() -> None:
    assert parse_traceparent(f"00-{T}-{P}-01".encode()) == (T, P, True)
    assert parse_traceparent(f"00-{T.upper()}-{P}-00".encode()) == (T, P, False)
    assert parse_traceparent(f"01-{T}-{P}-03-future".encode()) == (T, P, True)
    for bad in (None, b"", f"00-{T}-{P}-01-x".encode(), f"ff-{T}-{P}-01".encode(), f"00-{'0' * 32}-{P}-01".encode(),
                f"00-{T}-{'0' * 16}-01".encode(), f"00-{T[:-1]}g-{P}-01".encode(), b"\xff" * 60):
        assert parse_traceparent(bad) is None, bad


def tracer(**kw: Any) -> Tracer:
    return Tracer(TracingConfig(enabled=True, **kw), OtlpSpanExporter("http://127.0.0.1:9/v1/traces"))


def test_sampling_follows_the_client_then_the_ratio() -> None:
    assert tracer(sample_ratio=0.0).begin(Req(traceparent=f"00-{T}-{P}-01")) is not None
    assert tracer(sample_ratio=1.0).begin(Req(traceparent=f"00-{T}-{P}-00")) is None
    assert tracer(sample_ratio=1.0, parent_based=False).begin(Req(traceparent=f"00-{T}-{P}-00")) is not None
    assert all(tracer(sample_ratio=0.0).begin(Req()) is None for _ in range(100))
    half = sum(tracer(sample_ratio=0.5).begin(Req()) is not None for _ in range(2000))
    assert 800 < half < 1200


def test_each_attempt_gets_its_own_traceparent_replacing_the_clients() -> None:
    trace = Trace(T, P, "vendor=x")
    first = trace.upstream([("traceparent", "junk"), ("x-other", "1")], "dep-a")
    second = trace.upstream(None, "dep-b")
    assert ("x-other", "1") in first and ("tracestate", "vendor=x") in first
    tp = [v for k, v in first if k == "traceparent"]
    assert len(tp) == 1 and tp[0] == f"00-{T}-{trace.attempts[0][0]}-01"
    assert dict(second)["traceparent"].split("-")[2] == trace.attempts[1][0] != trace.attempts[0][0]
    trace.unsent()
    assert [a[2] for a in trace.attempts] == ["dep-a"]
