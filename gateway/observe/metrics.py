"""Prometheus metrics, node-wide across the workers (docs/metrics.md).

Theory of operation:

    when                 | what
    ---------------------+-----------------------------------------------------------------------------------
    a request            | nothing here: the capabilities keep plain counters (``LimitStats``, ``LeaseStats``,
                         | ``BudgetStats``, ``DeploymentStats``) that cost an attribute increment
    every ``interval``   | each worker turns its counters into a ``Snapshot`` and writes it to its own file in
    (a loop timer)       | the node's metrics directory: a temporary file, then ``os.replace``, so a reader
                         | never sees half a file
    a scrape             | the worker that receives it refreshes its own snapshot, reads every snapshot in
                         | the directory and sums them: counters over every snapshot, gauges over the workers
                         | alive now; ``prometheus_client`` renders the sums (a custom collector)
    the node starts      | the process that starts the workers (the supervisor, or granian's main process)
                         | empties the configured directory or makes a fresh one under the system temp
                         | directory, and names it to the workers in ``GATEWAY_METRICS_DIR``; a fresh one is
                         | removed when it exits

Counters stay monotonic when a worker dies: its last snapshot stays in the directory and a respawned worker
is a new process that writes a new file, so no sum ever goes back. What a killed worker counted after its
last write (at most ``interval``) is lost; a worker that exits cleanly writes a last snapshot. Other
workers' figures in a scrape are at most ``interval`` old.

Why files and not ``prometheus_client``'s multiprocess mode: there every increment writes a value into a
memory-mapped file under a lock, on the request path; here the request path only increments integers and
the work is one small write per worker per ``interval``, whatever the traffic.

A worker without ``GATEWAY_METRICS_DIR`` (an engine run in-process, a test) answers with its own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from gateway import errors
from gateway.observe.genai import LABELS as _REQ
from gateway.observe.genai import OPTIONAL_LABELS as _OPT
from gateway.phases import Reply

if TYPE_CHECKING:
    from gateway.app import Request
    from gateway.config import Config
    from gateway.config.schema import MetricsConfig

__all__ = [
    "CONTENT_TYPE",
    "ENV_METRICS_DIR",
    "METRICS",
    "SUPERVISOR",
    "MetricDef",
    "MetricsExporter",
    "NodeDir",
    "Snapshot",
    "aggregate",
    "engine_samples",
    "render",
    "write_supervisor_snapshot",
]

log = logging.getLogger("gateway.metrics")

#: the node's snapshot directory, set by the process that starts the workers
ENV_METRICS_DIR = "GATEWAY_METRICS_DIR"
#: the text exposition format every Prometheus version reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: a snapshot older than this many of its writer's intervals (and at least ``_STALE_MIN`` seconds) is stale:
#: its writer's loop is stuck, or the pid is someone else's now; its gauges no longer count
_STALE_INTERVALS = 5.0
_STALE_MIN = 5.0
_PREFIX = "snapshot-"
_SUFFIX = ".json"
_CHALLENGE = [("www-authenticate", 'Bearer realm="gateway-metrics"')]

#: (metric name, label values in the metric's label order, value)
Sample = tuple[str, tuple[str, ...], float]
Totals = dict[tuple[str, tuple[str, ...]], float]


class MetricDef(NamedTuple):
    """One exported metric. ``name`` is the exposition name (counters end in ``_total``)."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str


def _c(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "counter", labels, help)


def _g(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "gauge", labels, help)


def _h(name: str, help: str, *labels: str) -> MetricDef:
    return MetricDef(name, "histogram", labels, help)


#: the labels of the request metrics (``gateway.observe.genai``): tenant and key are empty unless opted in
_REQUEST_LABELS = (*_REQ, *_OPT)


