"""Per-key anomaly signal: a key whose request rate or error rate jumps far above its own recent baseline
is flagged (a metric, a log line, an optional webhook). docs/observability.md#per-key-anomalies.

Theory of operation:

    who                  | does
    ---------------------+------------------------------------------------------------------------------
    the worker's loop    | nothing per request beyond the records hub, which offers each batch of records
                         | to the detector like to a sink
    the detector thread  | counts each key's requests and errors in the current window; at the end of
                         | every ``window`` seconds ``Detector.close_window`` compares each key's window
                         | with its baseline (an EWMA of its earlier windows), flags what jumped, then
                         | folds the window into the baseline; logs, and POSTs the webhook (same thread)
    the loop's snapshot  | reads the counters (``samples``)

The rule, per key and window (``n`` requests, ``e`` errors, ``r = n / window``):

- request rate: flagged when ``n >= min_requests`` and ``r > rate_factor * max(baseline rate,
  min_rate)``;
- error rate: flagged when ``n >= min_requests`` and ``e / n > max(error_factor * baseline error rate,
  baseline error rate + min_error_rate)``.

Only keys with ``warmup`` windows of history are judged (a new key has no baseline). A key quiet for a
window counts as a window of zero requests (its baseline decays); a key quiet for ``forget_after``
windows is forgotten (bounded memory, with ``max_keys`` on top). Each worker judges the traffic it serves
(the kernel spreads connections evenly, so a key's jump shows on every worker); the metric is summed over
the node's workers like every counter.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from gateway.observe.sinks import Chunk, Sink

__all__ = ["AnomalyConfig", "AnomalyDetector", "Detector", "Flag", "anomaly_problems"]

log = logging.getLogger("gateway.anomaly")


class AnomalyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[anomaly]``: the per-key anomaly signal."""

    enabled: bool = False
    #: seconds per window
    window: float = 60.0
    #: weight of the newest window in the baseline (EWMA)
    alpha: float = 0.2
    #: windows of history a key needs before it is judged
    warmup: int = 5
    #: requests a key's window needs to be judged at all
    min_requests: int = 20
    #: request rate: flagged above this many times the baseline ...
    rate_factor: float = 4.0
    #: ... and the baseline is taken as at least this many requests a second
    min_rate: float = 0.1
    #: error rate: flagged above this many times the baseline ...
    error_factor: float = 3.0
    #: ... and at least this much above it (a fraction: 0.2 is 20 points)
    min_error_rate: float = 0.2
    #: keys tracked per worker (the least recently seen are forgotten beyond it)
    max_keys: int = 10000
    #: a URL POSTed a JSON body per flag (optional)
    webhook: str | None = None
    #: seconds the webhook may take
    webhook_timeout: float = 5.0


def anomaly_problems(ac: AnomalyConfig) -> Iterable[tuple[tuple[str | int, ...], str]]:
    def bad(v: float, low: float, high: float = math.inf) -> bool:
        return not (math.isfinite(v) and low <= v <= high)

    if bad(ac.window, 0.1, 86400):
        yield ("anomaly", "window"), f"must be 0.1 to 86400 seconds, found {ac.window}"
    if bad(ac.alpha, 0.001, 1.0):
        yield ("anomaly", "alpha"), f"must be more than 0 and at most 1, found {ac.alpha}"
    for name in ("warmup", "min_requests", "max_keys"):
        if getattr(ac, name) < 1:
            yield ("anomaly", name), f"must be 1 or more, found {getattr(ac, name)}"
    for name in ("rate_factor", "error_factor"):
        if bad(getattr(ac, name), 1.0):
            yield ("anomaly", name), f"must be 1 or more, found {getattr(ac, name)}"
    for name in ("min_rate", "min_error_rate"):
        if bad(getattr(ac, name), 0.0):
            yield ("anomaly", name), f"must be 0 or more, found {getattr(ac, name)}"
    if ac.webhook is not None and not ac.webhook.startswith(("http://", "https://")):
        yield ("anomaly", "webhook"), f"must be an http:// or https:// URL, found {ac.webhook!r}"
    if bad(ac.webhook_timeout, 0.1, 60):
        yield ("anomaly", "webhook_timeout"), f"must be 0.1 to 60 seconds, found {ac.webhook_timeout}"


class Flag(msgspec.Struct, frozen=True):
    """One anomaly: what jumped, to what, from what baseline."""

    key: str
    tenant: str
    kind: str  # "request_rate" or "error_rate"
    value: float
    baseline: float
    requests: int
    errors: int
    window_end: float


class _Key:
    __slots__ = ("err_rate", "errors", "idle", "rate", "requests", "seen", "tenant")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.requests = 0
        self.errors = 0
        #: baselines (EWMA): requests a second, and the fraction of errors
        self.rate = 0.0
        self.err_rate = 0.0
        #: windows folded into the baselines, and windows in a row without requests
        self.seen = 0
        self.idle = 0


