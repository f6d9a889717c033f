"""The data plane's transport against hostile peers, through real ``gateway serve`` processes.

- Non-stream answers of any size up to ``max_answer_bytes`` arrive whole; above it a clean 502, and the
  upstream connection is freed either way (a pool of one connection serves the next request). A stream
  whose client reads nothing holds its upstream connection for ``read_timeout`` at most.
- A client that pipelines thousands of requests and reads none of the answers costs the worker a bounded
  amount of memory; once it reads, every request is answered, in order.
- Bare-LF upstream response heads and control bytes in chunk extensions or trailers, from an upstream or
  from a client, are refused at once (502 / 400), not after a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from .conftest import Gateway, StartGateway
from .helpers import (
    HOST,
    RawClient,
    Response,
    assert_openai_error,
    assert_serves,
    children_of,
    gateway_toml,
    http_request,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

#: 40 texts at 1536 dimensions: about 1.3 MB of JSON, well over the pool's 512 KiB high-water mark
BIG_INPUTS = [f"text number {i}" for i in range(40)]
BIG_DIMS = 1536


def embeddings_request(inputs: list[str], dims: int, headers: list[tuple[str, str]] | None = None) -> bytes:
    body = json.dumps({"model": "embed-model", "input": inputs, "dimensions": dims}).encode()
    return http_request("POST", "/v1/embeddings", body, headers=headers or [])


def check_embeddings(data: dict[str, Any], count: int, dims: int) -> None:
    assert data["object"] == "list", str(data)[:300]
    assert [d["index"] for d in data["data"]] == list(range(count))
    assert all(len(d["embedding"]) == dims for d in data["data"])


# ---------------------------------------------------------------------------------------------------------
# 1. large non-stream answers


@pytest.fixture
def small_pool_gateway(start_gateway: StartGateway, mock_port: int) -> Gateway:
    """One worker whose provider has a single pooled connection: a leaked connection stalls the next call."""
    return start_gateway(gateway_toml(mock_port, provider={"pool_size": 1, "read_timeout": 30.0},
                                      server={"max_body_bytes": 1 << 20}), name="wire-pool1")


def test_large_answers_arrive_whole_and_free_their_connection(small_pool_gateway: Gateway) -> None:
    gw = small_pool_gateway
    for inputs, dims in ((BIG_INPUTS, BIG_DIMS), (BIG_INPUTS * 3, 3072), (BIG_INPUTS, BIG_DIMS)):
        with RawClient(gw.port, timeout=60.0) as c:
            resp = c.request(embeddings_request(inputs, dims))
        assert resp.status == 200, resp
        assert len(resp.body) > 1_000_000
        check_embeddings(resp.json(), len(inputs), dims)
    # the pool's only connection is back: an ordinary request still gets through
    assert_serves(gw.port)


def test_large_answers_on_one_keep_alive_connection(small_pool_gateway: Gateway) -> None:
    with RawClient(small_pool_gateway.port, timeout=60.0) as c:
        for _ in range(3):
            resp = c.request(embeddings_request(BIG_INPUTS, BIG_DIMS))
            assert resp.status == 200, resp
            check_embeddings(resp.json(), len(BIG_INPUTS), BIG_DIMS)


def test_answer_over_max_answer_bytes_is_a_clean_502(start_gateway: StartGateway, mock_port: int) -> None:
    limit = 256 * 1024
    gw = start_gateway(gateway_toml(mock_port, provider={"pool_size": 1, "read_timeout": 30.0,
                                                         "max_answer_bytes": limit}), name="wire-limit")
    with RawClient(gw.port, timeout=60.0) as c:
        resp = c.request(embeddings_request(BIG_INPUTS, BIG_DIMS))
        err = assert_openai_error(resp, 502)
        assert err["type"] == "upstream_error"
        assert f"max_answer_bytes ({limit} bytes)" in err["message"]
        # an answer under the limit, on the same client connection and the pool's only upstream one
        resp = c.request(embeddings_request(["short"], 64))
        assert resp.status == 200, resp
        check_embeddings(resp.json(), 1, 64)
    assert_serves(gw.port)
    # the call record says why (records are written in batches, off the request path)
    wait_for(lambda: f"exceeds max_answer_bytes ({limit} bytes)" in gw.process.logs(), 15.0,
             what="the call record of the 502")


def test_answer_that_comes_with_its_head_obeys_the_limit(start_gateway: StartGateway, mock_port: int) -> None:
    # a chat answer of a few hundred bytes arrives in the same read as its head
    gw = start_gateway(gateway_toml(mock_port, provider={"max_answer_bytes": 100}), name="wire-tiny")
    body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with RawClient(gw.port, timeout=30.0) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", body))
    err = assert_openai_error(resp, 502)
    assert "max_answer_bytes (100 bytes)" in err["message"]


def test_max_answer_bytes_must_be_positive(mock_port: int, tmp_path: Any) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(gateway_toml(mock_port, provider={"max_answer_bytes": 0}))
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "max_answer_bytes" in out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------------------
# 2. pipelining without reading


def worker_pid(gw: Gateway) -> int:
    kids = wait_for(lambda: {p for p in children_of(gw.pid) if pid_alive(p)}, 30.0, what="the worker")
    assert len(kids) == 1, kids
    return int(next(iter(kids)))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tcp_queues(pid: int, local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the worker's socket ``local_port`` -> ``remote_port`` (``/proc/PID/net/tcp``)."""
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                tx, rx = queues.split(":")
                return int(tx, 16), int(rx, 16)
    return None


