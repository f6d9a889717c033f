"""A latency histogram in the manner of HdrHistogram: log-linear buckets, three significant digits.

Values are integers (the load generator records microseconds). Values below ``2**SUB_BITS`` have a
bucket each; above, each power-of-two range is split into ``2**(SUB_BITS - 1)`` equal buckets, so a
bucket is never wider than 1/1024 of its values (0.1%), whatever the magnitude. Recording is one
``bit_length`` and one list increment; histograms of several processes merge by adding counts.

Percentiles follow HdrHistogram: the value at percentile p is the highest value equivalent to (in the
same bucket as) the smallest recorded value that at least p% of all recorded values are at or below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Histogram"]

SUB_BITS = 11
_SUB = 1 << SUB_BITS  # 2048: values below this have exact buckets
_HALF = _SUB >> 1  # 1024 buckets per power of two above


def bucket_index(value: int) -> int:
    if value < _SUB:
        return value
    shift = value.bit_length() - SUB_BITS
    return (shift << (SUB_BITS - 1)) + (value >> shift)


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest value of a bucket."""
    if index < _SUB:
        return index, index
    shift = index // _HALF - 1
    mantissa = index - shift * _HALF
    return mantissa << shift, ((mantissa + 1) << shift) - 1


class Histogram:
    __slots__ = ("counts", "max", "min", "sum", "total")

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.total = 0
        self.sum = 0
        self.min: int | None = None
        self.max: int | None = None

    def record(self, value: int, count: int = 1) -> None:
        if value < 0:
            value = 0
        if value < _SUB:
            i = value
        else:  # bucket_index, inlined: this runs once per response
            shift = value.bit_length() - SUB_BITS
            i = (shift << (SUB_BITS - 1)) + (value >> shift)
        counts = self.counts
        if i >= len(counts):
            counts.extend([0] * (i + 1 - len(counts)))
        counts[i] += count
        self.total += count
        self.sum += value * count
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> None:
        if len(other.counts) > len(self.counts):
            self.counts.extend([0] * (len(other.counts) - len(self.counts)))
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.total += other.total
        self.sum += other.sum
        for v in (other.min, other.max):
            if v is not None:
                self.min = v if self.min is None else min(self.min, v)
                self.max = v if self.max is None else max(self.max, v)

    def percentile(self, p: float) -> int | None:
        """The value at percentile ``p`` (0-100); None when nothing was recorded."""
        if self.total == 0:
            return None
        if p >= 100:
            return self.max
        want = max(1, math.ceil(p / 100.0 * self.total))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= want:
                high = bucket_range(i)[1]
                assert self.max is not None
                return min(high, self.max)
        return self.max

    def mean(self) -> float | None:
        return self.sum / self.total if self.total else None

    def summary(self, percentiles: Iterable[float] = (50, 90, 99, 99.9),
                scale: float = 1.0) -> dict[str, Any]:
        """``{"count", "min", "mean", "max", "p50", ...}`` with values multiplied by ``scale``."""
        def sc(v: float | None) -> float | None:
            return None if v is None else v * scale

        out: dict[str, Any] = {"count": self.total, "min": sc(self.min), "mean": sc(self.mean()),
                               "max": sc(self.max)}
        for p in percentiles:
            out[f"p{p:g}"] = sc(self.percentile(p))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A compact form (non-zero buckets only) that ``from_dict`` reads back."""
        return {"buckets": {str(i): c for i, c in enumerate(self.counts) if c}, "total": self.total,
                "sum": self.sum, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        h = cls()
        buckets = {int(k): int(v) for k, v in data["buckets"].items()}
        if buckets:
            h.counts = [0] * (max(buckets) + 1)
            for i, c in buckets.items():
                h.counts[i] = c
        h.total = int(data["total"])
        h.sum = int(data["sum"])
        h.min = data["min"]
        h.max = data["max"]
        return h
