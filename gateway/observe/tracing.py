"""Traces: OpenTelemetry spans per request, W3C ``traceparent`` in and out, OTLP/HTTP export.

Theory of operation:

    when                   | what
    -----------------------+------------------------------------------------------------------------------
    a request arrives      | ``Tracer.begin`` (only with ``[tracing] enabled``: otherwise the engine's one
                           | check ``self.tracer is not None`` is all): the client's ``traceparent`` is
                           | read; the sampling decision follows the client's sampled flag when it sent
                           | one, else ``sample_ratio`` (of the trace id, so every hop agrees); a sampled
                           | request gets a ``Trace`` (ids and the arrival time) on its context
    each upstream attempt  | ``Trace.upstream``: a new span id for the attempt and its start time; the
                           | request sent upstream carries ``traceparent: 00-<trace>-<attempt span>-01``,
                           | so the upstream's spans are children of the gateway's attempt span
    the request ends       | ``Tracer.end`` (``Engine._settle``): the spans are built from the context (the
                           | request's SERVER span, child of the client's span; ``gateway.phases``
                           | (authentication, parsing, the phase chain: arrival to the first attempt); a
                           | CLIENT span per attempt) and offered to the exporter's queue
    the exporter's thread  | batches spans into OTLP/HTTP requests (JSON, or protobuf with the ``otlp``
                           | extra), retried with backoff, bounded queue with a drop counter: the records'
                           | ``HttpSink`` machinery

Why not the OpenTelemetry SDK: its spans are live objects made and ended around the code they time, with
ids drawn by the SDK and a context variable per span; here the ids must be known when the upstream
request is written (the ``traceparent`` of each attempt) and the spans are built after the request ended
from timestamps the engine keeps anyway, so the SDK would add its per-span objects, locks and context
switches on the loop for nothing. What leaves the gateway is the same OTLP, which any collector takes.

An attempt span ends when the next attempt starts, the last one when the request ends (it covers the
relay of the answer, which for a stream is the upstream's own streaming).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from gateway.observe.sinks import Chunk, HttpSink

__all__ = ["OtlpSpanExporter", "Trace", "Tracer", "TracingConfig", "parse_traceparent", "tracing_problems"]

_KIND_INTERNAL, _KIND_SERVER, _KIND_CLIENT = 1, 2, 3
_OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}
_HEX = frozenset("0123456789abcdef")


class TracingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[tracing]``: OpenTelemetry spans per request (docs/observability.md#traces)."""

    enabled: bool = False
    #: the collector's OTLP/HTTP traces endpoint
    url: str = "http://127.0.0.1:4318/v1/traces"
    #: the fraction of requests traced (of those whose client sent no sampling decision)
    sample_ratio: float = 1.0
    #: follow the client's sampled flag when its ``traceparent`` has one
    parent_based: bool = True
    #: "json" (nothing to install) or "protobuf" (the ``otlp`` extra)
    encoding: Literal["json", "protobuf"] = "json"
    service_name: str = "llm-gateway"
    #: extra request headers; a value ``env:NAME`` or ``file:PATH`` is read as a credential
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: spans waiting for export; beyond it spans are dropped and counted
    queue: int = 20000
    #: spans per export request, at most
    batch: int = 512
    #: seconds to wait for the collector
    timeout: float = 10.0


def tracing_problems(tc: TracingConfig) -> Iterable[tuple[tuple[str | int, ...], str]]:
    if not (math.isfinite(tc.sample_ratio) and 0.0 <= tc.sample_ratio <= 1.0):
        yield ("tracing", "sample_ratio"), f"must be 0 to 1, found {tc.sample_ratio}"
    if not tc.url.startswith(("http://", "https://")):
        yield ("tracing", "url"), f"must be an http:// or https:// URL, found {tc.url!r}"
    for name in ("queue", "batch"):
        if getattr(tc, name) < 1:
            yield ("tracing", name), f"must be 1 or more, found {getattr(tc, name)}"
    if not (math.isfinite(tc.timeout) and tc.timeout > 0):
        yield ("tracing", "timeout"), f"must be more than 0 seconds, found {tc.timeout}"
    if tc.enabled and tc.encoding == "protobuf":
        from gateway.observe.config import _importable

        if not _importable("google.protobuf", "opentelemetry.proto.collector.trace.v1"):
            yield ("tracing", "encoding"), ('"protobuf" needs the otlp extra (pip install '
                                            '"llm-gateway[otlp]"); "json" needs nothing')


