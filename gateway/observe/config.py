"""The ``[records]`` table: where call records go, and what they carry (docs/observability.md).

``[log] call_records`` stays the switch (on by default). Without any ``[[records.sinks]]`` a worker writes
its records to stderr, as before this table existed; with sinks listed, it writes to exactly those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import Literal

import msgspec

__all__ = ["RecordSinkConfig", "RecordsConfig", "SinkType", "records_problems"]

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_URL = re.compile(r"https?://[^/\s?#]+[^\s]*\Z")

SinkType = Literal["stderr", "file", "http", "otlp"]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class RecordSinkConfig(_Base, frozen=True):
    """One destination of the call records. Which keys apply depends on ``type``."""

    type: SinkType
    #: a name for the sink's metrics and log lines (default: the type, then ``-2``, ``-3``...)
    name: str | None = None
    #: records waiting for this sink; beyond it new records are dropped and counted
    queue: int = 10000
    # -- file
    #: the JSONL file; ``{worker}`` is replaced by the worker's number, otherwise ``-<worker>`` is put
    #: before the extension (each worker writes a file of its own)
    path: str | None = None
    #: rotate when the file would grow beyond this many bytes (0: never by size)
    max_bytes: int = 100 * 1024 * 1024
    #: rotate when the file is older than this many seconds (0: never by age)
    max_age: float = 0.0
    #: rotated files kept (``<path>.1`` is the newest); older ones are removed
    keep: int = 5
    # -- http and otlp
    #: where batches are POSTed (otlp: the collector's logs endpoint, e.g. http://host:4318/v1/logs)
    url: str | None = None
    #: extra request headers; a value ``env:NAME`` or ``file:PATH`` is read as a credential
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: records per request, at most
    batch: int = 500
    #: seconds to wait for an answer
    timeout: float = 10.0
    #: the first retry's delay; each retry doubles it up to ``max_backoff``
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: otlp: "json" (OTLP/HTTP JSON, nothing to install) or "protobuf" (needs the ``otlp`` extra)
    encoding: Literal["json", "protobuf"] = "json"
    #: otlp: the resource's ``service.name``
    service_name: str = "llm-gateway"


class RecordsConfig(_Base, frozen=True):
    """What records carry besides the call's figures, and where they go."""

    #: seconds between two hand-offs of the worker's records to its sinks
    flush_interval: float = 0.05
    #: records a worker holds before they are handed off; beyond it new records are dropped and counted
    queue: int = 50000
    #: the request and answer bodies in each record: "none", "request", or "both" (non-streamed answers)
    bodies: Literal["none", "request", "both"] = "none"
    #: bytes of each body kept (the rest is cut, and the record says so)
    max_body_bytes: int = 4096
    #: JSON member names whose values are replaced by "[redacted]" in bodies (besides key material,
    #: which is always redacted)
    redact_fields: list[str] = msgspec.field(default_factory=list)
    #: where records go; none listed: stderr
    sinks: list[RecordSinkConfig] = msgspec.field(default_factory=list)


def _importable(*modules: str) -> bool:
    import importlib.util

    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ImportError:  # a parent package is missing
        return False


def _finite_at_least(v: float, low: float) -> bool:
    return math.isfinite(v) and v >= low


def records_problems(
    rc: RecordsConfig, metric_labels: Sequence[str] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """What the types cannot say about ``[records]`` (and ``[metrics] labels``): (key path, message)."""
    if not (_finite_at_least(rc.flush_interval, 0.001) and rc.flush_interval <= 10.0):
        yield ("records", "flush_interval"), f"must be 0.001 to 10 seconds, found {rc.flush_interval}"
    if rc.queue < 1:
        yield ("records", "queue"), f"must be 1 or more, found {rc.queue}"
    if rc.max_body_bytes < 1:
        yield ("records", "max_body_bytes"), f"must be 1 or more, found {rc.max_body_bytes}"
    if any(not f for f in rc.redact_fields):
        yield ("records", "redact_fields"), "must not contain an empty name"
    names: set[str] = set()
    for i, s in enumerate(rc.sinks):
        at: tuple[str | int, ...] = ("records", "sinks", i)
        if s.name is not None:
            if not _NAME.match(s.name):
                yield (*at, "name"), "must be 1 to 64 letters, digits, '.', '_' or '-'"
            elif s.name in names:
                yield (*at, "name"), f"{s.name!r} names another sink already"
            names.add(s.name)
        if s.queue < 1:
            yield (*at, "queue"), f"must be 1 or more, found {s.queue}"
        if s.type == "file":
            if not s.path or not s.path.strip():
                yield (*at, "path"), "a file sink needs a path"
            if s.max_bytes < 0:
                yield (*at, "max_bytes"), f"must be 0 (no size limit) or more, found {s.max_bytes}"
            if not _finite_at_least(s.max_age, 0.0):
                yield (*at, "max_age"), f"must be 0 (no age limit) or more seconds, found {s.max_age}"
            if s.keep < 0:
                yield (*at, "keep"), f"must be 0 or more, found {s.keep}"
        elif s.type in ("http", "otlp"):
            if not s.url:
                yield (*at, "url"), f"an {s.type} sink needs a url"
            elif not _URL.match(s.url):
                yield (*at, "url"), f"must be an http:// or https:// URL, found {s.url!r}"
            if s.batch < 1:
                yield (*at, "batch"), f"must be 1 or more, found {s.batch}"
            for key in ("timeout", "backoff", "max_backoff"):
                v = getattr(s, key)
                if not (_finite_at_least(v, 0.0) and v > 0):
                    yield (*at, key), f"must be more than 0 seconds, found {v}"
            if s.type == "otlp" and s.encoding == "protobuf":
                if not _importable("google.protobuf", "opentelemetry.proto.collector.logs.v1"):
                    yield (*at, "encoding"), ('"protobuf" needs the otlp extra (pip install '
                                              '"llm-gateway[otlp]"); "json" needs nothing')
    for i, label in enumerate(metric_labels):
        if label not in ("tenant", "key"):
            yield ("metrics", "labels", i), f'must be "tenant" or "key", found {label!r}'
