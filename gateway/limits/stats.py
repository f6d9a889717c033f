"""Plain counters of the limits capability, for the metrics exporter to read on scrape.

Incrementing an attribute costs a few nanoseconds on the request path; labelled metric children would cost
a microsecond or more each (see the design's hot-path budget). The exporter turns these into metrics.
"""

from __future__ import annotations

__all__ = ["LimitStats"]


class LimitStats:
    """One worker's counters since it started (never reset)."""

    __slots__ = (
        "admitted",
        "admitted_slow",
        "alerts",
        "alerts_failed",
        "budget_blocked",
        "counted_usage",
        "downgraded",
        "refused_concurrency",
        "refused_requests",
        "refused_tokens",
        "spend_flush_errors",
        "spend_flushes",
        "spend_reads",
        "spend_usd",
        "tokens_charged",
        "tokens_refunded",
        "unavailable",
    )

    def __init__(self) -> None:
        #: requests admitted by every limit; of them, those that waited for the shared state
        self.admitted = 0
        self.admitted_slow = 0
        #: 429s by the dimension of the limit that refused
        self.refused_requests = 0
        self.refused_tokens = 0
        self.refused_concurrency = 0
        #: 503s: the shared state was unavailable and a limit fails closed
        self.unavailable = 0
        #: budget actions taken: 429 insufficient_quota, requests served by the downgrade model
        self.budget_blocked = 0
        self.downgraded = 0
        #: budget alerts fired by this worker (log line, webhook), and webhooks that failed
        self.alerts = 0
        self.alerts_failed = 0
        #: token reconciliation: units charged beyond and refunded below the reservations
        self.tokens_charged = 0.0
        self.tokens_refunded = 0.0
        #: responses whose usage never arrived, counted with tiktoken off the loop
        self.counted_usage = 0
        #: US dollars of spend recorded; batches written to the store, failed writes, spend reads
        self.spend_usd = 0.0
        self.spend_flushes = 0
        self.spend_flush_errors = 0
        self.spend_reads = 0

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}
