"""Process lifecycle: several workers, a worker crash, SIGTERM drain, SIGHUP reload, ``gateway check``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FRONTENDS, Gateway, StartGateway, require_frontend
from .helpers import (
    HOST,
    RawClient,
    ServerProcess,
    assert_serves,
    chat_request,
    free_port,
    gateway_toml,
    http_request,
    pid_alive,
    sse_events,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _workers(gw: Gateway, n: int, timeout: float = 15.0) -> set[int]:
    from .helpers import children_of

    def exactly_n() -> set[int] | None:
        kids = {p for p in children_of(gw.pid) if pid_alive(p)}
        return kids if len(kids) == n else None

    found: set[int] = wait_for(exactly_n, timeout, what=f"{n} live workers under pid {gw.pid}")
    return found


def _many_requests(port: int, n: int) -> None:
    """``n`` chat requests, each on a fresh connection (so SO_REUSEPORT spreads them over the workers)."""
    for i in range(n):
        with RawClient(port) as c:
            resp = c.request(chat_request(f"request {i}", headers=[("Connection", "close")]))
        assert resp.status == 200, resp


# -- several workers ------------------------------------------------------------------------------------


def test_two_workers_serve(gateway2: Gateway) -> None:
    workers = _workers(gateway2, 2)
    assert gateway2.pid not in workers
    _many_requests(gateway2.port, 20)
    client = gateway2.client()
    try:
        messages = [{"role": "user", "content": "hi"}]
        resp = client.chat.completions.create(model="chat-model", messages=messages)
        assert resp.choices[0].message.content
        chunks = list(client.chat.completions.create(
            model="chat-model", messages=messages, stream=True,
        ))
        assert chunks and all(c.choices for c in chunks)
    finally:
        client.close()


def test_worker_crash_is_respawned(gateway2: Gateway) -> None:
    before = _workers(gateway2, 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim), 10.0, what=f"worker {victim} to die")

    def replaced() -> set[int] | None:
        kids = _workers(gateway2, 2, timeout=15.0)
        return kids if victim not in kids else None

    after: set[int] = wait_for(replaced, 15.0, interval=0.1, what="a new worker")
    assert len(after & before) == 1  # the survivor kept running
    # the new worker must come up listening: poll until requests succeed, then demand they keep succeeding
    wait_for(lambda: _try_serves(gateway2.port), 15.0, what="the gateway to serve after the respawn")
    _many_requests(gateway2.port, 30)
    assert gateway2.process.exited() is None
    if gateway2.frontend == "native":  # the supervisor says what it did
        logs = gateway2.process.logs(10**7, records=False)
        assert f"(pid {victim}) exited" in logs and "respawning" in logs


def _try_serves(port: int) -> bool:
    return _try_serves_model(port, "chat-model")


def _try_serves_model(port: int, model: str) -> bool:
    try:
        assert_serves(port, model=model)
    except (OSError, AssertionError):
        return False
    return True


# -- SIGTERM: drain ------------------------------------------------------------------------------------


def _refused(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sigterm_drains_inflight_stream(start_gateway: StartGateway, mock_port: int, frontend: str) -> None:
    require_frontend(frontend)
    # a stream of about 6 s, a drain_timeout far beyond it: nothing here depends on the machine's speed
    drain_timeout = 30.0
    gw = start_gateway(gateway_toml(mock_port, server={"drain_timeout": drain_timeout}), name="drain",
                       frontend=frontend)
    with RawClient(gw.port, timeout=30.0) as conn:
        conn.send(chat_request("!mock chunks=12 chunk_delay_ms=500", stream=True))
        head = conn.read_head()
        assert head.status == 200, head
        pieces = conn.iter_chunks()
        received = [next(pieces)]  # the first chunk arrived: the stream is in flight
        gw.process.send_signal(signal.SIGTERM)
        refused_during_stream = False
        for piece in pieces:
            received.append(piece)
            refused_during_stream = refused_during_stream or _refused(gw.port)
        body = b"".join(received)
        # the stream completed fully, with [DONE]
        events = sse_events(body)
        assert events[-1] == b"[DONE]", body[-300:]
        assert body.endswith(b"data: [DONE]\n\n")
        assert sum(1 for e in events if b'"content"' in e) == 12
        assert conn.closed_by_peer(timeout=30.0), "a draining worker keeps the connection open after the response"
    # new connections were refused after SIGTERM, while the stream was still running
    assert refused_during_stream, "new connections were still accepted while the worker drained"
    # and the supervisor exits 0 once the stream is done, not by giving up at drain_timeout
    code = gw.process.wait(timeout=drain_timeout + 30.0)
    assert code == 0, gw.process.logs()
    assert "did not drain in time" not in gw.process.logs(10**7, records=False)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sigterm_idle_gateway_exits_promptly(
    start_gateway: StartGateway, mock_port: int, frontend: str
) -> None:
    require_frontend(frontend)
    # the drain would wait up to 600 s for a connection that held it up; the exit is awaited for 60 s:
    # only a drain that waits on the idle connection fails this, never a slow machine
    gw = start_gateway(gateway_toml(mock_port, server={"drain_timeout": 600.0}), workers=2, name="idle-term",
                       frontend=frontend)
    workers = _workers(gw, 2)
    with RawClient(gw.port) as idle:  # an idle keep-alive connection must not hold up the exit
        assert idle.request(http_request("GET", "/healthz")).status == 200
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(timeout=60.0) == 0
        assert idle.closed_by_peer(timeout=30.0)
    for pid in workers:
        wait_for(lambda pid=pid: not pid_alive(pid), 30.0, what=f"worker {pid} to exit")


# -- SIGHUP: reload ------------------------------------------------------------------------------------


NEW_MODEL = """
[models.new-model]
provider = "upstream"
upstream_model = "mock-1"
"""


def _model_status(port: int, name: str) -> int:
    with RawClient(port) as c:
        return c.request(http_request("GET", f"/v1/models/{name}", headers=[("Connection", "close")])).status


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sighup_reload(start_gateway: StartGateway, mock_port: int, frontend: str) -> None:
    require_frontend(frontend)
    gw = start_gateway(gateway_toml(mock_port), name="reload", frontend=frontend)
    assert gw.config_path is not None
    assert _model_status(gw.port, "new-model") == 404

    # a valid file with one more model: served within a few seconds
    gw.config_path.write_text(gateway_toml(mock_port, extra_models=NEW_MODEL))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _model_status(gw.port, "new-model") == 200, 10.0, what="new-model after SIGHUP")
    assert_serves(gw.port, model="new-model")
    assert_serves(gw.port, model="chat-model")

    # a broken file: rejected, the running config keeps serving (new-model included)
    gw.config_path.write_text(gateway_toml(mock_port, extra_models=NEW_MODEL)
                              + '\n[models.broken]\nprovider = "nowhere"\nbogus_key = 1\n')
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload rejected" in gw.process.logs(10**7, records=False), 10.0,
             what="the supervisor to log the rejection")
    logs = gw.process.logs(10**7, records=False)
    assert "models.broken" in logs  # the message names the key path
    assert_serves(gw.port, model="new-model")
    assert _model_status(gw.port, "broken") == 404
    assert gw.process.exited() is None

    # and a later valid file is picked up again
    gw.config_path.write_text(gateway_toml(mock_port))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _model_status(gw.port, "new-model") == 404, 10.0, what="new-model to go away")
    assert_serves(gw.port)


def test_sighup_with_embedded_default_is_harmless(default_gateway: Gateway) -> None:
    os.kill(default_gateway.pid, signal.SIGHUP)
    # both front ends' main processes log that they ignore it ("supervisor: ..." or "granian main: ...")
    wait_for(lambda: "SIGHUP ignored" in default_gateway.process.logs(10**7, records=False), 30.0,
             what="the main process to log that SIGHUP is ignored")
    assert default_gateway.process.exited() is None
    wait_for(lambda: _try_serves_model(default_gateway.port, "mock-1"), 10.0, what="the gateway to serve")
    for _ in range(3):
        assert_serves(default_gateway.port, model="mock-1")


# -- start-up on a taken port -----------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_port_taken_by_another_process_fails_cleanly(frontend: str) -> None:
    require_frontend(frontend)
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        args = ["serve", "--workers", "1", "--host", HOST, "--port", str(port), "--server", frontend]
        result = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                                timeout=30)
    assert result.returncode != 0
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_second_gateway_on_the_same_port_fails_fast(
    start_gateway: StartGateway, tmp_path: Path, frontend: str
) -> None:
    require_frontend(frontend)
    first = start_gateway(name="first")
    args = ["serve", "--workers", "1", "--host", HOST, "--port", str(first.port), "--server", frontend]
    second = ServerProcess(f"second-{frontend}", args, tmp_path, first.port).start()
    try:
        # it either gives up (the right outcome) or announces that it serves (it bound the port as well)
        wait_for(lambda: second.exited() is not None or "serving on" in second.logs(10**6, records=False),
                 20.0, what="the second gateway to give up or start")
        assert second.exited() not in (None, 0), "the second gateway shares the port with the first"
    finally:
        second.stop()
    assert_serves(first.port)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_restart_on_the_same_port_right_after_serving(
    tmp_path: Path, frontend: str, request: pytest.FixtureRequest
) -> None:
    """A restart must not be refused because of the old instance's connections in TIME_WAIT."""
    require_frontend(frontend)
    port = free_port()
    args = ["serve", "--workers", "1", "--host", HOST, "--port", str(port), "--server", frontend]
    old = ServerProcess(f"old-{frontend}", args, tmp_path, port).start()
    try:
        old.wait_ready()
        for _ in range(3):  # the server closes these connections first: TIME_WAIT on its side
            with RawClient(port) as c:
                assert c.request(chat_request(model="mock-1", headers=[("Connection", "close")])).status == 200
                assert c.closed_by_peer()
    finally:
        old.stop()
    new = ServerProcess(f"new-{frontend}", args, tmp_path, port).start()
    try:
        new.wait_ready(timeout=15.0)
        assert_serves(port, model="mock-1")
    finally:
        new.stop()