#: every metric, in exposition order; docs/metrics.md lists the same (tests/test_metrics.py checks it)
METRICS: tuple[MetricDef, ...] = (
    # -- limits
    _c("gateway_limits_admitted_total",
       "Requests admitted by every rate, token and concurrency limit that applies to them."),
    _c("gateway_limits_waited_total",
       "Admissions that waited for the limits' shared state (no lease in the worker's memory covered them)."),
    _c("gateway_limits_refused_total",
       "Requests refused with 429 by a limit, by the dimension of the limit that refused.", "dimension"),
    _c("gateway_limits_unavailable_total",
       "Requests answered 503 because the limits' shared state was unavailable (fail_closed policies)."),
    _c("gateway_limits_degraded_total",
       "Times a worker's client of the limits' shared state lost it and went to fail-open (degraded) mode.",
       "client"),
    _g("gateway_limits_degraded_workers",
       "Workers that cannot reach the limits' shared state now (fail_open policies admit at each worker's "
       "share meanwhile)."),
    _c("gateway_limits_tokens_charged_total",
       "Tokens charged at reconciliation beyond the admission's estimate (token limits)."),
    _c("gateway_limits_tokens_refunded_total",
       "Tokens refunded at reconciliation below the admission's estimate (token limits)."),
    _c("gateway_limits_usage_counted_total",
       "Responses whose usage never arrived, counted with tiktoken."),
    _c("gateway_limits_lease_grants_total", "Leases granted by the limits' shared state.", "client"),
    _c("gateway_limits_lease_refusals_total", "Lease requests the limits' shared state refused.", "client"),
    _c("gateway_shared_state_calls_total",
       "Round trips to the limits' shared state (the node's table or Redis).", "client"),
    _c("gateway_shared_state_ops_total", "Operations carried by those round trips.", "client"),
    # -- budgets and spend
    _c("gateway_budget_blocked_total", "Requests refused with 429 insufficient_quota by a block budget."),
    _c("gateway_budget_downgraded_total", "Requests served by a downgrade budget's downgrade_model."),
    _c("gateway_budget_alerts_total", "Budget alerts fired (once per budget, key or tenant, and period)."),
    _c("gateway_budget_alert_webhook_failures_total", "Budget alert webhooks that failed."),
    _c("gateway_budget_reservations_total",
       "Budget reservations, by where they were made: the worker's hold, or a shared-state operation.",
       "via"),
    _c("gateway_budget_reservation_refusals_total",
       "Budget reservations the shared state refused (the budget could not hold them)."),
    _c("gateway_spend_usd_total", "US dollars of spend recorded for keys and tenants."),
    _c("gateway_spend_writes_total", "Batches of spend written to the store."),
    _c("gateway_spend_write_failures_total", "Batches of spend the store could not take (kept and retried)."),
    _c("gateway_spend_reads_total", "Reads of a key's or tenant's spend from the store."),
    # -- routing
    _c("gateway_routing_attempts_total",
       "Attempts sent to a routed model's deployment, by how they ended.", "model", "deployment", "outcome"),
    _c("gateway_routing_failovers_total",
       "Attempts sent to a deployment after another attempt of the request failed: a retry on the same "
       "model, or the first attempt on a fallback model.", "model", "deployment", "kind"),
    _c("gateway_routing_breaker_opens_total",
       "Times a worker opened the deployment's circuit breaker (health-check ejections included).",
       "model", "deployment"),
    _g("gateway_routing_breaker_state",
       "Workers whose circuit breaker of the deployment is in this state.", "model", "deployment", "state"),
    # -- the response cache
    _c("gateway_cache_requests_total",
       "Requests to cached models, by outcome: hit (by tier: memory, redis or semantic), miss, or bypass.",
       "outcome", "tier"),
    _c("gateway_cache_bypass_total",
       "Requests to cached models not looked up, by why: no_cache (the client's Cache-Control), policy "
       "(when = deterministic and the request is not), redis_down (the shared tier failed).", "reason"),
    _c("gateway_cache_stores_total", "Answers stored in the cache (each once, in every tier it has)."),
    _c("gateway_cache_not_stored_total",
       "Successful answers not stored, by why: too_large (over max_entry_bytes), unstorable (a form the "
       "cache cannot replay: several choices, logprobs, a cut stream).", "reason"),
    _c("gateway_cache_errors_total", "Calls to the cache's Redis tier that failed or timed out."),
    _c("gateway_cache_evictions_total", "Entries the memory tier evicted to stay within its byte bound."),
    _g("gateway_cache_memory_bytes", "Bytes held by the workers' memory tiers."),
    _g("gateway_cache_memory_entries", "Entries held by the workers' memory tiers."),
    _c("gateway_cache_semantic_lookups_total",
       "Semantic lookups after an exact miss, by outcome: hit, miss, or error (the embeddings call failed "
       "or timed out: the request went on as a miss).", "outcome"),
    _c("gateway_cache_semantic_bypass_total",
       "Requests to semantic models not looked up semantically, by why: tools, content (not text only), "
       "temperature (above max_temperature), too_long (over max_chars).", "reason"),
    _c("gateway_cache_semantic_evictions_total", "Vectors the semantic index dropped to stay within "
       "max_entries."),
    _c("gateway_cache_semantic_synced_total", "Vectors read from the other workers' sync stream (Redis)."),
    _g("gateway_cache_semantic_entries", "Vectors held by the workers' semantic indexes."),
    _g("gateway_cache_semantic_bytes", "Bytes held by the workers' semantic indexes (arrays and an "
       "estimate per vector)."),
    # -- requests (counted from the call records: gateway.observe.genai)
    _c("gateway_requests_total", "Requests answered, by endpoint, dialect, model, provider, deployment and "
       "status.", *_REQUEST_LABELS),
    _h("gen_ai_client_operation_duration_seconds",
       "Duration of a request at the gateway, from its arrival to the end of its answer.", *_REQUEST_LABELS),
    _h("gen_ai_server_request_duration_seconds",
       "Time spent waiting for the upstream (every attempt), for requests that reached one.",
       *_REQUEST_LABELS),
    _h("gen_ai_server_time_to_first_token_seconds",
       "Streamed answers: time from the request's arrival to the start of the streamed answer.",
       *_REQUEST_LABELS),
    _h("gen_ai_server_time_per_output_token_seconds",
       "Streamed answers: time after the first token per further output token.", *_REQUEST_LABELS),
    _h("gen_ai_client_token_usage", "Tokens per request, by type: input, output, cached (of the input), "
       "reasoning (of the output).", *_REQUEST_LABELS, "gen_ai_token_type"),
    _h("gateway_overhead_seconds", "The gateway's own time per request (duration minus upstream wait).",
       *_REQUEST_LABELS),
    _c("gateway_cost_usd_total", "US dollars of the calls whose usage and model price are known.",
       *_REQUEST_LABELS),
    # -- call records
    _c("gateway_records_dropped_total",
       "Call records dropped before encoding: the worker held [records] queue of them already."),
    _c("gateway_record_sink_records_total", "Call records a sink delivered.", "sink"),
    _c("gateway_record_sink_dropped_total",
       "Call records a sink dropped: queue_full (its queue was full), rejected (an answer retrying cannot "
       "change), shutdown (still undelivered at the stop's deadline).", "sink", "reason"),
    _c("gateway_record_sink_failures_total", "Failed deliveries of a sink (each retry counts).", "sink"),
    _g("gateway_record_sink_queued", "Call records waiting in a sink's queue.", "sink"),
    # -- per-key anomalies (gateway.observe.anomaly)
    _c("gateway_key_anomalies_total",
       "Windows in which a key's request rate or error rate jumped far above its own baseline, by kind "
       "(request_rate, error_rate), counted by each worker that saw it.", "key", "kind"),
    _g("gateway_key_anomalous", "Workers that flagged the key in their last window.", "key", "kind"),
    _c("gateway_key_anomaly_webhook_failures_total", "Anomaly webhooks that failed."),
    _g("gateway_key_anomaly_tracked_keys", "Keys the workers' anomaly detectors follow."),
    # -- traces (gateway.observe.tracing)
    _c("gateway_trace_spans_exported_total", "Spans the collector accepted."),
    _c("gateway_trace_export_failures_total", "Failed span exports (each retry counts)."),
    _c("gateway_trace_spans_dropped_total",
       "Spans dropped: queue_full, rejected (an answer retrying cannot change), shutdown.", "reason"),
    _g("gateway_trace_spans_queued", "Spans waiting for export."),
    # -- the process model
    _c("gateway_worker_restarts_total",
       "Children (workers, the admin API) the supervisor replaced, by why: exited (after serving), "
       "start_failed (exited before it served), heartbeat (its event loop stopped running), reload_undone "
       "(a reloaded config no worker could apply or start with was undone).", "reason"),
    # -- the export itself
    _g("gateway_metrics_workers",
       "Worker snapshots summed in this scrape: live, stale (not written for 5 intervals) or exited "
       "(counters kept, gauges left out).", "state"),
)