def parse_traceparent(value: bytes | None) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a W3C ``traceparent`` (version 00 or a later one read as
    00); None when absent or malformed (then the request starts a trace of its own)."""
    if not value or len(value) < 55:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    parts = text.split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace_id, span_id, flags = parts[:4]
    if (len(trace_id), len(span_id), len(flags)) != (32, 16, 2):
        return None
    if not set(version + trace_id + span_id + flags) <= _HEX:
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def _span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


class Trace:
    """One sampled request's ids and times (held by its context)."""

    __slots__ = ("attempts", "parent", "span", "start_ns", "state", "trace_id")

    def __init__(self, trace_id: str, parent: str | None, state: str | None) -> None:
        self.trace_id = trace_id
        self.parent = parent
        self.state = state
        self.span = _span_id()
        self.start_ns = time.time_ns()
        #: (span id, start ns, target name) of each upstream attempt
        self.attempts: list[tuple[str, int, str]] = []

    def upstream(self, extra: list[tuple[str, str]] | None, target: str) -> list[tuple[str, str]]:
        """The headers of an upstream attempt: ``extra`` (the forwarded client headers) with this
        attempt's ``traceparent`` (and the client's ``tracestate``) in place of the client's."""
        span = _span_id()
        self.attempts.append((span, time.time_ns(), target))
        out = [h for h in extra if h[0] not in ("traceparent", "tracestate")] if extra else []
        out.append(("traceparent", f"00-{self.trace_id}-{span}-01"))
        if self.state:
            out.append(("tracestate", self.state))
        return out


    def unsent(self) -> None:
        """The last attempt's request was not sent after all (no idle connection: sent again later)."""
        if self.attempts:
            self.attempts.pop()


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        v: dict[str, Any] = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}
    elif isinstance(value, float):
        v = {"doubleValue": value}
    else:
        v = {"stringValue": str(value)}
    return {"key": key, "value": v}