# -- gateway check -------------------------------------------------------------------------------------


def _check(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_check_rejects_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[server]\nprot = 8080\nworkers = "two"\n\n[log]\nlevel = "info"\n')
    result = _check(path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "server.prot" in out
    assert "server.workers" in out
    assert f"{path}:2" in out and f"{path}:3" in out  # file:line of each problem
    assert 'did you mean "port"' in out


def test_check_accepts_example() -> None:
    result = _check(EXAMPLES / "gateway.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_check_unreadable_file(tmp_path: Path) -> None:
    result = _check(tmp_path / "missing.toml")
    assert result.returncode == 2
    assert "missing.toml" in result.stdout + result.stderr


def test_serve_refuses_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[server]\nworkers = "two"\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "server.workers" in result.stderr


def test_sighup_keeps_inflight_stream_on_changed_provider(start_gateway: StartGateway, mock_port: int) -> None:
    # drain_timeout = 1.0 is the grace period after which the engine closes the retired provider's pool;
    # docs/frontends.md: "in-flight requests finish on the snapshot they started with"
    text = gateway_toml(mock_port, server={"drain_timeout": 1.0})
    gw = start_gateway(text, name="reload-inflight")
    assert gw.config_path is not None
    with RawClient(gw.port, timeout=10.0) as conn:
        conn.send(chat_request("!mock chunks=12 chunk_delay_ms=250", stream=True))
        assert conn.read_head().status == 200
        pieces = conn.iter_chunks()
        received = [next(pieces)]
        # the provider changes (a longer read timeout): a new pool; the old one is retired
        gw.config_path.write_text(gateway_toml(mock_port, server={"drain_timeout": 1.0},
                                               provider={"read_timeout": 5.0}))
        gw.process.send_signal(signal.SIGHUP)
        received.extend(pieces)
    events = sse_events(b"".join(received))
    assert events[-1] == b"[DONE]", events[-2:]
    assert sum(1 for e in events if b'"content"' in e) == 12
    assert_serves(gw.port)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sigterm_gives_up_on_stuck_request_after_drain_timeout(
    start_gateway: StartGateway, mock_port: int, frontend: str
) -> None:
    require_frontend(frontend)
    # an upstream of the test's own that reads the request and never answers: the test knows when the
    # request is stuck there. Its read_timeout (600 s) is far beyond the 60 s the exit is awaited, so
    # only the drain_timeout (1.0 s) giving up can end the request in time, never a slow machine passing
    with _SilentUpstream() as upstream:
        text = gateway_toml(upstream.port, server={"drain_timeout": 1.0}, provider={"read_timeout": 600.0})
        gw = start_gateway(text, name="stuck", frontend=frontend)
        _give_up_on_a_stuck_request(gw, upstream)


class _SilentUpstream:
    """A loopback listener that accepts connections and reads requests, and never answers."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(0.1)  # so that the thread sees ``stopped`` (close does not wake an accept)
        self.port = int(self.sock.getsockname()[1])
        self.got_request = threading.Event()
        self.stopped = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.conns.append(conn)
            data = b""
            while b"\r\n\r\n" not in data:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            if b"\r\n\r\n" in data:
                self.got_request.set()

    def __enter__(self) -> _SilentUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5.0)
        self.sock.close()
        for conn in self.conns:
            conn.close()


def _give_up_on_a_stuck_request(gw: Gateway, upstream: _SilentUpstream) -> None:
    with RawClient(gw.port, timeout=30.0) as conn:
        conn.send(chat_request("stuck"))
        assert upstream.got_request.wait(30.0), "the request never reached the upstream"
        gw.process.send_signal(signal.SIGTERM)
        code = gw.process.wait(timeout=60.0)  # drain_timeout, then the stuck request is given up
        assert code == 0, gw.process.logs()
        # the client is not left hanging: an error answer or a closed connection
        try:
            resp = conn.read_response()
        except ConnectionError:
            pass
        else:
            assert resp.status >= 500, resp


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_respawned_worker_serves_reloaded_config(
    start_gateway: StartGateway, mock_port: int, frontend: str
) -> None:
    require_frontend(frontend)
    gw = start_gateway(gateway_toml(mock_port), name="reload-respawn", frontend=frontend)
    assert gw.config_path is not None
    gw.config_path.write_text(gateway_toml(mock_port, extra_models=NEW_MODEL))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _model_status(gw.port, "new-model") == 200, 10.0, what="new-model after SIGHUP")
    (worker,) = _workers(gw, 1)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: worker not in _workers(gw, 1), 15.0, what="a new worker")
    wait_for(lambda: _try_serves_model(gw.port, "new-model"), 15.0,
             what="the respawned worker to serve the reloaded config")


def test_a_reload_no_worker_can_apply_is_undone_when_a_worker_respawns(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    """A file the supervisor accepts but no worker can build (here: a Vertex service-account file without
    its fields, found only when the provider is built): the workers keep their config, and a worker that
    dies afterwards is not respawned into that config's failure until the gateway gives up and stops;
    the supervisor goes back to the config the workers run, says so, and the node keeps serving."""
    sa = tmp_path / "service-account.json"
    sa.write_text('{"type": "service_account"}')
    gw = start_gateway(gateway_toml(mock_port), name="reload-undone", workers=2)
    assert gw.config_path is not None and gw.frontend == "native"
    gw.config_path.write_text(gateway_toml(mock_port) + f"""
[providers.vertex]
type = "vertex"
project = "my-project-1"
location = "us-central1"
credentials_file = "{sa}"

[models.gemini]
provider = "vertex"
upstream_model = "gemini-2.5-flash"
""")
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.process.logs(10**7, records=False).count("config reload failed") >= 2, 15.0,
             what="both workers to reject the reload")
    victim = min(_workers(gw, 2))
    os.kill(victim, signal.SIGKILL)

    def undone() -> bool:
        return "going back to the config before that reload" in gw.process.logs(10**7, records=False)

    wait_for(undone, 20.0, what="the supervisor to undo the reload")
    wait_for(lambda: len(_workers(gw, 2)) == 2 and victim not in _workers(gw, 2), 20.0, what="the respawn")
    wait_for(lambda: _try_serves(gw.port), 15.0, what="the gateway to serve after the respawn")
    _many_requests(gw.port, 20)
    assert gw.process.exited() is None
    logs = gw.process.logs(10**7, records=False)
    assert "giving up" not in logs
    # the good config again (the same bytes as before the reload): nothing is reloaded, nothing is lost
    gw.config_path.write_text(gateway_toml(mock_port))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "the config is unchanged" in gw.process.logs(10**7, records=False), 10.0,
             what="the supervisor to see the file it runs")