_BY_NAME = {m.name: m for m in METRICS}
#: the ``worker`` of the supervisor's snapshot (its counters are summed; it is not counted as a worker)
SUPERVISOR = -2
_LIMIT_CLIENTS = ("requests", "tokens", "budgets")
_BREAKER_STATES = ("closed", "open", "half_open", "ejected")


class Snapshot(msgspec.Struct, frozen=True):
    """One worker's figures at ``written`` (Unix time): what its file holds."""

    pid: int
    worker: int
    written: float
    #: the writer's interval: how fresh its next snapshot will be
    interval: float
    counters: list[Sample]
    gauges: list[Sample]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Snapshot).decode


# --------------------------------------------------------------------------------------------------------
# A worker's figures


def engine_samples(engine: Any) -> tuple[list[Sample], list[Sample]]:
    """The counters and gauges of one worker's engine (``gateway.engine.Engine``), read on the loop."""
    from gateway.limits.reserve import BudgetStats
    from gateway.limits.shared import LeaseStats
    from gateway.limits.stats import LimitStats
    from gateway.routing.stats import all_deployment_stats

    counters: list[Sample] = []
    gauges: list[Sample] = []
    c = counters.append
    limits = engine.limits
    if limits is not None:
        st: LimitStats = limits.stats
        leases: tuple[LeaseStats, LeaseStats] = (limits.client.stats, limits.tokens.stats)
        budgets: BudgetStats = limits.budgets.stats
        degraded = limits.client.degraded or limits.tokens.degraded or limits.budgets.degraded
    else:  # no policies and no budgets: the same series, at zero
        st, leases, budgets, degraded = LimitStats(), (LeaseStats(), LeaseStats()), BudgetStats(), False
    c(("gateway_limits_admitted_total", (), st.admitted))
    c(("gateway_limits_waited_total", (), st.admitted_slow))
    c(("gateway_limits_refused_total", ("requests",), st.refused_requests))
    c(("gateway_limits_refused_total", ("tokens",), st.refused_tokens))
    c(("gateway_limits_refused_total", ("concurrency",), st.refused_concurrency))
    c(("gateway_limits_unavailable_total", (), st.unavailable))
    sources: tuple[LeaseStats | BudgetStats, ...] = (leases[0], leases[1], budgets)
    for client, src in zip(_LIMIT_CLIENTS, sources, strict=True):
        c(("gateway_limits_degraded_total", (client,), src.degraded_transitions))
    gauges.append(("gateway_limits_degraded_workers", (), 1.0 if degraded else 0.0))
    c(("gateway_limits_tokens_charged_total", (), st.tokens_charged))
    c(("gateway_limits_tokens_refunded_total", (), st.tokens_refunded))
    c(("gateway_limits_usage_counted_total", (), st.counted_usage))
    for client, lease in zip(_LIMIT_CLIENTS[:2], leases, strict=True):  # budgets take no leases
        c(("gateway_limits_lease_grants_total", (client,), lease.grants))
        c(("gateway_limits_lease_refusals_total", (client,), lease.refusals))
    for client, src in zip(_LIMIT_CLIENTS, sources, strict=True):
        c(("gateway_shared_state_calls_total", (client,), src.source_calls))
        c(("gateway_shared_state_ops_total", (client,), src.source_ops))
    c(("gateway_budget_blocked_total", (), st.budget_blocked))
    c(("gateway_budget_downgraded_total", (), st.downgraded))
    c(("gateway_budget_alerts_total", (), st.alerts))
    c(("gateway_budget_alert_webhook_failures_total", (), st.alerts_failed))
    c(("gateway_budget_reservations_total", ("hold",), budgets.local))
    c(("gateway_budget_reservations_total", ("shared_state",), budgets.asks))
    c(("gateway_budget_reservation_refusals_total", (), budgets.refusals))
    c(("gateway_spend_usd_total", (), st.spend_usd))
    c(("gateway_spend_writes_total", (), st.spend_flushes))
    c(("gateway_spend_write_failures_total", (), st.spend_flush_errors))
    c(("gateway_spend_reads_total", (), st.spend_reads))

    _cache_samples(getattr(engine, "cache", None), c, gauges.append)

    # routing: the routed models of the running config (breaker states), and every deployment's counters
    # (a deployment a reload removed keeps its counters, so the node's sums do not go back)
    routed: set[tuple[str, str]] = set()
    runtime = engine.runtime
    if runtime is not None:
        for name, router in runtime.routers.items():
            entry = runtime.models.get(name)
            if entry is None or entry.target is not None:  # proxied directly: no routing
                continue
            for d in router.deployments:
                routed.add((d.model, d.name))
                b = router.breaker(d)
                state = "ejected" if b.ejected else b.state.name.lower()
                for s in _BREAKER_STATES:
                    gauges.append(
                        ("gateway_routing_breaker_state", (d.model, d.name, s), 1.0 if s == state else 0.0)
                    )
    for ds in all_deployment_stats():
        where = (ds.model, ds.deployment)
        used = ds.ok or ds.outcomes or ds.retries or ds.fallbacks or ds.breaker_opens
        if where not in routed and not used:
            continue  # a directly proxied model's deployment: never routed
        c(("gateway_routing_attempts_total", (*where, "ok"), ds.ok))
        for outcome, n in sorted(ds.outcomes.items()):
            c(("gateway_routing_attempts_total", (*where, outcome), n))
        c(("gateway_routing_failovers_total", (*where, "retry"), ds.retries))
        c(("gateway_routing_failovers_total", (*where, "fallback"), ds.fallbacks))
        c(("gateway_routing_breaker_opens_total", where, ds.breaker_opens))
    samples = getattr(getattr(engine, "records", None), "samples", None)
    if samples is not None:
        rc, rg = samples()
        counters.extend(rc)
        gauges.extend(rg)
    tracer = getattr(engine, "tracer", None)
    if tracer is not None:
        tc, tg = tracer.samples()
        counters.extend(tc)
        gauges.extend(tg)
    return counters, gauges


