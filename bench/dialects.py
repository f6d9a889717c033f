"""Every dialect path of the gateway against nginx ``proxy_pass``, per core, in one run.

    python -m bench.dialects [--rows chat,chat-anthropic,...] [--rounds 3] [--duration 6] [--json PATH]

One gateway (one worker, call records on: the default config) has four providers, all at the same fast
upstream: an ``openai``, an ``anthropic``, a ``gemini`` and a ``bedrock`` one. Each row of the table is
one way through it, measured with wrk against nginx proxying the *equivalent* request to the same
upstream in the same run:

    row                  client sends                 gateway sends upstream          bar
    chat                 /v1/chat/completions         /v1/chat/completions (bytes)    the reference
    chat-anthropic       /v1/chat/completions         /v1/messages                    >= 0.5x (issue 15)
    chat-gemini          /v1/chat/completions         .../models/M:generateContent    >= 0.5x (issue 16)
    chat-bedrock         /v1/chat/completions         /model/M/converse (SigV4)       >= 0.5x (issue 16)
    messages             /v1/messages                 /v1/messages (bytes)            >= 0.6x (issue 17)
    messages-openai      /v1/messages                 /v1/chat/completions            >= 0.5x (issue 17)
    responses            /v1/responses (stored)       /v1/chat/completions            reported

and each again streamed (``<row>-stream``: ``stream: true``, the upstream answering 20 text deltas in its
own stream format, the Bedrock one in AWS event-stream framing), with the same bars.

**The upstream** is an nginx on the load CPUs answering every upstream path with canned bytes in that
path's wire format (a ``chat.completion``, an Anthropic ``message``, a ``GenerateContentResponse``, a
Converse answer, and their streams: the answers of ``bench.translate*``), so it is never the bottleneck
and costs both targets the same. An upstream cannot tell a stream request from another by its path on
OpenAI and Anthropic, so the streamed rows' models sit on their own providers at ``/sse/v1``.

**The equivalent request** nginx is sent is what the gateway itself sends upstream for that row: before
the upstream nginx starts, a recorder in this process takes its port, answers the same canned bytes and
keeps the body of each row's probe through the gateway. nginx is then sent that body at that path, so
both targets move the same bytes to the same upstream and get the same answer; the gateway's ratio is
what its dialect work (decode, translate, sign, encode, record) costs over a proxy that does none.

After the rounds, the translation's own CPU per request is measured in this process by ``bench.translate``,
``bench.translate_gemini`` and ``bench.translate_bedrock`` (no sockets, no engine) and printed per row.

``tests/unit/test_bench_dialects.py`` checks the pure parts (rows, routing of the canned answers, the
configs, the summary); ``bench/README.md`` describes the run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench import translate, translate_bedrock, translate_gemini
from bench.configs import (
    BENCH_KEY,
    GATEWAY_KEY,
    GATEWAY_KEY_ID,
    MODEL,
    gateway_key_digest,
    nginx_conf,
)
from bench.procs import (
    HOST,
    BenchError,
    Service,
    free_ports,
    http_request,
    log,
    machine_info,
    parse_cpu_list,
    start_service,
    wait_ready,
)
from bench.proxy_vs_nginx import _fmt_ms, _fmt_ratio, _median_or_none, _ratio
from bench.rounds import finish, measure, run_bench
from bench.stack import Round, Stack, StackOptions, Target, wrk_round
from bench.wrk import wrk_lua

__all__ = [
    "ROWS",
    "UPSTREAM_ANSWERS",
    "Row",
    "answer_for",
    "format_table",
    "gateway_toml",
    "main",
    "parse_translation_output",
    "summarise",
    "upstream_conf",
]

GENERATOR = "bench/dialects.py"
#: the upstream model ids; each gateway model is named like its upstream model (nothing is rewritten)
ANTHROPIC_MODEL = "claude-bench"
GEMINI_MODEL = "gemini-bench"
BEDROCK_MODEL = "bedrock-bench"
#: static AWS credentials of the bedrock provider (SigV4 is computed on every request, as in production)
AWS_ENV = {"BENCH_AWS_KEY_ID": "AKIDBENCHEXAMPLE", "BENCH_AWS_SECRET": "bench-secret-key"}

#: the upstream's canned answers, by wire format (``answer_for`` picks one by path)
UPSTREAM_ANSWERS: dict[str, bytes] = {
    "openai": translate.COMPLETION,
    "anthropic": translate.MESSAGE,
    "gemini": translate_gemini.ANSWER,
    "bedrock": translate_bedrock.ANSWER,
    # streams of STREAM_DELTAS text deltas, whole, as the in-process figures' streams
    "openai-stream": b"".join(translate._chunks(20)),
    "anthropic-stream": b"".join(translate._stream(20)),
    "gemini-stream": b"".join(translate_gemini._stream(20)),
    "bedrock-stream": b"".join(translate_bedrock._stream(20)),  # AWS event-stream framing (binary)
}
#: the Content-Type of each canned answer
CONTENT_TYPES = {"openai-stream": "text/event-stream", "anthropic-stream": "text/event-stream",
                 "gemini-stream": "text/event-stream", "bedrock-stream": "application/vnd.amazon.eventstream"}
#: the streamed rows' upstream models (their own providers, at ``/sse/v1``: the upstream tells a stream
#: request from another by its path, as it cannot read the body's ``stream``)
SSE_MODEL = "mock-1-sse"
ANTHROPIC_SSE_MODEL = "claude-bench-sse"

_PROMPT = "Say hello to the benchmark."


def _json(doc: dict[str, Any], stream: bool) -> bytes:
    return json.dumps({**doc, "stream": True} if stream else doc, separators=(",", ":")).encode()


def _chat(model: str, stream: bool = False) -> bytes:
    return _json({"model": model, "messages": [{"role": "user", "content": _PROMPT}], "max_tokens": 64},
                 stream)


def _messages(model: str, stream: bool = False) -> bytes:
    return _json({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": _PROMPT}]},
                 stream)


def _responses(model: str, stream: bool = False) -> bytes:
    return _json({"model": model, "input": _PROMPT, "max_output_tokens": 64}, stream)


def _check_json(field: str, value: str) -> Callable[[int, bytes], str | None]:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        try:
            doc = json.loads(body)
        except ValueError:
            return "not JSON"
        if isinstance(doc, dict) and doc.get(field) == value:
            return None
        return f"not a {field}={value!r} answer"
    return check


@dataclass(frozen=True)
class Row:
    name: str
    description: str
    #: the client's path and body (the gateway target)
    path: str
    body: bytes
    #: the upstream's wire format (the gateway provider serving the row's model)
    upstream: str
    #: the gateway's answer as the client's dialect shapes it
    check: Callable[[int, bytes], str | None]
    #: the per-core ratio over nginx the issue asks for (None: reported only)
    bar: float | None = None
    issue: int | None = None
    #: labels of ``bench.translate*`` output lines whose sum is the row's translation CPU per request
    translation: tuple[str, ...] = ()


def _check_stream(last: bytes) -> Callable[[int, bytes], str | None]:
    def check(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"status {status}"
        return None if last in body else f"a stream without {last!r}"
    return check


_CHAT = _check_json("object", "chat.completion")
_MESSAGE = _check_json("type", "message")
_RESPONSE = _check_json("object", "response")

ROWS: dict[str, Row] = {r.name: r for r in (
    Row("chat", "OpenAI chat pass-through (the reference)", "/v1/chat/completions", _chat(MODEL), "openai",
        _CHAT),
    Row("chat-anthropic", "OpenAI chat -> Anthropic upstream", "/v1/chat/completions", _chat(ANTHROPIC_MODEL),
        "anthropic", _CHAT, 0.5, 15,
        ("translate: request OpenAI -> Anthropic", "translate: answer Anthropic -> OpenAI")),
    Row("chat-gemini", "OpenAI chat -> Gemini upstream", "/v1/chat/completions", _chat(GEMINI_MODEL),
        "gemini", _CHAT, 0.5, 16,
        ("translate_gemini: request OpenAI -> Gemini", "translate_gemini: answer Gemini -> OpenAI")),
    Row("chat-bedrock", "OpenAI chat -> Bedrock upstream (SigV4)", "/v1/chat/completions",
        _chat(BEDROCK_MODEL), "bedrock", _CHAT, 0.5, 16,
        ("translate_bedrock: request OpenAI -> Converse", "translate_bedrock: answer Converse -> OpenAI",
         "translate_bedrock: SigV4 signature per request")),
    Row("messages", "Messages pass-through to Anthropic", "/v1/messages", _messages(ANTHROPIC_MODEL),
        "anthropic", _MESSAGE, 0.6, 17, ("translate: pass-through Messages answer (usage read)",)),
    Row("messages-openai", "Messages -> OpenAI upstream", "/v1/messages", _messages(MODEL), "openai",
        _MESSAGE, 0.5, 17, ("translate: request Messages -> OpenAI", "translate: answer OpenAI -> Messages")),
    Row("responses", "Responses (stored) -> OpenAI upstream", "/v1/responses", _responses(MODEL), "openai",
        _RESPONSE),
    # streamed: 20 text deltas from the upstream, relayed (pass-through) or translated event by event
    Row("chat-stream", "streamed OpenAI chat pass-through", "/v1/chat/completions", _chat(SSE_MODEL, True),
        "openai-stream", _check_stream(b"data: [DONE]")),
    Row("chat-anthropic-stream", "streamed OpenAI chat -> Anthropic upstream", "/v1/chat/completions",
        _chat(ANTHROPIC_SSE_MODEL, True), "anthropic-stream", _check_stream(b"data: [DONE]"), 0.5, 15,
        ("translate: request OpenAI -> Anthropic", "translate: stream of 20 deltas")),
    Row("chat-gemini-stream", "streamed OpenAI chat -> Gemini upstream", "/v1/chat/completions",
        _chat(GEMINI_MODEL, True), "gemini-stream", _check_stream(b"data: [DONE]"), 0.5, 16,
        ("translate_gemini: request OpenAI -> Gemini", "translate_gemini: stream of 20 chunks")),
    Row("chat-bedrock-stream", "streamed OpenAI chat -> Bedrock upstream (SigV4)", "/v1/chat/completions",
        _chat(BEDROCK_MODEL, True), "bedrock-stream", _check_stream(b"data: [DONE]"), 0.5, 16,
        ("translate_bedrock: request OpenAI -> Converse", "translate_bedrock: stream of 20 deltas",
         "translate_bedrock: SigV4 signature per request")),
    Row("messages-stream", "streamed Messages pass-through to Anthropic", "/v1/messages",
        _messages(ANTHROPIC_SSE_MODEL, True), "anthropic-stream", _check_stream(b"message_stop"), 0.6, 17,
        ("translate: pass-through Messages stream of 20 deltas",)),
    Row("messages-openai-stream", "streamed Messages -> OpenAI upstream", "/v1/messages",
        _messages(SSE_MODEL, True), "openai-stream", _check_stream(b"message_stop"), 0.5, 17,
        ("translate: request Messages -> OpenAI", "translate: stream of 20 deltas #2")),
    Row("responses-stream", "streamed Responses (stored) -> OpenAI upstream", "/v1/responses",
        _responses(SSE_MODEL, True), "openai-stream", _check_stream(b"response.completed")),
)}

#: the upstream paths, as regular expressions (nginx ``location ~``) -> wire format
_UPSTREAM_PATHS: tuple[tuple[str, str], ...] = (
    (r"^/v1/chat/completions$", "openai"),
    (r"^/v1/messages$", "anthropic"),
    (r"^/v1beta/models/[^/]+:generateContent$", "gemini"),
    (r"^/model/[^/]+/converse$", "bedrock"),
    (r"^/sse/v1/chat/completions$", "openai-stream"),
    (r"^/sse/v1/messages$", "anthropic-stream"),
    (r"^/v1beta/models/[^/]+:streamGenerateContent$", "gemini-stream"),
    (r"^/model/[^/]+/converse-stream$", "bedrock-stream"),
)


def answer_for(path: str) -> tuple[str, bytes] | None:
    """(Content-Type, canned answer) the upstream gives at ``path`` (query ignored), or None (404)."""
    path = path.split("?", 1)[0]
    for pattern, wire in _UPSTREAM_PATHS:
        if re.match(pattern, path):
            return CONTENT_TYPES.get(wire, "application/json"), UPSTREAM_ANSWERS[wire]
    return None


def write_canned(tmp: Path) -> None:
    """The canned streams as files (``upstream_conf`` serves them: too long, or binary, for a ``return``)."""
    (tmp / "canned").mkdir(parents=True, exist_ok=True)
    for wire in CONTENT_TYPES:
        (tmp / "canned" / f"{wire}.bin").write_bytes(UPSTREAM_ANSWERS[wire])


def upstream_conf(tmp: Path, port: int, *, generator: str = GENERATOR) -> str:
    """The fast upstream: an nginx answering each upstream path with its canned bytes: the JSON answers
    from its memory (``return``), the streams from the files ``write_canned`` puts in ``tmp/canned``
    (the static module refuses a POST with 405: ``error_page`` turns it into the file, with a 200)."""
    locations = []
    for pattern, wire in _UPSTREAM_PATHS:
        if wire in CONTENT_TYPES:
            locations.append(f"""
        location ~ {pattern} {{
            default_type {CONTENT_TYPES[wire]};
            alias {tmp}/canned/{wire}.bin;
            error_page 405 =200 $uri;
        }}""")
            continue
        text = UPSTREAM_ANSWERS[wire].decode()
        if "'" in text or "$" in text or "\\" in text:
            raise ValueError(f"the canned {wire} answer must not contain ', $ or \\ (nginx string syntax)")
        locations.append(f"""
        location ~ {pattern} {{
            return 200 '{text}';
        }}""")
    return f"""\