def settled(sample: Any, timeout: float, polls: int = 8) -> Any:
    """Wait until ``sample()`` gives the same value ``polls`` times in a row; that value."""
    last: list[Any] = [object(), 0]

    def same() -> bool:
        value = sample()
        if value == last[0]:
            last[1] += 1
        else:
            last[0], last[1] = value, 0
        return bool(last[1] >= polls)

    wait_for(same, timeout, interval=0.25, what="the connection to settle")
    return last[0]


def test_pipelining_without_reading_keeps_memory_bounded(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port, server={"keepalive_timeout": 120.0, "header_timeout": 60.0,
                                                       "body_timeout": 60.0},
                                    provider={"read_timeout": 60.0}), name="wire-pipeline")
    pid = worker_pid(gw)
    count, dims = 3000, 1024  # answers of about 20 KB each: about 60 MB in all
    pad = ("X-Pad", "p" * 1000)  # requests of about 1.3 KB: about 4 MB in all, far more than the worker reads
    requests = [embeddings_request([f"p{i}"], dims, [("X-Request-Id", f"pipe-{i}"), pad]) for i in range(count)]
    with RawClient(gw.port, timeout=60.0) as warm:  # the worker's caches and pools, before the baseline
        for r in requests[:20]:
            assert warm.request(r).status == 200
    baseline = rss_bytes(pid)

    sock = socket.create_connection((HOST, gw.port), timeout=120.0)
    client_port = sock.getsockname()[1]
    sent = threading.Event()

    def write_all() -> None:
        try:
            sock.sendall(b"".join(requests))
            sock.shutdown(socket.SHUT_WR)  # and then half-close: every request must still be answered
        except OSError:
            pass
        sent.set()

    writer = threading.Thread(target=write_all, daemon=True)
    writer.start()
    try:
        # the worker answers until the client's window and its own socket buffer are full, then stops;
        # wait until its socket's queues stop moving (it stopped reading, or it read everything)
        done, queues = settled(lambda: (sent.is_set(), tcp_queues(pid, gw.port, client_port)), 120.0)
        grown = rss_bytes(pid) - baseline
        assert grown < 24 * 1024 * 1024, f"worker grew by {grown / 1e6:.1f} MB ({done}, {queues})"
        # it stopped reading: the rest of the requests wait in the kernel, unread
        assert queues is not None and queues[1] > 0, queues

        # now the client reads: every request answered, in order, then the connection closes
        client = RawClient.__new__(RawClient)
        client.sock, client.buf, client.eof = sock, b"", False
        for i in range(count):
            resp = client.read_response()
            assert resp.status == 200, (i, resp)
            assert resp.header("x-request-id") == f"pipe-{i}", (i, resp.headers)
            if i % 500 == 0:
                check_embeddings(resp.json(), 1, dims)
        assert client.closed_by_peer(30.0)
        writer.join(30.0)
        assert sent.is_set()
    finally:
        sock.close()
    assert_serves(gw.port)