def _cache_samples(cache: Any, c: Any, g: Any) -> None:
    """The response cache's series (its counters at zero when the cache is off, so dashboards see them)."""
    from gateway.cache.phase import CacheStats

    st: CacheStats = cache.stats if cache is not None else CacheStats()
    memory = cache.memory if cache is not None else None
    redis = cache.redis if cache is not None else None
    c(("gateway_cache_requests_total", ("hit", "memory"), st.hits_memory))
    c(("gateway_cache_requests_total", ("hit", "redis"), st.hits_redis))
    c(("gateway_cache_requests_total", ("hit", "semantic"), st.hits_semantic))
    c(("gateway_cache_requests_total", ("miss", ""), st.misses))
    bypasses = st.bypass_nocache + st.bypass_policy + st.bypass_redis
    c(("gateway_cache_requests_total", ("bypass", ""), bypasses))
    c(("gateway_cache_bypass_total", ("no_cache",), st.bypass_nocache))
    c(("gateway_cache_bypass_total", ("policy",), st.bypass_policy))
    c(("gateway_cache_bypass_total", ("redis_down",), st.bypass_redis))
    c(("gateway_cache_stores_total", (), st.stores))
    c(("gateway_cache_not_stored_total", ("too_large",), st.too_large))
    c(("gateway_cache_not_stored_total", ("unstorable",), st.unstorable))
    c(("gateway_cache_errors_total", (), redis.errors if redis is not None else 0))
    c(("gateway_cache_evictions_total", (), memory.evictions if memory is not None else 0))
    if memory is not None:  # gauges only where there is a memory tier (a node's sums add the workers')
        g(("gateway_cache_memory_bytes", (), float(memory.size)))
        g(("gateway_cache_memory_entries", (), float(len(memory))))
    _semantic_samples(getattr(cache, "semantic", None), c, g)