# generated by {generator}
worker_processes 1;
daemon off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream-error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/upstream-client-body;
    proxy_temp_path {tmp}/upstream-proxy;
    fastcgi_temp_path {tmp}/upstream-fastcgi;
    uwsgi_temp_path {tmp}/upstream-uwsgi;
    scgi_temp_path {tmp}/upstream-scgi;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;

    server {{
        listen {HOST}:{port};
        default_type application/json;{"".join(locations)}
        location = /healthz {{
            return 200 '{{"status":"ok"}}';
        }}
    }}
}}
"""


def gateway_toml(port: int, upstream_port: int, *, store_path: Path, auth_digest: str | None = None,
                 call_records: bool = True, generator: str = GENERATOR) -> str:
    """One gateway, four providers at the same upstream, one model per provider named like its upstream
    model; call records on (the default) unless ``call_records`` is False; keys required with
    ``auth_digest``. The SQLite store also holds the Responses API's stored responses."""
    base = f"http://{HOST}:{upstream_port}"
    text = f"""\
# generated by {generator}
[server]
host = "{HOST}"
port = {port}
workers = 1
drain_timeout = 1.0

[log]
level = "warning"
call_records = {"true" if call_records else "false"}

[admin]
enabled = false

[store]
url = "sqlite://{store_path}"
"""
    if auth_digest is not None:
        text += f"""
[auth]
required = true

[[auth.keys]]
id = "{GATEWAY_KEY_ID}"
digest = "{auth_digest}"
tenant = "bench"

[tenants.bench]
name = "benchmark"
"""
    text += f"""
[providers.openai]
type = "openai"
base_url = "{base}/v1"
api_key = "env:BENCH_KEY"

[providers.anthropic]
type = "anthropic"
base_url = "{base}/v1"
api_key = "env:BENCH_KEY"

[providers.openai-sse]
type = "openai"
base_url = "{base}/sse/v1"
api_key = "env:BENCH_KEY"

[providers.anthropic-sse]
type = "anthropic"
base_url = "{base}/sse/v1"
api_key = "env:BENCH_KEY"

[providers.gemini]
type = "gemini"
base_url = "{base}/v1beta"
api_key = "env:BENCH_KEY"

[providers.bedrock]
type = "bedrock"
base_url = "{base}"
region = "us-east-1"
aws_access_key_id = "env:BENCH_AWS_KEY_ID"
aws_secret_access_key = "env:BENCH_AWS_SECRET"
"""
    for model, provider in ((MODEL, "openai"), (ANTHROPIC_MODEL, "anthropic"), (GEMINI_MODEL, "gemini"),
                            (BEDROCK_MODEL, "bedrock"), (SSE_MODEL, "openai-sse"),
                            (ANTHROPIC_SSE_MODEL, "anthropic-sse")):
        text += f"""
[models.{model}]
provider = "{provider}"
upstream_model = "{model}"
"""
    return text


