"""Call records: one JSON line per request, built and encoded on the loop in slices, written by sinks'
threads; and the request figures of the GenAI metrics, taken from the same records.

Theory of operation:

    when                   | what
    -----------------------+-------------------------------------------------------------------------------
    a request ends         | ``emit``: the engine's flat tuple is appended to a list (the request path's
    (``Engine._settle``)   | whole cost). Beyond ``[records] queue`` held tuples, it is dropped and counted
    every ``flush_interval`` | ``_tick`` (a loop timer) turns at most ``_SLICE`` tuples into ``CallRecord``s
                           | (cost filled in from the price table when no phase priced the call, bodies
                           | redacted and capped), counts them into the GenAI metrics, encodes them all at
                           | once (``encode_lines``) and offers the bytes to every sink; more left: the next
                           | slice runs on the next loop iteration, so no flush holds the loop for long
    a sink's thread        | writes or sends what it was offered (``gateway.observe.sinks``)
    the worker stops       | ``close``: every held tuple is converted and offered, then each sink delivers
                           | its queue (retrying until ``[server] drain_timeout``) and stops

Why the tuple and the slices: building the record costs more than the rest of the hand-off, and a Struct
per request on the request path cost ~2 us; converting in slices of ``_SLICE`` bounds the stall a flush
adds to any request to a fraction of a millisecond, whatever the traffic (a flush of every record of
200 ms at once stalled the loop for ~10 ms at saturation and made the p99). Client keys are never part of
a record.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

import msgspec

from gateway.limits.pricing import PriceTable, cached_tokens
from gateway.observe.config import RecordsConfig

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.observe.genai import GenAIMetrics
    from gateway.observe.sinks import Sink

__all__ = ["CallRecord", "RecordSink", "Redactor", "dialect_of", "to_record"]

log = logging.getLogger("gateway.records")

#: tuples converted per loop iteration (a slice costs well under a millisecond)
_SLICE = 256


class CallRecord(msgspec.Struct, omit_defaults=True, gc=False):
    ts: float
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    overhead_ms: float
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    upstream_status: int | None = None
    upstream_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: of ``prompt_tokens``: read from the provider's prompt cache, and written to it (when reported)
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    error_code: str | None = None
    error: str | None = None
    worker: int | None = None
    #: the caller's key id and tenant (never the key itself), and the key's labels
    key_id: str | None = None
    tenant: str | None = None
    labels: dict[str, str] | None = None
    #: routed models: the deployment that answered (or failed last), and the number of attempts
    deployment: str | None = None
    attempts: int | None = None
    #: USD, from the pricing table and the usage
    cost_usd: float | None = None
    #: "chat", "completions", "embeddings" (none for answers without an endpoint, e.g. 404)
    endpoint: str | None = None
    #: the client's API shape: "openai", "anthropic", "openai_responses"
    dialect: str | None = None
    #: streams: ms from the request's arrival to the start of the streamed answer
    ttft_ms: float | None = None
    #: of the answer: reasoning tokens (when the provider reports them)
    reasoning_tokens: int | None = None
    #: ``[records] bodies``: the bodies as text, key material and configured fields redacted, capped
    request_body: str | None = None
    response_body: str | None = None
    #: which bodies were cut at ``max_body_bytes``
    truncated: list[str] | None = None


#: the client dialect of a path (the rest speak OpenAI Chat Completions, Completions or Embeddings)
_DIALECTS = {"/v1/messages": "anthropic", "/v1/responses": "openai_responses"}


def dialect_of(path: str) -> str:
    return _DIALECTS.get(path, "openai")


def _ms(x: float) -> float:
    return int(x * 1000.0) / 1000.0  # PERF: three decimals without round() (half its cost)


def _reasoning(usage: Any) -> int | None:
    details: Any = getattr(usage, "completion_tokens_details", None)
    if details is None:
        return None
    if isinstance(details, dict):
        n = details.get("reasoning_tokens")
    else:
        n = getattr(details, "reasoning_tokens", None)
    return n if isinstance(n, int) and n > 0 else None


def to_record(row: tuple[Any, ...], prices: PriceTable | None = None) -> CallRecord:
    """The engine's tuple -> a CallRecord (runs in the flush, on the loop). ``prices``: the cost of a call
    no phase priced (no ``[limits]``)."""
    (ts, rid, method, path, status, duration_ms, overhead, model, provider, upstream_model, stream,
     upstream_status, upstream_ms, usage, err, worker, key, deployment, attempts, cost) = row[:20]
    endpoint, ttft_ms = (row[20], row[21]) if len(row) > 21 else (None, None)
    if usage is not None:
        prompt, completion, total = usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        cached = cached_tokens(usage) or None
        written = getattr(usage, "cache_write_tokens", None) or None
        reasoning = _reasoning(usage)
        if cost is None and prices is not None:
            cost = prices.cost(upstream_model, usage) if upstream_model else None
            if cost is None and model:
                cost = prices.cost(model, usage)
    else:
        prompt = completion = total = cached = written = reasoning = None
    if key is not None:
        key_id, tenant, labels = key.id, key.tenant.id, key.labels or None
    else:
        key_id = tenant = labels = None
    # PERF: positional, in field order (keywords cost ~0.4 us more)
    return CallRecord(
        ts, rid, method, path, status, _ms(duration_ms), float(overhead or 0.0), model, provider,
        upstream_model, stream, upstream_status, _ms(upstream_ms) if upstream_ms is not None else None,
        prompt, completion, total, cached, written,
        err.code if err is not None else None,
        err.message if err is not None and err.status >= 500 else None,
        worker, key_id, tenant, labels, deployment, attempts if attempts and attempts > 1 else None, cost,
        endpoint or None, _DIALECTS.get(path, "openai"),
        _ms(ttft_ms) if ttft_ms is not None else None, reasoning,
    )


# --------------------------------------------------------------------------------------------------------
# Bodies

#: JSON member names whose values are key material, always redacted (compared lowercased, - and _ alike)
_KEY_FIELDS = frozenset({
    "authorization", "proxy_authorization", "x_api_key", "api_key", "apikey", "api_token", "access_token",
    "refresh_token", "id_token", "client_secret", "secret", "secret_key", "password", "private_key",
    "x_goog_api_key", "token",
})
#: strings that look like key material wherever they appear: bearer credentials, provider key formats
#: (OpenAI/Anthropic ``sk-``, the gateway's ``gw-<id>-<secret>``, AWS access key ids, Google API keys,
#: GitHub and Slack tokens, JWTs)
_KEY_PATTERN = re.compile(
    r"(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{16,}"
    r"|\bgw-[A-Za-z0-9]+-[A-Za-z0-9_-]{16,}"
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"
    r"|\bAIza[A-Za-z0-9_-]{30,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
REDACTED = "[redacted]"


def _fold(name: str) -> str:
    return name.lower().replace("-", "_")


class Redactor:
    """Bodies for records: JSON values under key-material names and ``fields`` replaced, strings that look
    like keys replaced anywhere, the text cut at ``limit`` bytes."""

    __slots__ = ("fields", "limit")

    def __init__(self, fields: Sequence[str] = (), limit: int = 4096) -> None:
        self.fields = _KEY_FIELDS | {_fold(f) for f in fields}
        self.limit = limit

    def _walk(self, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: REDACTED if _fold(k) in self.fields else self._walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self._walk(x) for x in v]
        if isinstance(v, str):
            return _KEY_PATTERN.sub(REDACTED, v)
        return v

    def text(self, body: bytes | None) -> tuple[str | None, bool]:
        """(the redacted text of ``body``, whether it was cut)."""
        if not body:
            return None, False
        try:
            text = msgspec.json.encode(self._walk(msgspec.json.decode(body))).decode()
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            text = _KEY_PATTERN.sub(REDACTED, body.decode("utf-8", "replace"))
        raw = text.encode()
        if len(raw) <= self.limit:
            return text, False
        return raw[: self.limit].decode("utf-8", "ignore"), True


# --------------------------------------------------------------------------------------------------------
# The worker's hub


class RecordSink:
    """The worker's call records and request metrics (see the module's table).

    ``out``: a file object written synchronously in the flush instead of the configured sinks (tests in
    process); ``enabled``: call records on; ``metrics``: the GenAI metrics the records are counted into
    (their being set also makes the engine emit with records off).
    """

    def __init__(self, out: IO[bytes] | None = None, enabled: bool = True, interval: float | None = None, *,
                 config: RecordsConfig | None = None, sinks: Sequence[Sink] | None = None,
                 metrics: GenAIMetrics | None = None, prices: PriceTable | None = None,
                 drain_timeout: float = 10.0) -> None:
        cfg = config or RecordsConfig()
        self.records_on = enabled
        self.metrics = metrics
        #: the engine's switch: emit a tuple per request
        self.enabled = enabled or metrics is not None
        self._out = out
        self._sinks: list[Sink] = list(sinks or ()) if out is None and enabled else []
        if out is None and enabled and sinks is None:
            from gateway.observe.sinks import StreamSink

            self._sinks = [StreamSink("stderr", queue=cfg.queue)]
        self._interval = cfg.flush_interval if interval is None else interval
        self._bound = cfg.queue
        self._prices = prices
        self._drain_timeout = drain_timeout
        self._rows: list[tuple[Any, ...]] = []
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._encode_lines: Callable[[Sequence[CallRecord]], bytes] = msgspec.json.Encoder().encode_lines
        self._bodies = "none"
        self._redactor = Redactor()
        self._configure(cfg)
        self.emitted = 0
        #: tuples dropped because ``[records] queue`` were held already (the loop could not keep up)
        self.dropped = 0
        self._closed = False

    @classmethod
    def for_config(cls, config: Config, worker: int) -> RecordSink:
        """The hub a worker's engine runs with: ``[records]``'s sinks, the GenAI metrics when ``[metrics]``
        is on, the price table for calls no phase priced."""
        from gateway.config import resolve_secret
        from gateway.observe.genai import GenAIMetrics
        from gateway.observe.sinks import build_sinks

        rc: RecordsConfig = config.records
        enabled = config.log.call_records
        sinks = build_sinks(rc.sinks, worker, resolve_secret) if enabled else []
        metrics = GenAIMetrics(config.metrics.labels) if config.metrics.enabled else None
        return cls(None, enabled, config=rc, sinks=sinks, metrics=metrics,
                   prices=PriceTable.load(overrides=config.pricing),
                   drain_timeout=config.server.drain_timeout)

    def _configure(self, cfg: RecordsConfig) -> None:
        self._bodies = cfg.bodies
        self._redactor = Redactor(cfg.redact_fields, cfg.max_body_bytes)

    def reload(self, config: Config) -> None:
        """``[records]`` bodies, redaction and ``[pricing]`` of a reloaded config (sinks: on restart)."""
        self._configure(config.records)
        self._prices = PriceTable.load(overrides=config.pricing)
        if self.metrics is not None:
            self.metrics.set_labels(config.metrics.labels)

    @property
    def sinks(self) -> Sequence[Sink]:
        return self._sinks

    # -- the loop's side

    def start(self) -> None:
        if not self.enabled or self._handle is not None:
            return
        for s in self._sinks:
            s.start()
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._tick)

    def emit(self, row: tuple[Any, ...]) -> None:
        """Queue one request given as the tuple the engine builds (see ``to_record``)."""
        self.emitted += 1
        rows = self._rows
        if len(rows) < self._bound:
            rows.append(row)
        else:
            self.dropped += 1

    def _tick(self) -> None:
        self._handle = None
        try:
            self._convert(_SLICE)
        except Exception:  # the timer must go on
            log.exception("records: a flush failed")
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._rows:  # more than a slice waited: the next one on the next iteration
            self._handle = loop.call_soon(self._tick)
        else:
            self._handle = loop.call_later(self._interval, self._tick)

    def _convert(self, limit: int) -> None:
        rows = self._rows
        if not rows:
            return
        if len(rows) <= limit:
            batch, self._rows = rows, []
        else:
            batch, self._rows = rows[:limit], rows[limit:]
        prices = self._prices
        records = [to_record(r, prices) for r in batch]
        if self._bodies != "none":
            self._add_bodies(batch, records)
        if self.metrics is not None:
            self.metrics.observe(records)
        if not self.records_on:
            return
        data = self._encode_lines(records)
        if self._out is not None:
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                pass
            return
        chunk = (data, len(records), records)
        for s in self._sinks:
            s.offer(chunk)

    def _add_bodies(self, rows: list[tuple[Any, ...]], records: list[CallRecord]) -> None:
        red = self._redactor
        both = self._bodies == "both"
        for row, rec in zip(rows, records, strict=True):
            if len(row) < 24:
                continue
            request, answer = row[22], row[23]
            cut: list[str] = []
            if request is not None:
                rec.request_body, c = red.text(request.body)
                if c:
                    cut.append("request")
            if both and answer is not None:
                rec.response_body, c = red.text(answer)
                if c:
                    cut.append("response")
            rec.truncated = cut or None

    async def close(self) -> None:
        """Convert and hand off every held record, then let each sink deliver its queue (until
        ``drain_timeout``) and stop. Records emitted afterwards are only counted."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._rows:
            self._convert(len(self._rows))
        if self._sinks:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, s.close, self._drain_timeout)
                                   for s in self._sinks))
        self.records_on = False

    def snapshot(self) -> list[dict[str, Any]]:
        """Records not yet handed off (for tests)."""
        return [msgspec.to_builtins(to_record(r, self._prices)) for r in self._rows]

    # -- metrics

    def samples(self) -> tuple[list[Any], list[Any]]:
        """(counters, gauges) of the records, the sinks and the GenAI metrics, for the worker's snapshot."""
        counters: list[Any] = [("gateway_records_dropped_total", (), float(self.dropped))]
        gauges: list[Any] = []
        for s in self._sinks:
            counters.append(("gateway_record_sink_records_total", (s.name,), float(s.written)))
            counters.append(("gateway_record_sink_failures_total", (s.name,), float(s.failures)))
            for reason, n in s.dropped.items():
                counters.append(("gateway_record_sink_dropped_total", (s.name, reason), float(n)))
            gauges.append(("gateway_record_sink_queued", (s.name,), float(s.queued)))
        if self.metrics is not None:
            counters.extend(self.metrics.samples())
        return counters, gauges