def _semantic_samples(tier: Any, c: Any, g: Any) -> None:
    """The semantic tier's series (gateway.cache.semantic; its counters at zero when it is off)."""
    from gateway.cache.semantic_stats import BYPASS_REASONS, SemanticStats

    st: SemanticStats = tier.stats if tier is not None else SemanticStats()
    c(("gateway_cache_semantic_lookups_total", ("hit",), st.hits))
    c(("gateway_cache_semantic_lookups_total", ("miss",), st.misses))
    c(("gateway_cache_semantic_lookups_total", ("error",), st.errors))
    for reason in BYPASS_REASONS:
        c(("gateway_cache_semantic_bypass_total", (reason,), st.bypass[reason]))
    c(("gateway_cache_semantic_evictions_total", (), tier.index.evictions if tier is not None else 0))
    c(("gateway_cache_semantic_synced_total", (), st.synced))
    if tier is not None:
        g(("gateway_cache_semantic_entries", (), float(len(tier.index))))
        g(("gateway_cache_semantic_bytes", (), float(tier.index.nbytes)))


def read_node_totals(directory: str) -> Totals:
    """The node's figures from every snapshot in its directory (for readers outside the workers: the
    admin API's cache statistics)."""
    snapshots: list[Snapshot] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return {}
    for entry in entries:
        if entry.name.startswith(_PREFIX) and entry.name.endswith(_SUFFIX):
            try:
                with open(entry.path, "rb") as f:
                    snapshots.append(_decode(f.read()))
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue
    return aggregate(snapshots, time.time())


