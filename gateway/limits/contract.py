"""What clients see of limits and budgets: the 429 and 503 answers, their headers, the ``x-ratelimit-*`` set.

The shape follows OpenAI's API, so that the official SDKs back off as they do against OpenAI:

- a refusal by a rate, token or concurrency limit: 429, ``type: rate_limit_error``, ``code:
  rate_limit_exceeded``, with ``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` (the
  exact wait in milliseconds: the SDKs prefer it);
- a request that can never fit (its token estimate is above what the limit holds at once): the same 429
  with ``x-should-retry: false`` and no wait, since waiting cannot help;
- a budget spent with ``action = "block"``: 429, ``type`` and ``code`` ``insufficient_quota``, and
  ``x-should-retry: false`` (the SDKs then do not retry);
- the shared state unavailable and a limit that fails closed: 503 ``limits_unavailable`` with a short
  ``retry-after``.

The ``x-ratelimit-reset-*`` values are durations in OpenAI's own format: ``"20ms"``, ``"1.5s"``,
``"6m0s"``, ``"1h0m0s"`` (``duration_text``).
"""

from __future__ import annotations

import math

from gateway.errors import RateLimited

__all__ = ["QuotaExceeded", "duration_text", "retry_headers"]

_INF = math.inf


class QuotaExceeded(RateLimited):
    """A budget is spent and its action is ``block``: not to be retried before the budget's period ends."""

    type = "insufficient_quota"
    code = "insufficient_quota"


def duration_text(seconds: float) -> str:
    """``seconds`` in OpenAI's header format: ``"0s"``, ``"120ms"``, ``"1.5s"``, ``"6m0s"``, ``"1h2m3s"``.

    Below a second: whole milliseconds, rounded up. Below a minute: seconds with at most three decimals.
    From a minute on: whole seconds, rounded up, as minutes (and hours) and seconds.
    """
    if not seconds > 0.0:
        return "0s"
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000.0)}ms"
    if seconds < 60.0:
        text = f"{math.ceil(seconds * 1000.0) / 1000.0:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    if seconds == _INF:
        return "0s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


def retry_headers(wait: float) -> list[tuple[str, str]]:
    """``retry-after`` and ``retry-after-ms`` for a wait of ``wait`` seconds; ``x-should-retry: false``
    when no wait helps (``inf``)."""
    if wait == _INF or wait != wait:
        return [("x-should-retry", "false")]
    wait = max(wait, 0.001)
    return [("retry-after", str(max(1, math.ceil(wait)))), ("retry-after-ms", str(math.ceil(wait * 1000.0)))]