class Tracer:
    """The worker's tracer: sampling, the spans of ended requests, the exporter."""

    def __init__(self, config: TracingConfig, exporter: OtlpSpanExporter) -> None:
        self.config = config
        self.exporter = exporter
        #: sampled trace ids are those whose low 56 bits fall under this bound (W3C random trace ids)
        self._bound = int(config.sample_ratio * (1 << 56))

    @classmethod
    def for_config(cls, config: Any, worker: int) -> Tracer | None:
        tc: TracingConfig = config.tracing
        if not tc.enabled:
            return None
        from gateway.config import resolve_secret

        headers = {k: resolve_secret(v) if v.startswith(("env:", "file:")) else v
                   for k, v in tc.headers.items()}
        exporter = OtlpSpanExporter(tc.url, encoding=tc.encoding, service_name=tc.service_name, worker=worker,
                                    headers=headers, batch=tc.batch, timeout=tc.timeout, queue=tc.queue)
        return cls(tc, exporter)

    def _sampled(self, trace_id: str) -> bool:
        return int(trace_id[-14:], 16) < self._bound

    def begin(self, request: Any) -> Trace | None:
        """A sampled request's ``Trace``; None when it is not sampled."""
        parent = parse_traceparent(request.header(b"traceparent"))
        if parent is None:
            trace_id = f"{random.getrandbits(128) or 1:032x}"
            return Trace(trace_id, None, None) if self._sampled(trace_id) else None
        trace_id, parent_span, sampled = parent
        if not (sampled if self.config.parent_based else self._sampled(trace_id)):
            return None
        state = request.header(b"tracestate")
        return Trace(trace_id, parent_span, state.decode("latin-1")[:512] if state else None)

    def end(self, ctx: Any, status: int) -> None:
        """The request's spans, offered to the exporter (called once, when the request ends)."""
        trace = ctx.trace
        end = time.time_ns()
        req = ctx.request
        tid = trace.trace_id
        attrs = [_attr("http.request.method", req.method), _attr("url.path", req.path),
                 _attr("http.response.status_code", status), _attr("gateway.request_id", ctx.request_id)]
        fields = ctx.fields
        if ctx.endpoint:
            attrs.append(_attr("gen_ai.operation.name", _OPERATIONS.get(ctx.endpoint, ctx.endpoint)))
        if fields is not None and getattr(fields, "model", None):
            attrs.append(_attr("gen_ai.request.model", fields.model))
        target = ctx.target
        if target is not None:
            attrs.append(_attr("gen_ai.provider.name", target.provider))
            attrs.append(_attr("gen_ai.response.model", target.upstream_model))
        usage = ctx.usage
        if usage is not None:
            attrs.append(_attr("gen_ai.usage.input_tokens", int(usage.prompt_tokens or 0)))
            attrs.append(_attr("gen_ai.usage.output_tokens", int(usage.completion_tokens or 0)))
        key = ctx.key
        if key is not None:
            attrs.append(_attr("gateway.key_id", key.id))
            attrs.append(_attr("gateway.tenant", key.tenant.id))
        if ctx.attempts:
            attrs.append(_attr("gateway.attempts", int(ctx.attempts)))
        err = ctx.error
        if err is not None:
            attrs.append(_attr("error.type", err.code or err.type))
        name = f"{req.method} {req.path}"
        root = self._span(tid, trace.span, trace.parent, name, _KIND_SERVER, trace.start_ns, end, attrs,
                          status >= 500)
        spans = [root]
        first = trace.attempts[0][1] if trace.attempts else end
        spans.append(self._span(tid, _span_id(), trace.span, "gateway.phases", _KIND_INTERNAL, trace.start_ns,
                                max(trace.start_ns, first), [], False))
        for i, (span, start, target_name) in enumerate(trace.attempts):
            stop = trace.attempts[i + 1][1] if i + 1 < len(trace.attempts) else end
            last = i + 1 == len(trace.attempts)
            a = [_attr("gateway.attempt", i + 1), _attr("gateway.deployment", target_name)]
            up = ctx.upstream_status
            if last and up is not None:
                a.append(_attr("http.response.status_code", int(up)))
            failed = not last or (up is not None and up >= 500) or (up is None and err is not None)
            spans.append(self._span(tid, span, trace.span, f"upstream {target_name}", _KIND_CLIENT, start,
                                    max(start, stop), a, failed))
        self.exporter.offer((b"", len(spans), spans))

    @staticmethod
    def _span(trace_id: str, span_id: str, parent: str | None, name: str, kind: int, start: int, end: int,
              attrs: list[dict[str, Any]], error: bool) -> dict[str, Any]:
        span: dict[str, Any] = {
            "traceId": trace_id, "spanId": span_id, "name": name, "kind": kind,
            "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": attrs,
            "status": {"code": 2} if error else {},
        }
        if parent:
            span["parentSpanId"] = parent
        return span

    def samples(self) -> tuple[list[Any], list[Any]]:
        ex = self.exporter
        counters: list[Any] = [("gateway_trace_spans_exported_total", (), float(ex.written)),
                               ("gateway_trace_export_failures_total", (), float(ex.failures))]
        for reason, n in ex.dropped.items():
            counters.append(("gateway_trace_spans_dropped_total", (reason,), float(n)))
        return counters, [("gateway_trace_spans_queued", (), float(ex.queued))]


class OtlpSpanExporter(HttpSink):
    """Spans to an OTLP/HTTP traces endpoint, batched on its own thread (the records' ``HttpSink``)."""

    kind = "otlp-traces"

    def __init__(self, url: str, *, encoding: str = "json", service_name: str = "llm-gateway",
                 worker: int = 0, **kw: Any) -> None:
        super().__init__("traces", url, **kw)
        self._resource = {"attributes": [
            _attr("service.name", service_name),
            _attr("service.instance.id", f"{os.uname().nodename}-{os.getpid()}"),
            _attr("gateway.worker", worker),
        ]}
        self._proto: Any = None
        if encoding == "protobuf":
            import importlib

            json_format = importlib.import_module("google.protobuf.json_format")
            service = importlib.import_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
            self._proto = (json_format, service.ExportTraceServiceRequest)
            self.content_type = "application/x-protobuf"
        else:
            self.content_type = "application/json"

    def body(self, chunks: list[Chunk]) -> bytes:
        spans = [s for chunk in chunks for s in chunk[2]]
        message: dict[str, Any] = {"resourceSpans": [{"resource": self._resource,
                                      "scopeSpans": [{"scope": {"name": "gateway"}, "spans": spans}]}]}
        if self._proto is None:
            return msgspec.json.encode(message)
        json_format, request_type = self._proto
        # OTLP/JSON carries ids as hex; protobuf's JSON mapping reads bytes as base64 (on copies: a
        # retried batch is encoded again)
        message["resourceSpans"][0]["scopeSpans"][0]["spans"] = [
            {k: _b64(v) if k in ("traceId", "spanId", "parentSpanId") else v for k, v in s.items()}
            for s in spans
        ]
        return bytes(json_format.ParseDict(message, request_type()).SerializeToString())


def _b64(hex_id: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_id)).decode()