# --------------------------------------------------------------------------------------------------------
# Sums and rendering


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def aggregate(snapshots: Iterable[Snapshot], now: float,
              alive: Callable[[int], bool] = _pid_alive) -> Totals:
    """The node's figures: counters summed over every snapshot; gauges over the live workers' (alive, and
    written within ``_STALE_INTERVALS`` of their interval); ``gateway_metrics_workers`` by state."""
    totals: Totals = {}
    states = {"live": 0, "stale": 0, "exited": 0}
    for snap in snapshots:
        for name, labels, value in snap.counters:
            key = (name, tuple(labels))
            totals[key] = totals.get(key, 0.0) + value
        if snap.worker == SUPERVISOR:
            continue  # counters only; not a worker
        if not alive(snap.pid):
            states["exited"] += 1
            continue
        if now - snap.written > max(_STALE_INTERVALS * snap.interval, _STALE_MIN):
            states["stale"] += 1
            continue
        states["live"] += 1
        for name, labels, value in snap.gauges:
            key = (name, tuple(labels))
            totals[key] = totals.get(key, 0.0) + value
    for state, n in states.items():
        totals[("gateway_metrics_workers", (state,))] = float(n)
    return totals


class _TotalsCollector(Collector):
    """``prometheus_client`` collector over one scrape's sums, in ``METRICS`` order."""

    def __init__(self, totals: Totals) -> None:
        self.by_name: dict[str, list[tuple[tuple[str, ...], float]]] = {}
        for (name, labels), value in totals.items():
            self.by_name.setdefault(name, []).append((labels, value))

    def collect(self) -> Iterator[Metric]:
        for m in METRICS:
            if m.kind == "histogram":
                yield self._histogram(m)
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            if m.kind == "counter":
                family = CounterMetricFamily(m.name, m.help, labels=m.labels)
            else:
                family = GaugeMetricFamily(m.name, m.help, labels=m.labels)
            samples = self.by_name.get(m.name)
            if samples:
                for labels, value in sorted(samples):
                    if len(labels) == len(m.labels):  # a snapshot of another version: left out
                        family.add_metric(list(labels), value)
            elif not m.labels:
                family.add_metric([], 0.0)
            yield family


    def _histogram(self, m: MetricDef) -> HistogramMetricFamily:
        family = HistogramMetricFamily(m.name, m.help, labels=m.labels)
        n = len(m.labels)
        buckets: dict[tuple[str, ...], list[tuple[float, str, float]]] = {}
        for labels, value in self.by_name.get(f"{m.name}_bucket", ()):
            if len(labels) == n + 1:
                le = labels[n]
                buckets.setdefault(labels[:n], []).append((float(le), le, value))
        sums = {labels: v for labels, v in self.by_name.get(f"{m.name}_sum", ()) if len(labels) == n}
        for labels in sorted(buckets):
            bs = sorted(buckets[labels])
            family.add_metric(list(labels), [(le, v) for _, le, v in bs], sums.get(labels, 0.0))
        return family


