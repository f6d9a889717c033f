"""Call records: one JSON line per request, appended to a buffer and written in the background.

A request never waits on a write: ``emit`` appends a flat tuple to a list (# PERF: building the
Struct per request cost ~2 us); a task turns the tuples into records and writes them every 200 ms to
the sink (stderr by default). Client keys are never part of a record.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO, Any

import msgspec

from gateway.limits.pricing import cached_tokens

__all__ = ["CallRecord", "RecordSink", "to_record"]


class CallRecord(msgspec.Struct, omit_defaults=True):
    ts: float
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    overhead_ms: float
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    upstream_status: int | None = None
    upstream_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    #: of ``prompt_tokens``: read from the provider's prompt cache, and written to it (when reported)
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    error_code: str | None = None
    error: str | None = None
    worker: int | None = None
    #: the caller's key id and tenant (never the key itself), and the key's labels
    key_id: str | None = None
    tenant: str | None = None
    labels: dict[str, str] | None = None
    #: routed models: the deployment that answered (or failed last), and the number of attempts
    deployment: str | None = None
    attempts: int | None = None
    #: USD, from the pricing table and the usage
    cost_usd: float | None = None
    #: a prompt call (docs/prompts.md): the prompt and the version that served it
    prompt: str | None = None
    prompt_version: str | None = None


def to_record(row: tuple[Any, ...]) -> CallRecord:
    """The engine's tuple -> a CallRecord (runs in the background flush)."""
    (ts, rid, method, path, status, duration_ms, overhead, model, provider, upstream_model, stream,
     upstream_status, upstream_ms, usage, err, worker, key, deployment, attempts, cost, prompt) = row
    prompt_name, _, prompt_version = prompt.partition("@") if prompt is not None else (None, None, None)
    return CallRecord(
        ts=ts, request_id=rid, method=method, path=path, status=status,
        duration_ms=round(duration_ms, 3), overhead_ms=float(overhead or 0.0), model=model,
        provider=provider, upstream_model=upstream_model, stream=stream, upstream_status=upstream_status,
        upstream_ms=round(upstream_ms, 3) if upstream_ms is not None else None,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        total_tokens=usage.total_tokens if usage is not None else None,
        cached_tokens=cached_tokens(usage) or None if usage is not None else None,
        cache_write_tokens=getattr(usage, "cache_write_tokens", None) or None,
        error_code=err.code if err is not None else None,
        error=err.message if err is not None and err.status >= 500 else None,
        worker=worker,
        key_id=key.id if key is not None else None,
        tenant=key.tenant.id if key is not None else None,
        labels=key.labels or None if key is not None else None,
        deployment=deployment,
        attempts=attempts if attempts and attempts > 1 else None,
        cost_usd=cost,
        prompt=prompt_name,
        prompt_version=prompt_version,
    )


class RecordSink:
    def __init__(self, out: IO[bytes] | None = None, enabled: bool = True, interval: float = 0.2) -> None:
        self.enabled = enabled
        self._out = out if out is not None else sys.stderr.buffer
        self._buf: list[tuple[Any, ...]] = []
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._encode = msgspec.json.Encoder().encode
        self.emitted = 0

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def emit(self, row: tuple[Any, ...]) -> None:
        """Queue one record given as the tuple the engine builds (see ``to_record``)."""
        self.emitted += 1
        if self.enabled:
            self._buf.append(row)

    def _flush(self) -> None:
        if not self._buf:
            return
        buf, self._buf = self._buf, []
        enc = self._encode
        try:
            self._out.write(b"".join(enc(to_record(r)) + b"\n" for r in buf))
            self._out.flush()
        except (OSError, ValueError):
            pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._flush()

    def snapshot(self) -> list[dict[str, Any]]:
        """Records not yet flushed (for tests)."""
        return [msgspec.to_builtins(to_record(r)) for r in self._buf]
