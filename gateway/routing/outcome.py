"""What happened to one attempt, in the terms routing decides on, and the upstream's retry hints.

The engine classifies each attempt once (``outcome_of_status``, ``outcome_of_exception``); retries,
fallbacks, the breaker and the latency tracker all read that one ``Outcome``. Its values are the names
the configuration uses in ``retry_on`` and ``fallback_on``.
"""

from __future__ import annotations

import email.utils
import enum
import math

from gateway.providers.base import UpstreamError, UpstreamTimeout

__all__ = [
    "Outcome",
    "is_context_length_error",
    "outcome_of_exception",
    "outcome_of_status",
    "parse_retry_after",
]


class Outcome(enum.Enum):
    OK = "ok"
    #: the upstream failed at the transport level before the response head (refused, reset, closed)
    CONNECT = "connect"
    #: connect, first-byte or total timeout
    TIMEOUT = "timeout"
    RATE_LIMITED = "429"
    SERVER_ERROR = "5xx"
    #: the request does not fit the model's context window (a 400 that another model may accept)
    CONTEXT_LENGTH = "context_length"
    #: the upstream refused the gateway's own credentials (401, 403): the deployment's fault
    CREDENTIALS = "credentials"
    #: any other 4xx: the request's fault, not the deployment's
    CLIENT_ERROR = "4xx"

    @property
    def failed(self) -> bool:
        """Whether the deployment failed (the breaker counts it): transport errors, timeouts, 5xx."""
        return self in _DEPLOYMENT_FAILURES

    @property
    def condition(self) -> str:
        """The ``fallback_on`` condition this outcome meets ("5xx" also stands for transport errors and
        refused credentials)."""
        return "5xx" if self is Outcome.CONNECT or self is Outcome.CREDENTIALS else self.value


_DEPLOYMENT_FAILURES = frozenset(
    {Outcome.CONNECT, Outcome.TIMEOUT, Outcome.SERVER_ERROR, Outcome.CREDENTIALS}
)

# Phrases providers use for a prompt that is too long. OpenAI and compatible servers send the code
# ``context_length_exceeded``; the rest are the messages of vLLM, Anthropic, Gemini and Bedrock.
_CONTEXT_MARKERS = (
    b"context_length_exceeded",
    b"maximum context length",
    b"prompt is too long",
    b"input is too long",
    b"exceeds the maximum number of tokens",
    b"too many input tokens",
)


def is_context_length_error(status: int, body: bytes) -> bool:
    """A 400/413/422 whose body says the prompt does not fit the context window."""
    if status not in (400, 413, 422) or not body:
        return False
    low = body[:4096].lower()
    return any(marker in low for marker in _CONTEXT_MARKERS)


def outcome_of_status(status: int, body: bytes = b"") -> Outcome:
    """The outcome of a response head (and, for a 4xx, its error body)."""
    if status < 400:
        return Outcome.OK
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status == 408:  # the upstream timed out waiting for the request
        return Outcome.TIMEOUT
    if status == 401 or status == 403:  # the provider refused the gateway's credentials
        return Outcome.CREDENTIALS
    if is_context_length_error(status, body):
        return Outcome.CONTEXT_LENGTH
    return Outcome.CLIENT_ERROR


def outcome_of_exception(exc: BaseException) -> Outcome:
    """``UpstreamTimeout`` (and asyncio/OS timeouts) -> TIMEOUT; other transport errors -> CONNECT."""
    if isinstance(exc, (UpstreamTimeout, TimeoutError)):
        return Outcome.TIMEOUT
    if isinstance(exc, (UpstreamError, OSError, EOFError)):
        return Outcome.CONNECT
    raise TypeError(f"not an upstream failure: {type(exc).__name__}")


def parse_retry_after(
    retry_after: bytes | str | None,
    retry_after_ms: bytes | str | None = None,
    wall_now: float | None = None,
) -> float | None:
    """Seconds the upstream asks us to wait, or None when it asks nothing usable.

    ``retry-after-ms`` (OpenAI, Azure) wins, being the more precise; then ``Retry-After`` as seconds
    (fractions accepted), then as an HTTP date, which needs ``wall_now`` (Unix time) to become a delay.
    Negative, non-finite and unparsable values are ignored.
    """
    if retry_after_ms is not None:
        ms = _number(retry_after_ms)
        if ms is not None:
            return ms / 1000.0
    if retry_after is None:
        return None
    seconds = _number(retry_after)
    if seconds is not None:
        return seconds
    if wall_now is None:
        return None
    text = retry_after.decode("latin-1") if isinstance(retry_after, bytes) else retry_after
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - wall_now)


def _number(value: bytes | str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None