class Detector:
    """The per-key rule (see the module's docstring); pure, driven by ``add`` and ``close_window``."""

    def __init__(self, config: AnomalyConfig) -> None:
        self.config = config
        self._keys: dict[str, _Key] = {}
        #: windows a key may stay quiet before it is forgotten
        self.forget_after = max(10, 3 * config.warmup)

    def add(self, key: str, tenant: str, error: bool) -> None:
        k = self._keys.get(key)
        if k is None:
            if len(self._keys) >= self.config.max_keys:
                self._forget_one()
            k = self._keys[key] = _Key(tenant)
        k.requests += 1
        if error:
            k.errors += 1

    def _forget_one(self) -> None:
        victim = max(self._keys.items(), key=lambda kv: (kv[1].idle, -kv[1].requests))[0]
        del self._keys[victim]

    def close_window(self, now: float) -> list[Flag]:
        """Judge every key's window against its baseline, then fold it in; the flags raised."""
        c = self.config
        flags: list[Flag] = []
        forget = []
        for key, k in self._keys.items():
            n, e = k.requests, k.errors
            rate = n / c.window
            err = e / n if n else 0.0
            if k.seen >= c.warmup and n >= c.min_requests:
                base = max(k.rate, c.min_rate)
                if rate > c.rate_factor * base:
                    flags.append(Flag(key, k.tenant, "request_rate", rate, k.rate, n, e, now))
                if err > max(c.error_factor * k.err_rate, k.err_rate + c.min_error_rate):
                    flags.append(Flag(key, k.tenant, "error_rate", err, k.err_rate, n, e, now))
            a = c.alpha if k.seen else 1.0
            k.rate += a * (rate - k.rate)
            if n:
                k.err_rate += a * (err - k.err_rate)
                k.idle = 0
            else:
                k.idle += 1
                if k.idle >= self.forget_after:
                    forget.append(key)
            k.seen += 1
            k.requests = k.errors = 0
        for key in forget:
            del self._keys[key]
        return flags

    @property
    def tracked(self) -> int:
        return len(self._keys)


class AnomalyDetector(Sink):
    """The worker's detector: a record sink whose thread counts and judges (module table)."""

    kind = "anomaly"

    def __init__(self, config: AnomalyConfig, worker: int = 0, *, queue: int = 200_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("anomaly", queue=queue)
        self.config = config
        self.worker = worker
        self.detector = Detector(config)
        self._clock = clock
        #: (key, kind) -> flags raised; (key, kind) flagged in the last window
        self.flags: dict[tuple[str, str], int] = {}
        self.current: set[tuple[str, str]] = set()
        self.webhook_failures = 0
        self._lock = threading.Lock()

    def deliver(self, chunks: list[Chunk]) -> None:
        add = self.detector.add
        for chunk in chunks:
            for rec in chunk[2]:
                if rec.key_id is not None and rec.endpoint is not None:
                    add(rec.key_id, rec.tenant or "", rec.status >= 400)

    def _run(self) -> None:
        window = self.config.window
        next_close = self._clock() + window
        while True:
            with self._cond:
                if not self._chunks and not self._closing:
                    self._cond.wait(max(0.0, next_close - self._clock()))
                chunks = list(self._chunks)
                self._chunks.clear()
                closing = self._closing
            if chunks:
                n = sum(c[1] for c in chunks)
                self.deliver(chunks)
                self.written += n
                self._done(n)
            if closing:
                return
            if self._clock() >= next_close:
                next_close += window * max(1, math.floor((self._clock() - next_close) / window) + 1)
                self._judge()

    def _judge(self) -> None:
        flags = self.detector.close_window(time.time())
        current = {(f.key, f.kind) for f in flags}
        with self._lock:
            for f in flags:
                if (f.key, f.kind) in self.flags or len(self.flags) < self.config.max_keys:
                    self.flags[(f.key, f.kind)] = self.flags.get((f.key, f.kind), 0) + 1
            self.current = current
        for f in flags:
            log.warning(
                "anomaly: key %s (tenant %s) %s %.3g, baseline %.3g (%d requests, %d errors in %gs)",
                f.key, f.tenant or "-", f.kind.replace("_", " "), f.value, f.baseline, f.requests, f.errors,
                self.config.window,
            )
            if self.config.webhook:
                self._post(f)

    def _post(self, flag: Flag) -> None:
        body = json.dumps({"event": "key_anomaly", "worker": self.worker, **msgspec.to_builtins(flag)})
        req = urllib.request.Request(self.config.webhook or "", data=body.encode(), method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.config.webhook_timeout) as resp:
                resp.read()
        except Exception as exc:  # OSError, HTTPError, a bad answer: counted and logged, never raised
            self.webhook_failures += 1
            log.warning("anomaly: the webhook failed: %s", exc)

    def metric_samples(self) -> tuple[list[Any], list[Any]]:
        with self._lock:
            counters: list[Any] = [("gateway_key_anomalies_total", (k, kind), float(n))
                        for (k, kind), n in self.flags.items()]
            gauges: list[Any] = [("gateway_key_anomalous", (k, kind), 1.0) for k, kind in self.current]
        counters.append(("gateway_key_anomaly_webhook_failures_total", (), float(self.webhook_failures)))
        gauges.append(("gateway_key_anomaly_tracked_keys", (), float(self.detector.tracked)))
        return counters, gauges
