"""Sinks of call records: stderr, a rotated JSONL file, HTTP (batched POSTs), OTLP logs over HTTP.

Theory of operation:

    who                | does
    -------------------+---------------------------------------------------------------------------------
    the worker's loop  | ``offer``: hands a chunk of encoded records (JSON lines) to every sink; takes the
                       | sink's lock for an append and a notify, never waits. A sink holding ``queue``
                       | records already drops the chunk and counts it (``dropped["queue_full"]``)
    the sink's thread  | takes what is queued (up to ``batch`` records), delivers it (a write, a POST), and
                       | on a failure keeps it and retries after a backoff that doubles up to
                       | ``max_backoff``; records queued meanwhile wait behind it up to the bound. An answer
                       | that retrying cannot change (HTTP 400, a closed stderr) drops the batch
                       | (``dropped["rejected"]``)
    ``close``          | (the worker stops) the thread delivers what is queued, retrying until the
                       | deadline; what is left then is dropped (``dropped["shutdown"]``) and logged

Why threads: the loop must never wait on a disk, a pipe or a collector. Each thread's work is a system
call or an HTTP exchange on a whole batch, during which it releases the GIL, so the loop keeps running;
the encoding (the Python work) is done on the loop beforehand, an iteration's records at a time
(``records.RecordSink``). A sink's thread runs at a lower priority than the loop (``NICE``): where both
share a CPU, the kernel's copy of a flush is done when the loop waits, not in the middle of its requests.

Each counter has one writer (the loop for ``queue_full``, the thread for the rest), so the snapshot taken
on the loop reads them without a lock.
"""

from __future__ import annotations

import collections
import errno
import http.client
import logging
import os
import select
import stat
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec

from gateway.observe.config import RecordSinkConfig

__all__ = [
    "FileSink",
    "HttpSink",
    "OtlpSink",
    "Sink",
    "StreamSink",
    "build_sinks",
    "file_path_for",
]

log = logging.getLogger("gateway.records")

#: one queued chunk: the JSON lines, how many records they hold, and the records (for sinks that
#: ``wants_records``: OTLP; else possibly empty)
Chunk = tuple[bytes, int, Sequence[Any]]


#: the niceness a sink's thread adds to its own (Linux schedules threads one by one): where it shares a
#: CPU with the worker's loop, a write of a flush's records (a few hundred kilobytes copied by the kernel)
#: waits for the loop instead of holding it back; it still gets its share of a busy CPU (about 1/16th of
#: the loop's at +10), more than writing records needs
NICE = 10