def render(totals: Totals) -> bytes:
    """The text exposition of ``totals`` (what ``generate_latest`` makes of a registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_TotalsCollector(totals))
    return generate_latest(registry)


# --------------------------------------------------------------------------------------------------------
# The worker's exporter


class MetricsExporter:
    """One per worker: writes the worker's snapshot every ``interval`` (a loop timer) and answers scrapes.

    ``samples`` gives the worker's figures (``engine_samples``); ``directory`` is the node's snapshot
    directory (None: this worker's figures only, nothing written).
    """

    __slots__ = (
        "_digester", "_failing", "_file", "_handle", "_pid", "_samples", "_tmp", "_token", "directory",
        "enabled", "interval", "path", "worker",
    )

    def __init__(self, config: Config, samples: Callable[[], tuple[list[Sample], list[Sample]]], *,
                 worker: int, directory: str | None) -> None:
        self._samples = samples
        self.worker = worker
        self.directory = directory
        self._pid = os.getpid()
        # a random part: a pid the kernel hands out again never overwrites an exited worker's counters
        name = f"{_PREFIX}{self._pid}-{secrets.token_hex(4)}{_SUFFIX}"
        self._file = os.path.join(directory, name) if directory is not None else None
        self._tmp = os.path.join(directory, f".{name}.tmp") if directory is not None else None
        self._handle: asyncio.TimerHandle | None = None
        self._failing = False
        self.enabled = False
        self.path = ""
        self.interval = 1.0
        self._token: str | None = None
        self._digester: Any = None
        self._configure(config)

    @classmethod
    def for_engine(cls, engine: Any, config: Config) -> MetricsExporter:
        """The exporter of a worker's engine, on the node's directory from ``GATEWAY_METRICS_DIR``."""
        return cls(config, lambda: engine_samples(engine), worker=engine.worker,
                   directory=os.environ.get(ENV_METRICS_DIR) or None)

    def _configure(self, config: Config) -> None:
        m: MetricsConfig = config.metrics
        self.enabled = m.enabled
        #: the path scrapes are answered on; "" (no request path) while disabled
        self.path = m.path if m.enabled else ""
        self.interval = m.interval
        self._token = m.token
        self._digester = None
        if m.token is not None:
            from gateway.auth.keyformat import Digester

            pepper = b""
            if m.token.startswith("hmac-sha256:") and config.auth.pepper:
                from gateway.config import ConfigError, resolve_secret

                try:
                    pepper = resolve_secret(config.auth.pepper).encode()
                except ConfigError as exc:  # validated at load; gone since: no scrape gets in
                    log.warning("metrics: the pepper cannot be read (%s); the token cannot match", exc)
            self._digester = Digester(pepper)

    # -- lifecycle (on the worker's loop)

    def start(self) -> None:
        if self.enabled and self._file is not None and self._handle is None:
            self._tick()

    def reload(self, config: Config) -> None:
        """``enabled``, ``path``, ``token`` and ``interval`` of a reloaded config (``dir``: on restart)."""
        self._configure(config)
        if not self.enabled:
            self._cancel()
        else:
            self.start()

    def stop(self) -> None:
        """Stop the timer; write a last snapshot, so that what this worker counted is kept."""
        self._cancel()
        if self.enabled:
            self.write()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = None
        try:
            self.write()
        except Exception:  # the timer must go on
            log.exception("metrics: building the snapshot failed")
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def snapshot(self) -> Snapshot:
        counters, gauges = self._samples()
        return Snapshot(self._pid, self.worker, time.time(), self.interval, counters, gauges)

    def write(self) -> Snapshot:
        """This worker's snapshot now, written to its file (when there is a directory)."""
        snap = self.snapshot()
        if self._file is None or self._tmp is None:
            return snap
        # PERF: a small synchronous write on the loop once per interval (well under 0.1 ms: the file is
        # a few kB in the page cache); a thread hop would cost more than the write
        try:
            with open(self._tmp, "wb") as f:
                f.write(_encode(snap))
            os.replace(self._tmp, self._file)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning("metrics: cannot write the snapshot to %s (%s); scrapes of other workers lack "
                            "this worker's latest figures", self.directory, exc.strerror or exc)
        else:
            if self._failing:
                self._failing = False
                log.info("metrics: snapshots written again to %s", self.directory)
        return snap

    def _others(self) -> list[Snapshot]:
        if self.directory is None:
            return []
        own = os.path.basename(self._file or "")
        out: list[Snapshot] = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.warning("metrics: cannot read %s (%s)", self.directory, exc.strerror or exc)
            return out
        for entry in entries:
            name = entry.name
            if name == own or not name.startswith(_PREFIX) or not name.endswith(_SUFFIX):
                continue
            try:
                with open(entry.path, "rb") as f:
                    out.append(_decode(f.read()))
            except FileNotFoundError:  # cleared meanwhile
                continue
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.debug("metrics: snapshot %s skipped (%s)", name, exc)
        return out

    def scrape(self) -> bytes:
        """The node's metrics: this worker's snapshot refreshed, every other worker's from its file."""
        snapshots = [self.write(), *self._others()]
        return render(aggregate(snapshots, time.time()))

    # -- the endpoint

    def answer(self, request: Request) -> Reply:
        """``GET <path>``: the scrape; 405 for another method, 401 without the configured token."""
        if request.method != "GET":
            raise errors.MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use GET",
                                          headers=[("allow", "GET")])
        if self._token is not None:
            self._authorize(request.header(b"authorization"))
        return Reply(200, self.scrape(), [("content-type", CONTENT_TYPE), ("cache-control", "no-store")])

    def _authorize(self, authorization: bytes | None) -> None:
        if authorization is None:
            raise errors.Unauthorized(
                "The metrics need a bearer token: send 'Authorization: Bearer <token>'.",
                code="missing_token", headers=list(_CHALLENGE),
            )
        scheme, _, presented = authorization.strip().partition(b" ")
        token = presented.strip()
        if scheme.lower() != b"bearer" or not token:
            raise errors.Unauthorized(
                "The Authorization header must be 'Bearer <token>'.", code="missing_token",
                headers=list(_CHALLENGE),
            )
        assert self._token is not None and self._digester is not None
        if not self._digester.verify(token.decode("latin-1"), self._token):
            raise errors.Unauthorized("The metrics token is not valid.", code="invalid_token",
                                      headers=list(_CHALLENGE))


