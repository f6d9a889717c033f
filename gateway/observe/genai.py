"""Request metrics under the OpenTelemetry GenAI semantic conventions' names, in Prometheus form.

Counted from the engine's rows of finished requests (``rows``: the tuple ``Engine._settle`` hands to the
records' hub), a loop iteration's rows at once, at the end of that iteration (``records.RecordSink``):
no ``CallRecord`` is built for them and nothing is looked up per request but the series. Each distinct
label set is a ``_Series`` made once and kept in a dict keyed by the row's own objects, so a row costs a
tuple, a dict lookup and a few bucket scans. Compiled from this source (``SOURCE_MODULES``, typed by
``genai.pxd``; the ``.py`` is the twin). Histograms are exported as Prometheus histograms (``_bucket``
with ``le``, ``_sum``, ``_count``), summed over the workers like every other counter
(``metrics.aggregate``).

The label set: ``endpoint``, ``dialect``, ``model``, ``provider``, ``deployment``, ``status``, plus
``tenant`` and ``key`` when ``[metrics] labels`` asks for them (one series per key: mind the cardinality).
Beyond ``MAX_SERIES`` label sets in a worker, further ones are counted under the label values ``_other``.
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.limits.pricing import price_of

if TYPE_CHECKING:
    from gateway.observe.callrecord import CallRecord
    from gateway.observe.rows import Prices

__all__ = [
    "BUCKETS", "LABELS", "MAX_SERIES", "OPTIONAL_LABELS", "TOKEN_TYPES", "GenAIMetrics", "usage_cached",
    "usage_reasoning",
]

LABELS = ("endpoint", "dialect", "model", "provider", "deployment", "status")
OPTIONAL_LABELS = ("tenant", "key")
TOKEN_TYPES = ("input", "output", "cached", "reasoning")
MAX_SERIES = 2000

#: the client dialect of a path (``rows.dialect_of``; the rest speak OpenAI)
_DIALECTS = {"/v1/messages": "anthropic", "/v1/responses": "openai_responses"}

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
            40.96, 81.92)
#: the bucket bounds of each histogram (the semantic conventions' advice, with finer low ends: a gateway
#: and its upstreams answer in milliseconds)
BUCKETS: dict[str, tuple[float, ...]] = {
    "gen_ai_client_operation_duration_seconds": _SECONDS,
    "gen_ai_server_request_duration_seconds": _SECONDS,
    "gen_ai_server_time_to_first_token_seconds": (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
                                                  0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    "gen_ai_server_time_per_output_token_seconds": (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                    0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
    "gen_ai_client_token_usage": (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
    "gateway_overhead_seconds": (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1),
}


class _Hist:
    __slots__ = ("_bounds", "_counts", "bounds", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        # PERF: C arrays when compiled (typed memoryviews in genai.pxd): the scan reads C doubles and the
        # increment allocates no int object
        self._bounds = array.array("d", bounds)
        self._counts = array.array("q", [0] * (len(bounds) + 1))  # the last: above every bound
        self.sum = 0.0

    @property
    def counts(self) -> list[int]:
        return list(self._counts)

    def observe(self, v: float) -> None:
        bounds = self._bounds
        n = len(self.bounds)
        i = 0
        while i < n and v > bounds[i]:  # a linear scan of a dozen bounds beats a call to bisect
            i += 1
        self._counts[i] += 1
        self.sum += v

    def samples(self, name: str, labels: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], float]]:
        out = []
        total = 0
        counts = self.counts
        for bound, n in zip(self.bounds, counts, strict=False):
            total += n
            out.append((f"{name}_bucket", (*labels, _le(bound)), float(total)))
        total += counts[len(self.bounds)]  # (no negative index: compiled without wraparound)
        out.append((f"{name}_bucket", (*labels, "+Inf"), float(total)))
        out.append((f"{name}_sum", labels, self.sum))
        out.append((f"{name}_count", labels, float(total)))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))


def _ms(x: float) -> float:
    return x * 1000.0 // 1.0 / 1000.0  # as the record has it (``rows._ms``): three decimals, cut


def usage_cached(usage: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` when positive (an object or a mapping), else None:
    ``pricing.cached_tokens`` without its Python call (# PERF: OpenAI's usual usage has details)."""
    details: Any = getattr(usage, "prompt_tokens_details", None)
    if details is None:
        return None
    if isinstance(details, dict):
        n = details.get("cached_tokens")
    else:
        n = getattr(details, "cached_tokens", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n else None


def usage_reasoning(usage: Any) -> int | None:
    """``usage.completion_tokens_details.reasoning_tokens`` when positive, else None."""
    details: Any = getattr(usage, "completion_tokens_details", None)
    if details is None:
        return None
    if isinstance(details, dict):
        n = details.get("reasoning_tokens")
    else:
        n = getattr(details, "reasoning_tokens", None)
    return n if isinstance(n, int) and n > 0 else None


class _Series:
    """One label set's figures."""

    __slots__ = ("cost", "duration", "labels", "overhead", "requests", "tok_cached", "tok_input",
                 "tok_output", "tok_reasoning", "tpot", "ttft", "upstream")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.requests = 0
        self.cost = 0.0
        self.duration = _Hist(BUCKETS["gen_ai_client_operation_duration_seconds"])
        self.upstream = _Hist(BUCKETS["gen_ai_server_request_duration_seconds"])
        self.overhead = _Hist(BUCKETS["gateway_overhead_seconds"])
        self.ttft = _Hist(BUCKETS["gen_ai_server_time_to_first_token_seconds"])
        self.tpot = _Hist(BUCKETS["gen_ai_server_time_per_output_token_seconds"])
        tokens = BUCKETS["gen_ai_client_token_usage"]
        self.tok_input = _Hist(tokens)
        self.tok_output = _Hist(tokens)
        self.tok_cached = _Hist(tokens)
        self.tok_reasoning = _Hist(tokens)

    def token_hists(self) -> tuple[_Hist, _Hist, _Hist, _Hist]:
        """In ``TOKEN_TYPES`` order."""
        return (self.tok_input, self.tok_output, self.tok_cached, self.tok_reasoning)


class GenAIMetrics:
    """The worker's request metrics, fed with call records (``observe``), read by its snapshot."""

    __slots__ = ("_last", "_last_key", "_series", "key", "tenant")

    def __init__(self, optional: Sequence[str] = ()) -> None:
        self._series: dict[tuple[Any, ...], _Series] = {}
        #: the last row's series and its key (# PERF: consecutive rows are mostly of one series; comparing
        #: the key with the last one, mostly identical objects, costs less than hashing it)
        self._last_key: tuple[Any, ...] = ()
        self._last: _Series | None = None
        self.tenant = self.key = False
        self.set_labels(optional)

    def set_labels(self, optional: Sequence[str]) -> None:
        """Which opt-in labels are on (a reload that changes them starts new series; old ones stay)."""
        self.tenant = "tenant" in optional
        self.key = "key" in optional

    def _series_of(self, r: CallRecord) -> _Series:
        # PERF: the memo's key holds the record's own objects (the status as an int): no string is made
        # per record; the label strings are made once per series
        key = (r.endpoint, r.path, r.model, r.provider, r.deployment, r.status,
               r.tenant if self.tenant else None, r.key_id if self.key else None)
        s = self._series.get(key)
        if s is None:
            s = self._new_series(key, r)
        return s

    def _new_series(self, key: tuple[Any, ...], r: CallRecord) -> _Series:
        if len(self._series) >= MAX_SERIES:
            return self._other()
        tenant = (r.tenant or "") if self.tenant else ""
        key_id = (r.key_id or "") if self.key else ""
        labels = (r.endpoint or "", r.dialect or "", r.model or "", r.provider or "", r.deployment or "",
                  str(r.status), tenant, key_id)
        s = self._series[key] = _Series(labels)
        return s

    def _other(self) -> _Series:
        other = ("_other",) * (len(LABELS) + len(OPTIONAL_LABELS))
        s = self._series.get(other)
        if s is None:
            s = self._series[other] = _Series(other)
        return s

    def observe(self, records: Iterable[CallRecord]) -> None:
        for r in records:
            self.observe_one(r)

    def observe_one(self, r: CallRecord) -> None:
        """One call record (the rows' path, ``observe_rows``, counts the same figures)."""
        self._count(self._series_of(r), r.status, r.duration_ms / 1000.0, r.overhead_ms / 1000.0,
                    r.upstream_ms, r.cost_usd, r.prompt_tokens, r.completion_tokens, r.cached_tokens,
                    r.reasoning_tokens, r.ttft_ms)

    def observe_rows(self, rows: list[tuple[Any, ...]], prices: Prices | None = None) -> None:
        """The engine's rows (``rows.to_record`` reads the same tuple), as their call records would count:
        the same truncation of the times, the cost from ``prices`` when no phase priced the call."""
        for row in rows:
            self.observe_row(row, prices)

    def observe_row(self, row: tuple[Any, ...], prices: Prices | None = None) -> None:
        status = row[4]
        endpoint = ttft_ms = None
        if len(row) > 21:
            endpoint, ttft_ms = row[20], row[21]
        key = row[16]
        # PERF: the memo's key holds the row's own objects (the status as an int), as ``_series_of``'s
        tenant = key_id = None
        if key is not None and (self.tenant or self.key):
            tenant = key.tenant.id if self.tenant else None
            key_id = key.id if self.key else None
        skey = (endpoint, row[3], row[7], row[8], row[17], status, tenant, key_id)
        last = self._last
        if last is not None and skey == self._last_key:
            s = last
        else:
            s = self._series.get(skey) or self._new_row_series(skey, row, tenant, key_id)
            self._last_key, self._last = skey, s
        usage = row[13]
        cost = row[19]
        up = row[12]
        if usage is not None:
            prompt, out = usage.prompt_tokens, usage.completion_tokens
            cached = usage_cached(usage) if hasattr(usage, "prompt_tokens_details") else None
            reasoning = usage_reasoning(usage)
            if cost is None and prices is not None:
                price = prices.price(row[9], row[7])
                if price is not None:
                    cost = price_of(price, prompt, out, cached or 0)
        else:
            prompt = out = cached = reasoning = None
        self._count(s, status, _ms(row[5]) / 1000.0, float(row[6] or 0.0) / 1000.0,
                    _ms(up) if up is not None else None, cost, prompt, out, cached, reasoning,
                    _ms(ttft_ms) if ttft_ms is not None else None)

    def _new_row_series(self, key: tuple[Any, ...], row: tuple[Any, ...], tenant: str | None,
                        key_id: str | None) -> _Series:
        if len(self._series) >= MAX_SERIES:
            return self._other()
        endpoint = key[0]
        path = row[3]
        dialect = _DIALECTS.get(path, "openai") if endpoint else _DIALECTS.get(path)
        labels = (endpoint or "", dialect or "", row[7] or "", row[8] or "", row[17] or "", str(row[4]),
                  tenant or "", key_id or "")
        s = self._series[key] = _Series(labels)
        return s

    def _count(self, s: _Series, status: int, duration: float, overhead: float, up: float | None,
               cost: float | None, prompt: int | None, out: int | None, cached: int | None,
               reasoning: int | None, ttft_ms: float | None) -> None:
        """One request's figures into its series (``up`` and ``ttft_ms`` in ms, as the record has them)."""
        s.requests += 1
        s.duration.observe(duration)
        s.overhead.observe(overhead)
        if up is not None:
            s.upstream.observe(up / 1000.0)
        if cost:
            s.cost += cost
        if prompt is not None:
            s.tok_input.observe(prompt)
            if out is not None:
                s.tok_output.observe(out)
            if cached:
                s.tok_cached.observe(cached)
            if reasoning:
                s.tok_reasoning.observe(reasoning)
        if ttft_ms is not None and status < 400:
            ttft = ttft_ms / 1000.0
            s.ttft.observe(ttft)
            if out is not None and out > 1:
                s.tpot.observe(max(duration - ttft, 0.0) / (out - 1))

    def samples(self) -> list[tuple[str, tuple[str, ...], float]]:
        """Counters (histograms as their ``_bucket``/``_sum``/``_count`` series) in the snapshot's form;
        the labels are ``LABELS`` then ``tenant`` and ``key`` (empty when not opted in)."""
        out: list[tuple[str, tuple[str, ...], float]] = []
        add = out.extend
        for s in self._series.values():
            lab = s.labels
            out.append(("gateway_requests_total", lab, float(s.requests)))
            if s.cost:
                out.append(("gateway_cost_usd_total", lab, s.cost))
            add(s.duration.samples("gen_ai_client_operation_duration_seconds", lab))
            add(s.overhead.samples("gateway_overhead_seconds", lab))
            if s.upstream.sum or any(s.upstream.counts):
                add(s.upstream.samples("gen_ai_server_request_duration_seconds", lab))
            if any(s.ttft.counts):
                add(s.ttft.samples("gen_ai_server_time_to_first_token_seconds", lab))
            if any(s.tpot.counts):
                add(s.tpot.samples("gen_ai_server_time_per_output_token_seconds", lab))
            for kind, h in zip(TOKEN_TYPES, s.token_hists(), strict=True):
                if any(h.counts):
                    add(h.samples("gen_ai_client_token_usage", (*lab, kind)))
        return out