def _lower_priority() -> None:
    """(On the sink's thread) run at ``NICE`` more than the worker; nothing where threads have no
    priority of their own."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + NICE, 19))
    except (AttributeError, OSError):  # not Linux, or not allowed
        pass


class _Permanent(Exception):
    """A delivery that retrying cannot fix: the batch is dropped."""


class Sink:
    """A destination with its own thread and a bounded queue of records (see the module's table)."""

    kind = "sink"
    #: reads the records of a chunk, not only its JSON lines (else the chunk's records may be empty)
    wants_records = False
    #: records per delivery, at most (a stream or a file takes everything queued at once)
    batch = 1 << 30

    def __init__(self, name: str, *, queue: int = 10000, backoff: float = 0.5, max_backoff: float = 30.0
                 ) -> None:
        self.name = name
        self.bound = max(1, queue)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._chunks: collections.deque[Chunk] = collections.deque()
        self._queued = 0
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        #: set by ``close``: ends a backoff early
        self._wake = threading.Event()
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._failing = False
        #: counters (see the module's docstring for who writes each)
        self.written = 0
        self.failures = 0
        self.dropped = {"queue_full": 0, "rejected": 0, "shutdown": 0}

    # -- the loop's side

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"records-{self.name}", daemon=True)
            self._thread.start()

    def offer(self, chunk: Chunk) -> bool:
        """Queue ``chunk`` unless the sink holds ``queue`` records already (then it is dropped and
        counted). Never waits for the sink."""
        n = chunk[1]
        with self._cond:
            if self._closing or self._queued + n > self.bound:
                self.dropped["queue_full"] += n
                return False
            self._chunks.append(chunk)
            self._queued += n
            self._cond.notify()
        return True

    @property
    def queued(self) -> int:
        return self._queued

    def close(self, timeout: float) -> None:
        """Deliver what is queued (retrying until ``timeout`` seconds from now), then stop the thread."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1.0)
            self._thread = None
        with self._cond:  # a thread that never came back: what it holds is lost
            left = self._queued
            self._chunks.clear()
            self._queued = 0
        if left:
            self.dropped["shutdown"] += left
            log.warning("records: sink %s still failing at shutdown; %d record(s) dropped", self.name, left)
        self._release()

    # -- the thread's side

    def _take(self) -> list[Chunk] | None:
        """Wait for records; up to ``batch`` of them (at least one chunk). None: closing and empty."""
        with self._cond:
            while not self._chunks:
                if self._closing:
                    return None
                self._cond.wait()
            out: list[Chunk] = []
            n = 0
            while self._chunks and n < self.batch:
                chunk = self._chunks[0]
                room = self.batch - n
                if chunk[1] > room:  # the rest of this chunk waits for the next batch
                    head, self._chunks[0] = _split(chunk, room)
                    out.append(head)
                    break
                out.append(self._chunks.popleft())
                n += chunk[1]
            return out

    def _done(self, n: int) -> None:
        with self._cond:
            self._queued -= n

    def _run(self) -> None:
        _lower_priority()
        while True:
            chunks = self._take()
            if chunks is None:
                return
            n = sum(c[1] for c in chunks)
            delay = self.backoff
            while True:
                try:
                    self.deliver(chunks)
                except _Permanent as exc:
                    self.dropped["rejected"] += n
                    self.failures += 1
                    log.warning("records: sink %s rejected %d record(s): %s", self.name, n, exc)
                    break
                except Exception as exc:
                    self.failures += 1
                    if not self._failing:
                        self._failing = True
                        log.warning("records: sink %s failed (%s); retrying, records wait in its queue",
                                    self.name, _describe(exc))
                    if self._wait_retry(delay):
                        delay = min(delay * 2.0, self.max_backoff)
                        continue
                    self.dropped["shutdown"] += n
                    log.warning("records: sink %s still failing at shutdown; %d record(s) dropped",
                                self.name, n)
                    break
                else:
                    self.written += n
                    if self._failing:
                        self._failing = False
                        log.info("records: sink %s delivers again", self.name)
                    break
            self._done(n)

    def _wait_retry(self, delay: float) -> bool:
        """Wait ``delay`` before a retry (cut short by ``close``, then bounded by its deadline); False: past
        the shutdown deadline."""
        if not self._wake.wait(delay):
            return True
        left = self._deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))  # a backoff while shutting down, never past the deadline
        return time.monotonic() < self._deadline

    def deliver(self, chunks: list[Chunk]) -> None:
        """Deliver the chunks (in this order); raise to retry, ``_Permanent`` to drop them."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release what ``deliver`` holds open (on the closing thread, after the sink's thread)."""


def _split(chunk: Chunk, n: int) -> tuple[Chunk, Chunk]:
    """The first ``n`` records of ``chunk``, and the rest."""
    data, count, records = chunk
    end = 0
    for _ in range(n):
        end = data.index(b"\n", end) + 1
    return (data[:end], n, records[:n]), (data[end:], count - n, records[n:])


def _pieces(data: bytes, size: int) -> list[bytes]:
    """``data`` cut between lines into pieces of at most ``size`` bytes (a longer line is a piece)."""
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        end = pos + size
        if end >= n:
            end = n
        else:
            cut = data.rfind(b"\n", pos, end)
            end = cut + 1 if cut >= 0 else data.find(b"\n", end) + 1 or n
        out.append(data[pos:end])
        pos = end
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --------------------------------------------------------------------------------------------------------


class StreamSink(Sink):
    """A file descriptor: stderr by default. A closed descriptor (EPIPE, EBADF) drops what it is given."""

    kind = "stderr"

    def __init__(self, name: str, fd: int = 2, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.fd = fd
        #: a pipe or a socket (shared by the node's workers): writes of at most PIPE_BUF bytes, cut between
        #: lines, so that two workers' lines never interleave (a write to a file is whole anyway)
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        self._piece = select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 0

    def deliver(self, chunks: list[Chunk]) -> None:
        data = chunks[0][0] if len(chunks) == 1 else b"".join(c[0] for c in chunks)
        try:
            if self._piece and len(data) > self._piece:
                for piece in _pieces(data, self._piece):
                    _write_all(self.fd, piece)
            else:
                _write_all(self.fd, data)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.EBADF):
                raise _Permanent(_describe(exc)) from None
            raise


def file_path_for(template: str, worker: int) -> str:
    """The file of ``worker``: ``{worker}`` replaced, else ``-<worker>`` before the extension."""
    if "{worker}" in template:
        return template.replace("{worker}", str(worker))
    head, tail = os.path.split(template)
    stem, dot, ext = tail.rpartition(".")
    name = f"{stem}-{worker}.{ext}" if dot and stem else f"{tail}-{worker}"
    return os.path.join(head, name)