# --------------------------------------------------------------------------------------------------------
# The node's directory (the process that starts the workers)


class NodeDir:
    """The node's snapshot directory, held by the process that starts the workers (the supervisor, or
    granian's main process) for the node's life, and named to them in ``GATEWAY_METRICS_DIR``."""

    __slots__ = ("created", "path")

    def __init__(self, path: str, created: bool) -> None:
        self.path = path
        #: made here (under the system temp directory): removed by ``close``
        self.created = created

    @classmethod
    def open(cls, config: MetricsConfig) -> NodeDir:
        """The configured directory emptied of snapshots (made if missing), or a fresh temporary one; set
        in the environment the workers inherit. Raises OSError."""
        if config.dir:
            os.makedirs(config.dir, mode=0o700, exist_ok=True)
            clear_snapshots(config.dir)
            node = cls(config.dir, False)
        else:
            _remove_orphans(tempfile.gettempdir())
            node = cls(tempfile.mkdtemp(prefix=f"{_NODE_PREFIX}{os.getpid()}-"), True)
        os.environ[ENV_METRICS_DIR] = node.path
        return node

    def close(self) -> None:
        """At a clean exit, after the workers: remove a directory made here; leave a configured one."""
        if os.environ.get(ENV_METRICS_DIR) == self.path:
            del os.environ[ENV_METRICS_DIR]
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)


def write_supervisor_snapshot(restarts: dict[str, int]) -> None:
    """(In the supervisor) its counters, as a snapshot in the node's directory that workers sum with
    theirs: ``restarts`` by reason. Written when they change; a failed write is logged, never raised."""
    directory = os.environ.get(ENV_METRICS_DIR)
    if not directory:
        return
    counters: list[Sample] = [("gateway_worker_restarts_total", (r,), float(n)) for r, n in restarts.items()]
    name = f"{_PREFIX}supervisor-{os.getpid()}{_SUFFIX}"
    tmp = os.path.join(directory, f".{name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(_encode(Snapshot(os.getpid(), SUPERVISOR, time.time(), 0.0, counters, [])))
        os.replace(tmp, os.path.join(directory, name))
    except OSError as exc:
        log.warning("metrics: cannot write the supervisor's snapshot to %s (%s)", directory, exc)


#: a fresh node directory's name: this prefix, the owning process's pid, "-", a random part
_NODE_PREFIX = "gateway-metrics-"


def _remove_orphans(parent: str) -> None:
    """Remove fresh node directories whose owner is gone without cleaning up (it was killed)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(_NODE_PREFIX):
            continue
        pid = name[len(_NODE_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)


def clear_snapshots(directory: str) -> None:
    """Remove the snapshots (and half-written ones) of a previous run; nothing else in ``directory``."""
    for entry in os.scandir(directory):
        name = entry.name
        if (name.startswith(_PREFIX) and name.endswith(_SUFFIX)) or (
            name.startswith("." + _PREFIX) and name.endswith(".tmp")
        ):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _check_metric_names() -> None:
    """The names follow Prometheus' conventions (checked once at import; a typo fails loudly)."""
    for m in METRICS:
        assert m.name.startswith(("gateway_", "gen_ai_")), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
    assert len(_BY_NAME) == len(METRICS)


_check_metric_names()