# ---------------------------------------------------------------------------------------------------------
# 6. bare LF and control bytes on the wire


#: what a scripted upstream sends for a request body: the pieces of its answer, and whether it then closes
Script = Callable[[bytes], tuple[Iterable[bytes], bool]]


class ScriptedUpstream:
    """An upstream in a thread of the test process that answers every request as ``script`` says; by
    default the same raw bytes, the connection then kept open (so a gateway that waits for more would
    wait for its timeout)."""

    def __init__(self, answer: bytes | Script) -> None:
        self.script: Script = answer if callable(answer) else (lambda body: ((answer,), False))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ScriptedUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5.0)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                pieces, close = self.script(body)
                for piece in pieces:
                    conn.sendall(piece)
                if close:
                    conn.close()
                    return
        except OSError:
            return


def scripted_config(port: int, upstream: str = "", provider: str = "read_timeout = 120.0") -> str:
    return f"""
[server]
drain_timeout = 2.0
header_timeout = 30.0

[upstream]
{upstream}

[providers.raw]
type = "openai"
base_url = "http://{HOST}:{port}/v1"
{provider}

[models.raw-model]
provider = "raw"
"""


@contextlib.contextmanager
def scripted_gateway(start_gateway: StartGateway, answer: bytes | Script, name: str,
                     **config: str) -> Iterator[Gateway]:
    """A gateway whose one provider, ``raw``, is a ``ScriptedUpstream`` answering ``answer``."""
    with ScriptedUpstream(answer) as up:
        gw = start_gateway(scripted_config(up.port, **config), name=name)
        try:
            yield gw
        finally:
            gw.process.stop()  # before the upstream goes: its threads hold the pool's connections


def assert_fine(resp: Response) -> None:
    """The scripted upstream's ordinary chat answer, relayed."""
    assert resp.status == 200, resp
    assert resp.json()["choices"][0]["message"]["content"] == "fine"


def chat(model: str = "raw-model") -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return http_request("POST", "/v1/chat/completions", body)