# --- the recorder: what the gateway sends upstream, per row ------------------------------------------------


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True
    #: (path, body) of every request, in order
    seen: list[tuple[str, bytes]]


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Recorder

    def do_POST(self) -> None:  # http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.seen.append((self.path, body))
        kind, answer = answer_for(self.path) or ("application/json", None)
        self.send_response(200 if answer is not None else 404)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(answer or b"")))
        # closed after each answer: a keep-alive connection would outlive the recorder in the gateway's pool
        # (its handler thread still answering it, slowly, from this process), and that one pooled
        # connection in 64 would then put this server's latency into the gateway's p99
        self.send_header("connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(answer or b"")

    def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
        pass


@contextlib.contextmanager
def _recorder(port: int) -> Iterator[_Recorder]:
    server = _Recorder((HOST, port), _RecordingHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, name="bench-recorder", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- the in-process translation CPU ----------------------------------------------------------------------

_LINE = re.compile(r"^(?P<label>[^:]+?):\s+(?P<us>[0-9]+(?:\.[0-9]+)?) us")


def parse_translation_output(text: str, prefix: str = "") -> dict[str, float]:
    """``prefix: label -> microseconds`` of the ``label: N us ...`` lines ``bench.translate*`` print; a
    label printed again is numbered (``stream of 20 deltas #2``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            label = f"{prefix}: {m.group('label').strip()}" if prefix else m.group("label").strip()
            n, key = 1, label
            while key in out:
                n += 1
                key = f"{label} #{n}"
            out[key] = float(m.group("us"))
    return out


def translation_cpu(number: int) -> dict[str, float]:
    """Every figure of ``bench.translate``, ``bench.translate_gemini`` and ``bench.translate_bedrock``."""
    out: dict[str, float] = {}
    for module in (translate, translate_gemini, translate_bedrock):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            module.main(["--number", str(number)])
        out |= parse_translation_output(buf.getvalue(), module.__name__.rsplit(".", 1)[-1])
    return out


def row_translation_us(row: Row, figures: dict[str, float]) -> float | None:
    vals = [figures.get(label) for label in row.translation]
    return sum(v for v in vals if v is not None) if row.translation and None not in vals else None


# --- the run -----------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, tools: dict[str, Any]) -> None:
        self.args = args
        self.tmp = tmp
        self.tools = tools
        self.rows = [ROWS[name] for name in args.rows]
        self.stack = Stack(tools, tmp, StackOptions(server_cpus=list(args.server_cpus),
                                                    load_cpus=list(args.load_cpus), generator=GENERATOR))
        #: row name -> (upstream path, body) the gateway sent: what nginx is sent
        self.upstream_requests: dict[str, tuple[str, bytes]] = {}

    def stop_all(self) -> None:
        self.stack.stop()

    def _start(self, name: str, cpus: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        svc = start_service(name, self.stack.pinned(cpus, argv), self.tmp, env=env)
        self.stack.services.append(svc)
        return svc

    def _nginx_argv(self, conf: Path, error_log: str) -> list[str]:
        argv = [self.tools["nginx"], "-p", f"{self.tmp}/", "-c", str(conf)]
        if self.tools.get("nginx_has_e"):
            argv += ["-e", str(self.tmp / error_log)]
        return argv

    def start(self) -> list[Target]:
        a, st = self.args, self.stack
        up_port, gw_port, nginx_port = free_ports(3)
        store = self.tmp / "gateway-store" / "gateway.db"
        store.parent.mkdir(parents=True, exist_ok=True)
        key = GATEWAY_KEY if a.auth else BENCH_KEY
        (self.tmp / "gateway.toml").write_text(gateway_toml(
            gw_port, up_port, store_path=store, auth_digest=gateway_key_digest() if a.auth else None,
            call_records=not a.no_records))
        with _recorder(up_port) as rec:
            gateway = self._start("gateway", st.server_cpus, [
                sys.executable, "-m", "gateway", "serve", "--config", str(self.tmp / "gateway.toml"),
                "--workers", "1", "--host", HOST, "--port", str(gw_port),
            ], env={**os.environ, "BENCH_KEY": BENCH_KEY, **AWS_ENV})
            wait_ready(gateway, gw_port, "/readyz")
            gw = Target("gateway", gw_port, gateway, key)
            for row in self.rows:  # one real request each: its answer checked, its upstream request kept
                before = len(rec.seen)
                self._probe(gw, row.path, row.body, row.check, row.name)
                if len(rec.seen) != before + 1:
                    raise BenchError(f"{row.name}: the gateway sent {len(rec.seen) - before} upstream "
                                     "requests for one probe (expected 1)")
                self.upstream_requests[row.name] = rec.seen[-1]
        # the recorder's port is now the fast upstream's
        conf = self.tmp / "upstream.conf"
        write_canned(self.tmp)
        conf.write_text(upstream_conf(self.tmp, up_port))
        upstream = self._start("upstream", st.load_cpus, self._nginx_argv(conf, "upstream-error.log"))
        wait_ready(upstream, up_port, "/healthz")
        st.upstream, st.upstream_port, st.mock = upstream, up_port, upstream
        conf = self.tmp / "nginx.conf"
        conf.write_text(nginx_conf(self.tmp, nginx_port, up_port, generator=GENERATOR))
        nginx = self._start("nginx", st.server_cpus, self._nginx_argv(conf, "nginx-error.log"))
        wait_ready(nginx, nginx_port, "/healthz")
        ngx = Target("nginx", nginx_port, nginx, BENCH_KEY)
        for row in self.rows:
            path, body = self.upstream_requests[row.name]
            self._probe(gw, row.path, row.body, row.check, row.name)  # again, now on the fast upstream
            self._probe(ngx, path, body, _ok, row.name)
            for target, b in (("gateway", row.body), ("nginx", body)):
                (self.tmp / f"{row.name}-{target}.json").write_bytes(b)
                self._lua(row, target).write_text(wrk_lua(self.tmp / f"{row.name}-{target}.json", key
                                                          if target == "gateway" else BENCH_KEY,
                                                          generator=GENERATOR))
        return [gw, ngx]

    def _lua(self, row: Row, target: str) -> Path:
        return self.tmp / f"{row.name}-{target}.lua"

    def _probe(self, t: Target, path: str, body: bytes, check: Callable[[int, bytes], str | None],
               row: str) -> None:
        status, answer = http_request(t.port, "POST", path, body, key=t.key, timeout=10.0)
        problem = check(status, answer)
        if problem:
            raise BenchError(f"probe of {t.name} ({row}, POST {path}) failed: {problem}; response:\n"
                             f"{answer[:1000]!r}\n{t.service.name} log:\n{t.service.log_tail()}")

    def path_of(self, row: Row, target: Target) -> str:
        return row.path if target.name == "gateway" else self.upstream_requests[row.name][0]

    def round(self, row: Row, target: Target, index: int, duration: int) -> Round:
        a = self.args
        r = wrk_round(self.stack, target, self.path_of(row, target), self._lua(row, target.name), index,
                      duration=duration, connections=a.connections, threads=a.threads, timeout=a.timeout)
        r.extra["row"] = row.name
        return r

    def run(self) -> dict[str, Any]:
        a = self.args
        targets = self.start()
        rounds: list[Round] = []
        for row in self.rows:
            def describe(i: int, r: Round, row: Row = row) -> str:
                return (f"{row.name:<23} round {i}/{a.rounds} {r.target:<8} {r.wrk.rps:>9,.0f} req/s "
                        f"{r.req_per_cpu_s:>9,.0f} req/CPU-s  server CPU {r.server_cpu_s / r.wall_s:4.0%}  "
                        f"p99 {_fmt_ms(r.wrk.percentiles_ms.get('99'))}  errors {r.wrk.errors}")

            def round_of(t: Target, i: int, seconds: int, row: Row = row) -> Round:
                return self.round(row, t, i, seconds)

            rounds += measure(targets, a, round_of, describe, label=f"{row.name}: ")  # ABBA
        log(f"the translation's own CPU, in process (bench.translate*, -n {a.translate_number})")
        figures = translation_cpu(a.translate_number)
        n_load = len(a.load_cpus)
        done = [(r.extra["row"], r.target, r.as_dict(n_load)) for r in rounds]
        result = summarise(self.rows, done, figures)
        result["settings"] = {
            "rounds": a.rounds, "duration_s": a.duration, "warmup_s": a.warmup, "connections": a.connections,
            "threads": a.threads, "wrk_timeout_s": a.timeout, "server_cpus": self.stack.server_cpus,
            "load_cpus": self.stack.load_cpus, "auth": a.auth, "call_records": not a.no_records,
            "quick": a.quick,
        }
        result["upstream_requests"] = {k: {"path": p, "body": b.decode(errors="replace")}
                                       for k, (p, b) in self.upstream_requests.items()}
        result["machine"] = machine_info(self.tools)
        return result


def _ok(status: int, body: bytes) -> str | None:
    return None if status == 200 else f"status {status}"


def summarise(rows: Sequence[Row], rounds: Sequence[tuple[str, str, dict[str, Any]]],
              translation: dict[str, float]) -> dict[str, Any]:
    """Per row and target: requests per server CPU-second over all rounds (sum of requests / sum of CPU
    seconds), median req/s and p50/p99, errors; the per-core ratio over nginx and the row's bar.
    ``rounds``: (row, target, ``Round.as_dict``) (a pure function: the unit test feeds it)."""
    out: dict[str, Any] = {}
    for row in rows:
        per: dict[str, Any] = {}
        for target in ("gateway", "nginx"):
            rs = [d for name, t, d in rounds if name == row.name and t == target]
            if not rs:
                continue
            cpu = sum(d["server_cpu_s"] for d in rs)
            reqs = sum(d["requests"] for d in rs)
            errors = sum(d["wrk"]["errors"] for d in rs)
            per[target] = {
                "req_per_cpu_s": reqs / cpu if cpu > 0 else 0.0,
                "median_rps": statistics.median(d["rps"] for d in rs),
                "median_server_cpu_util": _median_or_none([d["server_cpu_util"] for d in rs]),
                "p50_ms": _median_or_none([d["wrk"]["percentiles_ms"].get("50") for d in rs]),
                "p99_ms": _median_or_none([d["wrk"]["percentiles_ms"].get("99") for d in rs]),
                "errors": errors,
                "rounds": rs,
            }
        g, n = per.get("gateway"), per.get("nginx")
        ratio = _ratio(g["req_per_cpu_s"], n["req_per_cpu_s"]) if g and n else None
        out[row.name] = {
            "description": row.description, "path": row.path, "upstream": row.upstream,
            "bar": row.bar, "issue": row.issue, "targets": per, "ratio_per_core": ratio,
            "rps_ratio": _ratio(g["median_rps"], n["median_rps"]) if g and n else None,
            "passes": None if row.bar is None or ratio is None else ratio >= row.bar,
            "translation_us": row_translation_us(row, translation),
        }
    ok = all(t["errors"] == 0 for r in out.values() for t in r["targets"].values())
    return {"rows": out, "translation_us": translation, "ok": ok}


def format_table(result: dict[str, Any]) -> str:
    s = result.get("settings", {})
    lines = []
    if s:
        lines += [f"{s['rounds']} round(s) x {s['duration_s']} s per target and row, wrk -t{s['threads']} "
                  f"-c{s['connections']}; server on CPU {s['server_cpus']}, wrk + upstream on CPU "
                  f"{s['load_cpus']}; call records {'on' if s['call_records'] else 'off'}, keys "
                  f"{'required' if s['auth'] else 'not required'}", ""]
    lines.append(f"{'row':<23}{'gw req/CPU-s':>13}{'nginx':>9}{'ratio':>8}{'bar':>7}{'gw p50':>10}"
                 f"{'gw p99':>10}{'ngx p99':>10}{'transl.':>10}{'errors':>8}")
    for name, r in result["rows"].items():
        g, n = r["targets"].get("gateway", {}), r["targets"].get("nginx", {})
        bar = "-" if r["bar"] is None else f"{r['bar']:.1f}x" + ("" if r["passes"] else "!")
        tr = "-" if r["translation_us"] is None else f"{r['translation_us']:.1f} us"
        errors = g.get("errors", 0) + n.get("errors", 0)
        lines.append(f"{name:<23}{g.get('req_per_cpu_s', 0):>13,.0f}{n.get('req_per_cpu_s', 0):>9,.0f}"
                     f"{_fmt_ratio(r['ratio_per_core']):>8}{bar:>7}{_fmt_ms(g.get('p50_ms')):>10}"
                     f"{_fmt_ms(g.get('p99_ms')):>10}{_fmt_ms(n.get('p99_ms')):>10}{tr:>10}{errors:>8}")
    lines += [
        "",
        "req/CPU-s = requests / CPU-seconds of the server's process tree, over all rounds; ratio = gateway",
        "over nginx proxying the equivalent request (the bytes the gateway sends upstream) to the same",
        "upstream; bar: the issue's target (! = below it); transl. = the translation's own CPU per request",
        "in process (bench.translate*), the Bedrock row with its SigV4 signature.",
    ]
    if not result["ok"]:
        lines += ["", "ERRORS: a target answered non-2xx or had socket errors; these are not results."]
    return "\n".join(lines)


# --- CLI ----------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.dialects",
                                description="Each dialect path of the gateway against nginx proxy_pass "
                                            "of the equivalent request, per core, in one run.")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: {','.join(ROWS)})")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per target and row (default 3)")
    p.add_argument("--duration", type=int, default=6, help="seconds per round (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per target and row (default 2)")
    p.add_argument("--connections", "-c", type=int, default=64)
    p.add_argument("--threads", "-t", type=int, default=1)
    p.add_argument("--timeout", type=int, default=2, help="wrk's request timeout, seconds (default 2)")
    p.add_argument("--server-cpus", default="0")
    p.add_argument("--load-cpus", default="1")
    p.add_argument("--auth", action="store_true", help="require API keys on the gateway (a static key)")
    p.add_argument("--no-records", action="store_true", help="call records off (default: on, as configured "
                                                             "by default)")
    p.add_argument("--translate-number", type=int, default=20000,
                   help="calls per timing of the in-process translation (default 20000)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--quick", action="store_true", help="harness check: 1 round of 1 s, no warm-up")
    p.add_argument("--keep-tmp", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup, args.translate_number = 1, 1, 0, 500
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown or not args.rows:
        p.error(f"--rows: unknown {unknown}; known: {','.join(ROWS)}")
    for name in ("rounds", "duration", "connections", "threads", "timeout", "translate_number"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        args.server_cpus = parse_cpu_list(args.server_cpus)
        args.load_cpus = parse_cpu_list(args.load_cpus)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    done = run_bench(args, "bench-dialects-", Bench)
    if done is None:
        return 2
    return finish(args, done[1], format_table(done[1]))


if __name__ == "__main__":
    raise SystemExit(main())
