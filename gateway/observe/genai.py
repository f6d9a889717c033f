"""Request metrics under the OpenTelemetry GenAI semantic conventions' names, in Prometheus form.

Counted from the call records in the records' flush (``records.RecordSink``), never on the request path:
a request costs the tuple it already hands to the records. Each distinct label set is a ``_Series`` made
once and kept (its histograms are plain lists), so a record costs a tuple, a dict lookup and a few
``bisect``s. Histograms are exported as Prometheus histograms (``_bucket`` with ``le``, ``_sum``,
``_count``), summed over the workers like every other counter (``metrics.aggregate``).

The label set: ``endpoint``, ``dialect``, ``model``, ``provider``, ``deployment``, ``status``, plus
``tenant`` and ``key`` when ``[metrics] labels`` asks for them (one series per key: mind the cardinality).
Beyond ``MAX_SERIES`` label sets in a worker, further ones are counted under the label values ``_other``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.observe.records import CallRecord

__all__ = ["BUCKETS", "LABELS", "MAX_SERIES", "OPTIONAL_LABELS", "TOKEN_TYPES", "GenAIMetrics"]

LABELS = ("endpoint", "dialect", "model", "provider", "deployment", "status")
OPTIONAL_LABELS = ("tenant", "key")
TOKEN_TYPES = ("input", "output", "cached", "reasoning")
MAX_SERIES = 2000

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
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v

    def samples(self, name: str, labels: tuple[str, ...]) -> Iterable[tuple[str, tuple[str, ...], float]]:
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            yield (f"{name}_bucket", (*labels, _le(bound)), float(total))
        total += self.counts[-1]
        yield (f"{name}_bucket", (*labels, "+Inf"), float(total))
        yield (f"{name}_sum", labels, self.sum)
        yield (f"{name}_count", labels, float(total))


def _le(bound: float) -> str:
    return repr(float(bound))


class _Series:
    """One label set's figures."""

    __slots__ = ("cost", "duration", "labels", "overhead", "requests", "tokens", "tpot", "ttft", "upstream")

    def __init__(self, labels: tuple[str, ...]) -> None:
        self.labels = labels
        self.requests = 0
        self.cost = 0.0
        self.duration = _Hist(BUCKETS["gen_ai_client_operation_duration_seconds"])
        self.upstream = _Hist(BUCKETS["gen_ai_server_request_duration_seconds"])
        self.overhead = _Hist(BUCKETS["gateway_overhead_seconds"])
        self.ttft = _Hist(BUCKETS["gen_ai_server_time_to_first_token_seconds"])
        self.tpot = _Hist(BUCKETS["gen_ai_server_time_per_output_token_seconds"])
        self.tokens = [_Hist(BUCKETS["gen_ai_client_token_usage"]) for _ in TOKEN_TYPES]


class GenAIMetrics:
    """The worker's request metrics, fed with call records (``observe``), read by its snapshot."""

    def __init__(self, optional: Sequence[str] = ()) -> None:
        self._series: dict[tuple[Any, ...], _Series] = {}
        self.tenant = self.key = False
        self.set_labels(optional)

    def set_labels(self, optional: Sequence[str]) -> None:
        """Which opt-in labels are on (a reload that changes them starts new series; old ones stay)."""
        self.tenant = "tenant" in optional
        self.key = "key" in optional

    def _series_of(self, r: CallRecord) -> _Series:
        labels: tuple[str, ...] = (r.endpoint or "", r.dialect or "", r.model or "", r.provider or "",
                                   r.deployment or "", str(r.status))
        if self.tenant or self.key:
            labels = (*labels, (r.tenant or "") if self.tenant else "", (r.key_id or "") if self.key else "")
        else:
            labels = (*labels, "", "")
        s = self._series.get(labels)
        if s is None:
            if len(self._series) >= MAX_SERIES:
                labels = ("_other",) * len(labels)
                s = self._series.get(labels)
            if s is None:
                s = self._series[labels] = _Series(labels)
        return s

    def observe(self, records: Iterable[CallRecord]) -> None:
        series = self._series_of
        for r in records:
            s = series(r)
            s.requests += 1
            s.duration.observe(r.duration_ms / 1000.0)
            s.overhead.observe(r.overhead_ms / 1000.0)
            if r.upstream_ms is not None:
                s.upstream.observe(r.upstream_ms / 1000.0)
            if r.cost_usd:
                s.cost += r.cost_usd
            if r.prompt_tokens is not None:
                tok = s.tokens
                tok[0].observe(r.prompt_tokens)
                if r.completion_tokens is not None:
                    tok[1].observe(r.completion_tokens)
                if r.cached_tokens:
                    tok[2].observe(r.cached_tokens)
                if r.reasoning_tokens:
                    tok[3].observe(r.reasoning_tokens)
            if r.ttft_ms is not None and r.status < 400:
                ttft = r.ttft_ms / 1000.0
                s.ttft.observe(ttft)
                out = r.completion_tokens
                if out is not None and out > 1:
                    s.tpot.observe(max(r.duration_ms / 1000.0 - ttft, 0.0) / (out - 1))

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
            if any(s.upstream.counts):
                add(s.upstream.samples("gen_ai_server_request_duration_seconds", lab))
            if any(s.ttft.counts):
                add(s.ttft.samples("gen_ai_server_time_to_first_token_seconds", lab))
            if any(s.tpot.counts):
                add(s.tpot.samples("gen_ai_server_time_per_output_token_seconds", lab))
            for kind, h in zip(TOKEN_TYPES, s.tokens, strict=True):
                if any(h.counts):
                    add(h.samples("gen_ai_client_token_usage", (*lab, kind)))
        return out
