"""Call records: one JSON line per request, built and encoded on the loop an iteration's requests at a
time, written by sinks' threads; the GenAI metrics are counted from the same rows.

Theory of operation:

    when                     | what
    -------------------------+-----------------------------------------------------------------------------
    a request ends           | ``emit`` (``Engine._settle``, after the answer was sent; ``rows.RowBatch``):
                             | the engine's flat tuple waits in a list until the end of the loop iteration;
                             | the first one of an iteration schedules ``_drain``
    the iteration's end      | ``_drain`` takes the iteration's rows at once: counts them into the GenAI
    (``call_soon``)          | metrics (``genai.observe_rows``: no record built for that), and with call
                             | records on writes their JSON lines (``rows.encode_rows``, a compiled writer
                             | whose one buffer collects every drain's lines until the flush: no record
                             | object, no copy per drain; the cost filled in from the price table when no
                             | phase priced the call), or, where bodies or record objects are wanted, converts
                             | them into ``CallRecord``s (``rows.to_records``; bodies redacted and capped
                             | when ``[records] bodies`` asks) and encodes those (``encode_lines``).
                             | Beyond ``[records] queue`` records waiting for the flush, a row's record is
                             | dropped and counted (its metrics are counted). A scrape, a snapshot or
                             | ``close`` drains first: what they show includes every request answered
    ``flush_interval`` after | ``_tick`` (a loop timer, set by the first records held after a flush: none
    records are held         | while idle) takes what the drains encoded and offers it to every
                             | sink as one chunk (the records themselves to the consumers and to sinks that
                             | read records: OTLP)
    a sink's thread          | writes or sends what it was offered (``gateway.observe.sinks``)
    the worker stops         | ``close``: every waiting record is offered, then each sink delivers its queue
                             | (retrying for up to ``CLOSE_TIMEOUT``) and stops

Why so: a flush that built and encoded 200 ms of records at once, and wrote them to stderr on the loop,
stalled the loop for ~10 ms at saturation (the p99), and the tuples it held for that long (with the
request's objects) were promoted through the GC's generations and made it collect several times as
often. Encoding a flush interval's records at once in the timer (1,000 of them at 20k requests/s, about
a millisecond of the loop) still showed in the p99; encoded per iteration, the same work comes in pieces
of a few dozen records, and rows are held for one iteration only. A ``CallRecord`` is untracked by the GC
(``gc=False``); where no sink reads records, they are freed on the loop right after their encoding, not by
a sink's thread holding the GIL. Counting the metrics from the rows in one C loop per iteration, instead
of building a record per request and counting that, is most of what the request metrics cost less
(docs/performance.md).
Client keys are never part of a record.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

import msgspec

from gateway.limits.pricing import PriceTable
from gateway.observe.callrecord import CallRecord
from gateway.observe.config import RecordsConfig
from gateway.observe.rows import LineWriter, Prices, RowBatch, dialect_of, encode_rows, to_record, to_records

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.observe.genai import GenAIMetrics
    from gateway.observe.sinks import Sink

__all__ = ["CallRecord", "RecordSink", "Redactor", "dialect_of", "to_record"]

log = logging.getLogger("gateway.records")

#: seconds a stopping worker's sinks may keep retrying what they hold: the supervisor kills a worker
#: 5 s after ``[server] drain_timeout``, which the requests' drain may have used up
CLOSE_TIMEOUT = 4.0

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

    ``emit(row)``: what the engine calls per finished request (``RowBatch.emit``, an attribute: # PERF:
    the engine's call goes straight to the compiled method).

    ``out``: a file object written synchronously in the flush instead of the configured sinks (tests in
    process); ``enabled``: call records on; ``metrics``: the GenAI metrics the records are counted into
    (their being set also makes the engine emit with records off).
    """

    def __init__(self, out: IO[bytes] | None = None, enabled: bool = True, interval: float | None = None, *,
                 config: RecordsConfig | None = None, sinks: Sequence[Sink] | None = None,
                 metrics: GenAIMetrics | None = None, prices: PriceTable | None = None,
                 close_timeout: float | None = None, consumers: Sequence[Sink] = ()) -> None:
        cfg = config or RecordsConfig()
        #: the usage roll-ups and the anomaly detector (``gateway.observe.usage``, ``.anomaly``): offered
        #: every record, like sinks, also with call records off
        self._consumers = list(consumers)
        self.records_on = enabled or bool(self._consumers)
        self.metrics = metrics
        #: the engine's switch: emit a tuple per request
        self.enabled = enabled or metrics is not None or bool(self._consumers)
        self._out = out
        self._sinks: list[Sink] = list(sinks or ()) if out is None and enabled else []
        if out is None and enabled and sinks is None:
            from gateway.observe.sinks import StreamSink

            self._sinks = [StreamSink("stderr", queue=cfg.queue)]
        self._interval = cfg.flush_interval if interval is None else interval
        self._bound = cfg.queue
        self._prices = Prices(prices) if prices is not None else None
        self._close_timeout = CLOSE_TIMEOUT if close_timeout is None else close_timeout
        #: the rows of the current loop iteration, and the drain that takes them
        self._batch = RowBatch(self._schedule_drain)
        self.emit: Callable[[tuple[Any, ...]], None] = self._batch.emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_handle: asyncio.Handle | None = None
        #: what waits for the flush: each drain's JSON lines, and its records when a sink or a consumer
        #: reads records (OTLP, the roll-ups); how many records that is
        self._lines: list[bytes] = []
        self._rows: list[CallRecord] = []
        self._held = 0
        self._encoding = out is not None or bool(self._sinks)
        self._keep_records = bool(self._consumers) or any(s.wants_records for s in self._sinks)
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._encode_lines: Callable[[Sequence[CallRecord]], bytes] = msgspec.json.Encoder().encode_lines
        self._writer = LineWriter()
        self._bodies = "none"
        self._redactor = Redactor()
        self._configure(cfg)
        #: records dropped because ``[records] queue`` of them waited for the flush already (the loop could
        #: not keep up); their requests are still counted in the metrics
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
                   prices=PriceTable.load(overrides=config.pricing), consumers=_consumers(config, worker))

    def _configure(self, cfg: RecordsConfig) -> None:
        self._bodies = cfg.bodies
        self._redactor = Redactor(cfg.redact_fields, cfg.max_body_bytes)

    def reload(self, config: Config) -> None:
        """``[records]`` bodies, redaction and ``[pricing]`` of a reloaded config (sinks: on restart)."""
        self._configure(config.records)
        self._prices = Prices(PriceTable.load(overrides=config.pricing))
        if self.metrics is not None:
            self.metrics.set_labels(config.metrics.labels)

    @property
    def sinks(self) -> Sequence[Sink]:
        return self._sinks

    def _all(self) -> list[Sink]:
        return [*self._sinks, *self._consumers] if self._consumers else self._sinks

    # -- the loop's side

    @property
    def emitted(self) -> int:
        """Rows the engine emitted (one per finished request)."""
        return int(self._batch.count)

    def start(self) -> None:
        if not self.enabled or self._loop is not None:
            return
        for s in self._all():
            s.start()
        self._loop = asyncio.get_running_loop()

    def _arm(self) -> None:
        """(Records held) the flush, ``flush_interval`` from now, unless one is due already: an idle
        worker has no timer."""
        loop = self._loop
        if self._handle is None and not self._closed and loop is not None and not loop.is_closed():
            self._handle = loop.call_later(self._interval, self._tick)

    def _schedule_drain(self) -> None:
        """(The first row of a loop iteration) the drain at the iteration's end; at once without a loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._drain()
        elif self._drain_handle is None:
            self._drain_handle = loop.call_soon(self._drain)

    def _drain(self) -> None:
        """The rows emitted so far: counted into the metrics, converted into records that wait for the
        flush (see the module's table)."""
        self._drain_handle = None
        rows = self._batch.take()
        if not rows:
            return
        try:
            if self.metrics is not None:
                self.metrics.observe_rows(rows, self._prices)
            if self.records_on:
                self._keep(rows)
        except Exception:  # never the request path's problem; the rows are lost, not the loop
            log.exception("records: %d row(s) could not be counted", len(rows))

    def _keep(self, rows: list[tuple[Any, ...]]) -> None:
        """The rows' records (up to ``[records] queue`` held), encoded now: a drain holds an iteration's
        rows, so the encoding is spread over the iterations and no flush holds the loop for long."""
        room = max(self._bound - self._held, 0)
        if self._bodies == "none" and self._encoding and not self._keep_records:
            # PERF: the lines written straight from the rows, no CallRecord (``rows.encode_rows``), into
            # the writer's buffer, which holds every drain's lines until the flush takes them as one
            # ``bytes`` (no copy per drain, no join)
            kept = encode_rows(rows, self._prices, self._writer, room)
            self.dropped += len(rows) - kept
            if kept:
                self._held += kept
                self._arm()
            return
        recs: list[CallRecord] = []
        kept = to_records(rows, self._prices, recs, room)
        self.dropped += len(rows) - kept
        if not kept:
            return
        if self._bodies != "none":
            self._add_bodies(rows, recs)
        self._held += kept
        if self._encoding:
            self._spill()  # after what the writer holds (``[records] bodies`` changed by a reload)
            self._lines.append(self._encode_lines(recs))
        if self._keep_records:
            self._rows.extend(recs)
        self._arm()

    def _add_bodies(self, rows: list[tuple[Any, ...]], recs: list[CallRecord]) -> None:
        red = self._redactor
        both = self._bodies == "both"
        for row, rec in zip(rows, recs, strict=False):
            if len(row) <= 23:
                continue
            request = row[22]
            cut: list[str] = []
            rec.request_body, c = red.text(request.body if request is not None else None)
            if c:
                cut.append("request")
            if both:
                rec.response_body, c = red.text(row[23])
                if c:
                    cut.append("response")
            rec.truncated = cut or None

    def _tick(self) -> None:
        try:
            self._drain()  # (the timer is still set: the drain's records go with this flush)
            self._flush()
        except Exception:  # never the loop's problem; the next records arm the timer again
            log.exception("records: a flush failed")
        finally:
            self._handle = None

    def _spill(self) -> None:
        """What the writer holds joins ``_lines``, in order."""
        if self._writer.size:
            self._lines.append(self._writer.take())

    def _flush(self) -> None:
        """Offer what the drains encoded since the last flush to every sink (and its records to the
        consumers), as one chunk."""
        n = self._held
        if not n:
            return
        self._spill()
        lines, records = self._lines, self._rows
        self._lines, self._rows, self._held = [], [], 0
        if self._consumers:
            for c in self._consumers:
                c.offer((b"", n, records))
        if not self._encoding:
            return
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        if self._out is not None:
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                pass
            return
        chunk = (data, n, records)
        for s in self._sinks:
            s.offer(chunk)

    async def close(self) -> None:
        """Convert and hand off every held record, then let each sink deliver its queue (until
        ``CLOSE_TIMEOUT``) and stop. Records emitted afterwards are only counted."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._drain()
        self._flush()
        if self._all():
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, s.close, self._close_timeout)
                                   for s in self._all()))
        self.records_on = False

    def snapshot(self) -> list[dict[str, Any]]:
        """Records not yet handed off (for tests)."""
        self._drain()
        self._spill()
        if self._keep_records:
            return [msgspec.to_builtins(r) for r in self._rows]
        return [msgspec.json.decode(line) for piece in self._lines for line in piece.splitlines()]

    # -- metrics

    def samples(self) -> tuple[list[Any], list[Any]]:
        """(counters, gauges) of the records, the sinks and the GenAI metrics, for the worker's snapshot
        (with every request answered so far: the rows of this iteration are drained first)."""
        self._drain()
        counters: list[Any] = [("gateway_records_dropped_total", (), float(self.dropped))]
        gauges: list[Any] = []
        for s in self._all():
            counters.append(("gateway_record_sink_records_total", (s.name,), float(s.written)))
            counters.append(("gateway_record_sink_failures_total", (s.name,), float(s.failures)))
            for reason, n in s.dropped.items():
                counters.append(("gateway_record_sink_dropped_total", (s.name, reason), float(n)))
            gauges.append(("gateway_record_sink_queued", (s.name,), float(s.queued)))
        for c in self._consumers:
            more = getattr(c, "metric_samples", None)
            if more is not None:
                mc, mg = more()
                counters.extend(mc)
                gauges.extend(mg)
        if self.metrics is not None:
            counters.extend(self.metrics.samples())
        return counters, gauges


def _consumers(config: Config, worker: int) -> list[Sink]:
    """The worker's usage roll-ups (``[usage]``, written to ``[store]``) and anomaly detector
    (``[anomaly]``), when enabled."""
    out: list[Sink] = []
    if config.anomaly.enabled:
        from gateway.observe.anomaly import AnomalyDetector

        out.append(AnomalyDetector(config.anomaly, worker))
    uc = config.usage
    if not uc.enabled:
        return out
    from gateway.observe.usage import UsageRollup
    from gateway.store.factory import StoreOptions, open_store

    st = config.store
    options = StoreOptions(
        url=st.url, prefix=st.prefix, poll_interval=st.poll_interval, busy_timeout=st.busy_timeout,
        min_replicas_acked=st.min_replicas_acked, replica_ack_timeout=st.replica_ack_timeout,
    )
    out.append(UsageRollup(uc, lambda: open_store(options)))
    return out