class FileSink(Sink):
    """A JSONL file of the worker's own, rotated by size and by age; ``keep`` rotated files are kept,
    ``<path>.1`` the newest. A rotation happens between two lines only, so every record is in exactly one
    file, whole."""

    kind = "file"

    def __init__(self, name: str, path: str, *, max_bytes: int = 0, max_age: float = 0.0, keep: int = 5,
                 **kw: Any) -> None:
        super().__init__(name, **kw)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = max(0, keep)
        self._fd = -1
        self._size = 0
        self._opened = 0.0
        #: rotations done (for the log and the tests' curiosity)
        self.rotations = 0

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        st = os.fstat(self._fd)
        self._size = st.st_size
        # a file kept from a previous run is as old as its first line (its creation time is not portable)
        self._opened = time.time() if st.st_size == 0 else min(time.time(), st.st_mtime)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _rotate(self) -> None:
        self._close_fd()
        if self.keep == 0:
            os.unlink(self.path)
        else:
            for i in range(self.keep - 1, 0, -1):
                src = f"{self.path}.{i}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i + 1}")
            os.replace(self.path, f"{self.path}.1")
        self.rotations += 1
        self._open()

    def deliver(self, chunks: list[Chunk]) -> None:
        data = chunks[0][0] if len(chunks) == 1 else b"".join(c[0] for c in chunks)
        if self._fd < 0:
            self._open()
        if self.max_age > 0 and self._size and time.time() - self._opened >= self.max_age:
            self._rotate()
        limit = self.max_bytes
        pos = 0
        while pos < len(data):
            piece_end = len(data)
            if limit > 0 and self._size + (piece_end - pos) > limit:
                room = limit - self._size
                cut = data.rfind(b"\n", pos, pos + room) if room > 0 else -1
                if cut < 0:  # not even one line fits
                    if self._size:
                        self._rotate()
                        continue
                    cut = data.find(b"\n", pos)  # a line longer than the limit: alone in its file
                    if cut < 0:
                        cut = len(data) - 1
                piece_end = cut + 1
            _write_all(self._fd, data[pos:piece_end] if pos or piece_end < len(data) else data)
            self._size += piece_end - pos
            pos = piece_end

    def _release(self) -> None:
        self._close_fd()


class HttpSink(Sink):
    """Batches POSTed to ``url`` as JSON lines (``application/x-ndjson``), on one keep-alive connection.
    A connection error, a timeout, 408, 429 and 5xx are retried; another answer drops the batch."""

    kind = "http"
    content_type = "application/x-ndjson"

    def __init__(self, name: str, url: str, *, headers: dict[str, str] | None = None, batch: int = 500,
                 timeout: float = 10.0, **kw: Any) -> None:
        super().__init__(name, **kw)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = dict(headers or {})
        self.batch = max(1, batch)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        return self._conn

    def body(self, chunks: list[Chunk]) -> bytes:
        return chunks[0][0] if len(chunks) == 1 else b"".join(c[0] for c in chunks)

    def deliver(self, chunks: list[Chunk]) -> None:
        payload = self.body(chunks)
        conn = self._connection()
        headers = {"content-type": self.content_type, **self.headers}
        try:
            conn.request("POST", self._target, body=payload, headers=headers)
            resp = conn.getresponse()
            answer = resp.read(2048)
            resp.read()  # the rest: the connection is reused
        except (OSError, http.client.HTTPException):
            self._drop_connection()
            raise
        if resp.will_close:
            self._drop_connection()
        status = resp.status
        if 200 <= status < 300:
            return
        text = answer[:200].decode("utf-8", "replace")
        if status in (408, 429) or status >= 500:
            raise ConnectionError(f"HTTP {status}: {text}")
        raise _Permanent(f"HTTP {status}: {text}")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _release(self) -> None:
        self._drop_connection()


# --------------------------------------------------------------------------------------------------------
# OTLP logs

#: record fields with an OpenTelemetry semantic-convention name (GenAI, HTTP); the others are sent as
#: ``gateway.<field>``
_OTEL_NAMES = {
    "request_id": "gateway.request_id",
    "method": "http.request.method",
    "path": "url.path",
    "status": "http.response.status_code",
    "model": "gen_ai.request.model",
    "upstream_model": "gen_ai.response.model",
    "provider": "gen_ai.provider.name",
    "endpoint": "gen_ai.operation.name",
    "prompt_tokens": "gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens",
    "cached_tokens": "gen_ai.usage.cache_read.input_tokens",
    "cache_write_tokens": "gen_ai.usage.cache_creation.input_tokens",
    "error_code": "error.type",
}
#: the OTel operation names of the gateway's endpoints
_OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}


def _any_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, dict):
        return {"kvlistValue": {"values": [{"key": str(k), "value": _any_value(x)} for k, x in v.items()]}}
    return {"stringValue": str(v)}


