"""Plumbing for the integration tests: real processes on loopback, raw HTTP/1.1 over sockets, configs.

Nothing here knows about pytest fixtures; ``conftest.py`` composes these pieces. Every process started
through ``ServerProcess`` is registered in ``LIVE`` so that a failing test's report carries the tail of
each live process's stderr (see ``conftest.pytest_runtest_makereport``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
#: slow CI machines (2 cores) start a forking Python server in well under this
STARTUP_TIMEOUT = 30.0

#: processes started by the tests and not yet stopped; failing reports show their logs
LIVE: list[ServerProcess] = []


# -- ports and polling ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate!r}")
        time.sleep(interval)


# -- processes -----------------------------------------------------------------------------------------


class ServerProcess:
    """A server started in its own session (so its whole process group can be signalled and killed)."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "gateway", *args]
        self.port = port
        self.log_path = log_dir / f"{name}.stderr.log"
        self.out_path = log_dir / f"{name}.stdout.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ServerProcess {self.name} port={self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ServerProcess:
        with open(self.log_path, "wb") as err, open(self.out_path, "wb") as out:
            # the child keeps its own copies of the descriptors; ours close at the end of this block
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env,
                start_new_session=True,
            )
        LIVE.append(self)
        return self

    def exited(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def logs(self, limit: int = 12000, records: bool = True) -> str:
        """The tail of stderr (and stdout, when it has anything); ``records=False`` drops call records."""
        parts = []
        for path in (self.log_path, self.out_path):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if not records:
                lines = data.splitlines(keepends=True)
                kept = [ln for ln in lines if not ln.startswith(b'{"ts":')]
                if len(kept) < len(lines):
                    kept.append(b"(%d call records left out; see the file)\n" % (len(lines) - len(kept)))
                data = b"".join(kept)
            if data:
                text = data[-limit:].decode("utf-8", "replace")
                cut = "[...]\n" if len(data) > limit else ""
                parts.append(f"--- {path} ---\n{cut}{text}")
        return "\n".join(parts) or f"(no output from {self.name})"

    def wait_ready(self, path: str = "/readyz", timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until ``GET path`` answers 200, failing early (with the logs) if the process dies."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise AssertionError(f"{self.name} exited with {code} before it was ready\n{self.logs()}")
            try:
                status = http_status(self.port, path, timeout=1.0)
            except OSError as exc:
                last = exc
            else:
                if status == 200:
                    return
                last = f"status {status}"
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready on {path} within {timeout:g}s ({last})\n{self.logs()}")

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the top process only (the gateway's supervisor)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, grace: float = 8.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reap. Safe to call twice."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # the group may outlive its leader (workers of a dead supervisor): always sweep it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
            return proc.returncode
        finally:
            if self in LIVE:
                LIVE.remove(self)


def call_records(process: ServerProcess, ready: Callable[[list[dict[str, Any]]], bool],
                 timeout: float = 30.0, what: str = "") -> list[dict[str, Any]]:
    """The call records ``process`` has written to its stderr, once ``ready(records)`` holds.

    Records are flushed every 200 ms: a test waits for the ones it needs instead of sleeping, and fails
    (AssertionError) only if they never come. A line still being written is left for the next look.
    """
    def look() -> tuple[list[dict[str, Any]]] | None:
        lines = process.log_path.read_text(errors="replace").split("\n")[:-1]
        records = [json.loads(ln) for ln in lines if ln.startswith('{"ts":')]
        return (records,) if ready(records) else None

    found: tuple[list[dict[str, Any]]] = wait_for(look, timeout, what=what or "call records")
    return found[0]


def children_of(pid: int) -> set[int]:
    """Direct children of ``pid`` (Linux ``/proc``), skipping multiprocessing helper processes."""
    out: set[int] = set()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return out
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"resource_tracker" in cmdline or b"semaphore_tracker" in cmdline:
            continue
        out.add(child)
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- configs -------------------------------------------------------------------------------------------


def gateway_toml(
    mock_port: int,
    *,
    server: dict[str, Any] | None = None,
    provider: dict[str, Any] | None = None,
    extra_models: str = "",
    dead_port: int | None = None,
) -> str:
    """A gateway config in front of the standalone mock on ``mock_port``.

    Models: ``chat-model`` (-> ``mock-1``), ``mock-1`` (same id upstream), ``embed-model`` (->
    ``mock-embed-1``, embeddings only); with ``dead_port`` also ``dead-model`` on a provider where nothing
    listens.
    """
    srv: dict[str, Any] = {
        "header_timeout": 1.0,
        "body_timeout": 1.0,
        "max_body_bytes": 65536,
        "max_header_bytes": 8192,
        "drain_timeout": 3.0,
        **(server or {}),
    }
    prov: dict[str, Any] = {"read_timeout": 2.0, **(provider or {})}
    return (
        "[server]\n" + _table(srv)
        + "\n[log]\nlevel = \"info\"\ncall_records = true\n"
        + "\n[providers.upstream]\ntype = \"openai\"\n"
        + f"base_url = \"http://{HOST}:{mock_port}/v1\"\napi_key = \"env:MOCK_KEY\"\n" + _table(prov)
        + "\n[models.chat-model]\nprovider = \"upstream\"\nupstream_model = \"mock-1\"\n"
        + "endpoints = [\"chat\", \"completions\"]\n"
        + "\n[models.mock-1]\nprovider = \"upstream\"\n"
        + "\n[models.embed-model]\nprovider = \"upstream\"\nupstream_model = \"mock-embed-1\"\n"
        + "endpoints = [\"embeddings\"]\n"
        + (_dead_provider(dead_port) if dead_port is not None else "")
        + extra_models
    )


def provider_toml(name: str, port: int, mock: str | None = None, **extra: Any) -> str:
    """A ``[providers.<name>]`` table of an openai-type provider on a local mock; ``mock``: its
    ``x-mock`` header (the mock's behaviour); ``extra``: more keys of the table, in order."""
    text = f'\n[providers.{name}]\ntype = "openai"\nbase_url = "http://{HOST}:{port}/v1"\n'
    text += "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    if mock:
        text += f'[providers.{name}.headers]\nx-mock = "{mock}"\n'
    return text


def routing_config(body: str) -> str:
    """A gateway config for the routing tests: ``body`` (providers and models) after a short drain
    and call records on (they carry the deployment and the attempts)."""
    return '[server]\ndrain_timeout = 2.0\n[log]\nlevel = "info"\ncall_records = true\n' + body


def _dead_provider(port: int) -> str:
    return (
        "\n[providers.dead]\ntype = \"openai\"\n"
        f"base_url = \"http://{HOST}:{port}/v1\"\nconnect_timeout = 1.0\n"
        "\n[models.dead-model]\nprovider = \"dead\"\n"
    )


def _table(values: dict[str, Any]) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


# -- raw HTTP/1.1 over a socket ------------------------------------------------------------------------


class Response:
    """One HTTP response as read off the wire."""

    def __init__(self, version: str, status: int, reason: str, headers: list[tuple[str, str]],
                 body: bytes) -> None:
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason!r} {self.headers!r} {self.body[:300]!r}>"


class RawClient:
    """A blocking HTTP/1.1 client on one TCP connection, for bytes a real client would never send."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""
        self.eof = False

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_until(self, delim: bytes) -> bytes:
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out, self.buf = self.buf[:i], self.buf[i + len(delim):]
                return out
            if not self._fill():
                raise ConnectionError(f"connection closed while waiting for {delim!r}; got {self.buf!r}")

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"connection closed with {len(self.buf)} of {n} bytes")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> Response:
        """Status line and headers (the body is left on the wire)."""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        line, *lines = head.split("\r\n")
        version, status, *reason = line.split(" ", 2)
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (status.isdigit() and len(status) == 3):
            raise AssertionError(f"malformed status line {line!r} (stray bytes before a response?)")
        headers = []
        for h in lines:
            k, _, v = h.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        return Response(version, int(status), reason[0] if reason else "", headers, b"")

    def iter_chunks(self) -> Iterator[bytes]:
        """The pieces of a chunked body as they arrive (the final zero-size chunk ends it)."""
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while self._read_until(b"\r\n"):  # trailers
                    pass
                return
            data = self._read_exact(size)
            self._read_exact(2)
            yield data

    def read_response(self, *, head_request: bool = False) -> Response:
        """One complete response (interim 1xx responses are returned as such)."""
        resp = self.read_head()
        if 100 <= resp.status < 200 or resp.status in (204, 304) or head_request:
            return resp
        te = resp.header("transfer-encoding")
        clen = resp.header("content-length")
        if te is not None and "chunked" in te.lower():
            resp.body = b"".join(self.iter_chunks())
        elif clen is not None:
            resp.body = self._read_exact(int(clen))
        else:  # delimited by close
            while self._fill():
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def request(self, data: bytes) -> Response:
        self.send(data)
        return self.read_response()

    def closed_by_peer(self, timeout: float = 3.0) -> bool:
        """True when the server closes (EOF or reset) within ``timeout`` with nothing more to say.

        Bytes that arrive instead are a failure: the server answered something after all.
        """
        if self.buf:
            raise AssertionError(f"unexpected bytes after the response: {self.buf[:300]!r}")
        if self.eof:
            return True
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        if data:
            raise AssertionError(f"unexpected bytes instead of a close: {data[:300]!r}")
        self.eof = True
        return True


def http_request(
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: Sequence[tuple[str, str]] = (),
    version: str = "HTTP/1.1",
    content_type: str | None = "application/json",
) -> bytes:
    """The bytes of one well-formed request."""
    lines = [f"{method} {path} {version}", f"Host: {HOST}"]
    if body is not None:
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chat_body(content: str = "hello there", model: str = "chat-model", **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def chat_request(content: str = "hello there", model: str = "chat-model",
                 headers: Sequence[tuple[str, str]] = (), **extra: Any) -> bytes:
    return http_request("POST", "/v1/chat/completions", chat_body(content, model, **extra), headers=headers)


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    with RawClient(port, timeout=timeout) as c:
        return c.request(http_request("GET", path, headers=[("Connection", "close")])).status


def assert_openai_error(resp: Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``resp`` has ``status`` and an OpenAI-shaped JSON error body; the error object."""
    assert resp.status == status, resp
    ctype = resp.header("content-type") or ""
    assert ctype.startswith("application/json"), resp
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"], err
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def assert_serves(port: int, model: str = "chat-model") -> None:
    """The gateway on ``port`` still answers an ordinary chat request, on a new connection."""
    with RawClient(port) as c:
        resp = c.request(chat_request("still there?", model=model))
    assert resp.status == 200, resp
    data = resp.json()
    assert data["object"] == "chat.completion", data
    assert data["choices"][0]["message"]["content"], data


def sse_events(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for event in body.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())
    return out


# -- an upstream that records what the gateway sends ---------------------------------------------------


class RecordedRequest:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers  # lower-case names
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingUpstream:
    """A tiny OpenAI-shaped upstream in a thread of the test process that keeps every request it gets.

    Answers chat completions with a fixed body (or a short SSE stream with a usage chunk when the request
    streams), so tests can assert exactly what the gateway put on the wire: path, headers, body bytes.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        recorded: list[RecordedRequest] = []
        self.requests = recorded

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                recorded.append(RecordedRequest("POST", self.path, headers, body))
                try:
                    stream = bool(json.loads(body).get("stream"))
                except ValueError:
                    stream = False
                if stream:
                    events = [
                        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                                      "finish_reason": None}], "usage": None},
                        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None},
                        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                         "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
                    ]
                    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
                    out += b"data: [DONE]\n\n"
                    ctype = "text/event-stream"
                else:
                    out = json.dumps({
                        "id": "c1", "object": "chat.completion", "created": 1, "model": "up",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "recorded"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                    }).encode()
                    ctype = "application/json"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> RecordingUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
