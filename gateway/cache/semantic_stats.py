"""The semantic tier's counters, apart from the tier itself (which imports numpy): the metrics read them
whether the tier is on or not."""

from __future__ import annotations

from typing import Final

__all__ = ["BYPASS_REASONS", "SemanticStats"]

#: why a request was not looked up semantically
BYPASS_REASONS: Final = ("tools", "content", "temperature", "too_long")


class SemanticStats:
    __slots__ = ("bypass", "errors", "hits", "misses", "synced")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        #: embeddings calls that failed or timed out (the request went on as a miss)
        self.errors = 0
        self.bypass: dict[str, int] = dict.fromkeys(BYPASS_REASONS, 0)
        #: rows read from the sync stream
        self.synced = 0