def otlp_log_record(record: dict[str, Any], line: bytes) -> dict[str, Any]:
    """One call record as an OTLP ``LogRecord`` (JSON mapping): the record's JSON line as the body, its
    fields as attributes (semantic-convention names where there is one)."""
    attrs = []
    for field, value in record.items():
        if field == "ts" or value is None:
            continue
        if field == "endpoint":
            value = _OPERATIONS.get(value, value)
        attrs.append({"key": _OTEL_NAMES.get(field, f"gateway.{field}"), "value": _any_value(value)})
    ns = str(int(record.get("ts", time.time()) * 1e9))
    status = record.get("status") or 0
    severity, text = (17, "ERROR") if status >= 500 else (13, "WARN") if status >= 400 else (9, "INFO")
    return {
        "timeUnixNano": ns, "observedTimeUnixNano": ns, "severityNumber": severity, "severityText": text,
        "eventName": "gateway.call", "body": {"stringValue": line.decode("utf-8", "replace")},
        "attributes": attrs,
    }


class OtlpSink(HttpSink):
    """OpenTelemetry logs over OTLP/HTTP: each record a ``LogRecord`` under one resource
    (``service.name``). ``json`` needs nothing installed (OTLP/HTTP's JSON encoding, which collectors
    accept on ``/v1/logs``); ``protobuf`` needs ``opentelemetry-proto`` (the ``otlp`` extra)."""

    kind = "otlp"
    wants_records = True

    def __init__(self, name: str, url: str, *, encoding: str = "json", service_name: str = "llm-gateway",
                 worker: int = 0, **kw: Any) -> None:
        super().__init__(name, url, **kw)
        self.encoding = encoding
        self._resource = {"attributes": [
            {"key": "service.name", "value": {"stringValue": service_name}},
            {"key": "service.instance.id", "value": {"stringValue": f"{os.uname().nodename}-{os.getpid()}"}},
            {"key": "gateway.worker", "value": {"intValue": str(worker)}},
        ]}
        self._scope = {"name": "gateway.records"}
        self._proto: Any = None
        if encoding == "protobuf":
            import importlib

            json_format = importlib.import_module("google.protobuf.json_format")
            service = importlib.import_module("opentelemetry.proto.collector.logs.v1.logs_service_pb2")
            self._proto = (json_format, service.ExportLogsServiceRequest)
            self.content_type = "application/x-protobuf"
        else:
            self.content_type = "application/json"

    def body(self, chunks: list[Chunk]) -> bytes:
        records: list[dict[str, Any]] = []
        lines: list[bytes] = []
        for data, _, recs in chunks:
            records.extend(msgspec.to_builtins(list(recs)))
            lines.extend(data.splitlines())
        logs = [otlp_log_record(r, line) for r, line in zip(records, lines, strict=True)]
        message = {"resourceLogs": [{"resource": self._resource,
                                     "scopeLogs": [{"scope": self._scope, "logRecords": logs}]}]}
        if self._proto is None:
            return msgspec.json.encode(message)
        json_format, request_type = self._proto
        return bytes(json_format.ParseDict(message, request_type()).SerializeToString())


# --------------------------------------------------------------------------------------------------------


def _names(configs: Sequence[RecordSinkConfig]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for c in configs:
        if c.name:
            out.append(c.name)
            continue
        seen[c.type] = seen.get(c.type, 0) + 1
        out.append(c.type if seen[c.type] == 1 else f"{c.type}-{seen[c.type]}")
    return out


def build_sinks(configs: Sequence[RecordSinkConfig], worker: int, secret: Any) -> list[Sink]:
    """The sinks of ``[[records.sinks]]`` for ``worker`` (none configured: stderr). ``secret`` resolves an
    ``env:``/``file:`` reference. Raises ValueError or ``ConfigError`` on what validation missed."""
    if not configs:
        return [StreamSink("stderr")]
    out: list[Sink] = []
    for c, name in zip(configs, _names(configs), strict=True):
        common: dict[str, Any] = {"queue": c.queue, "backoff": c.backoff, "max_backoff": c.max_backoff}
        if c.type == "stderr":
            out.append(StreamSink(name, **common))
        elif c.type == "file":
            assert c.path is not None
            out.append(FileSink(name, file_path_for(c.path, worker), max_bytes=c.max_bytes,
                                max_age=c.max_age, keep=c.keep, **common))
        else:
            assert c.url is not None
            headers = {k: secret(v) if v.startswith(("env:", "file:")) else v for k, v in c.headers.items()}
            http_kw: dict[str, Any] = {"headers": headers, "batch": c.batch, "timeout": c.timeout, **common}
            if c.type == "http":
                out.append(HttpSink(name, c.url, **http_kw))
            else:
                out.append(OtlpSink(name, c.url, encoding=c.encoding, service_name=c.service_name,
                                    worker=worker, **http_kw))
    return out