OK_BODY = json.dumps({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "up",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


def chunked(body: bytes, ext: bytes = b"", trailer: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n0\r\n%s\r\n" % (len(body), ext, body, trailer)


BAD_UPSTREAM_ANSWERS = {
    "bare-lf-head": b"HTTP/1.1 200 OK\ncontent-type: application/json\ncontent-length: %d\n\n%s"
    % (len(OK_BODY), OK_BODY),
    "bare-lf-last-line": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\n%s"
    % (len(OK_BODY), OK_BODY),
    "chunk-ext-nul": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    + chunked(OK_BODY, ext=b";a\x00b"),
    "chunk-ext-bare-lf": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    + chunked(OK_BODY, ext=b";a\nb"),
    "trailer-bare-lf": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n0\r\nx-t: 1\n\n" % (len(OK_BODY), OK_BODY),
    "trailer-nul": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    + chunked(OK_BODY, trailer=b"x-t: a\x00b\r\n"),
}


@pytest.mark.parametrize("answer", list(BAD_UPSTREAM_ANSWERS.values()), ids=list(BAD_UPSTREAM_ANSWERS))
def test_malformed_upstream_framing_is_a_502_at_once(start_gateway: StartGateway, answer: bytes) -> None:
    # the provider's read_timeout is two minutes and the client gives up after 20 s: only a refusal
    # from the bytes themselves answers in time
    with scripted_gateway(start_gateway, answer, "wire-scripted") as gw, RawClient(gw.port, timeout=20.0) as c:
        err = assert_openai_error(c.request(chat()), 502)
    assert err["type"] == "upstream_error"


def test_well_formed_chunked_upstream_answer_with_extension_and_trailer(start_gateway: StartGateway) -> None:
    answer = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
              + chunked(OK_BODY, ext=b';name="v"', trailer=b"x-t: 1\r\n"))
    with scripted_gateway(start_gateway, answer, "wire-scripted-ok") as gw, RawClient(gw.port, timeout=20.0) as c:
        assert_fine(c.request(chat()))


@pytest.fixture
def wire_gateway(start_gateway: StartGateway, mock_port: int) -> Iterator[Gateway]:
    # a long head timeout: a request refused only when it times out would take 30 s (the client waits 15)
    yield start_gateway(gateway_toml(mock_port, server={"header_timeout": 30.0, "body_timeout": 30.0}),
                        name="wire-requests")


CHUNKED_CHAT = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
BAD_REQUESTS = {
    "bare-lf-head": b"POST /v1/chat/completions HTTP/1.1\nHost: a\nContent-Length: 2\n\n{}",
    "bare-lf-last-line": b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\n",
    "chunk-ext-nul": CHUNKED_CHAT + b"2;a\x00b\r\n{}\r\n0\r\n\r\n",
    "chunk-ext-bare-lf": CHUNKED_CHAT + b"2;a\nb\r\n{}\r\n0\r\n\r\n",
    "chunk-ext-lf-line-end": CHUNKED_CHAT + b"2;a\n{}\n",
    "trailer-nul": CHUNKED_CHAT + b"2\r\n{}\r\n0\r\nx-t: a\x00b\r\n\r\n",
    "trailer-bare-lf": CHUNKED_CHAT + b"2\r\n{}\r\n0\r\nx-t: 1\n\n",
    "cl0-and-te": b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("data", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_malformed_request_framing_is_a_400_at_once(wire_gateway: Gateway, data: bytes) -> None:
    with RawClient(wire_gateway.port, timeout=15.0) as c:
        c.send(data)
        assert_openai_error(c.read_response(), 400)
        assert c.closed_by_peer(15.0)
    assert_serves(wire_gateway.port)


def test_refusals_are_logged_without_a_traceback(wire_gateway: Gateway) -> None:
    with RawClient(wire_gateway.port, timeout=15.0) as c:
        c.send(BAD_REQUESTS["chunk-ext-nul"])
        assert_openai_error(c.read_response(), 400)
    logs = wait_for(lambda: (t := wire_gateway.process.logs()) and "chunk extension" in t and t, 15.0,
                    what="the refusal in the log")
    assert "Traceback" not in logs


# ---------------------------------------------------------------------------------------------------------
# 1. (the other reader) a stream whose client reads nothing holds its upstream connection for a bounded time

STREAM_EVENT = b"data: " + json.dumps({
    "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "up",
    "choices": [{"index": 0, "delta": {"content": "x" * 4000}, "finish_reason": None}],
}).encode() + b"\n\n"


def endless_stream_or_answer(body: bytes) -> tuple[Iterable[bytes], bool]:
    """A stream request: 64 MB of events, close-delimited (far more than every buffer on the way holds);
    anything else: an ordinary chat answer."""
    if json.loads(body).get("stream"):
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
        piece = STREAM_EVENT * 256
        return itertools.chain([head], itertools.repeat(piece, 64)), True
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(OK_BODY)
    return [head + OK_BODY], False


def test_stream_nobody_reads_frees_its_upstream_connection(start_gateway: StartGateway) -> None:
    # one pooled connection; requests wait for it up to a minute; the paused stream gets read_timeout
    with scripted_gateway(start_gateway, endless_stream_or_answer, "wire-paused", upstream="pool_timeout = 60.0",
                          provider="read_timeout = 2.0\npool_size = 1") as gw:
        body = json.dumps({"model": "raw-model", "stream": True,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        with RawClient(gw.port, timeout=30.0) as reader:
            reader.send(http_request("POST", "/v1/chat/completions", body))
            assert reader.read_head().status == 200  # then reads nothing more
            # the pool's only connection is stuck behind that client until the gateway gives up on it
            with RawClient(gw.port, timeout=90.0) as c:
                assert_fine(c.request(chat()))
