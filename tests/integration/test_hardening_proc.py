"""The process model under stress, through real processes: reloads of bad or racing files, the config
watch, the state directory, orphaned and stuck workers (docs/architecture.md, "Process model")."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import digest, format_key

from .conftest import MOCK_KEY, Gateway, StartGateway
from .helpers import (
    HOST,
    RawClient,
    ServerProcess,
    assert_serves,
    chat_request,
    children_of,
    free_port,
    gateway_toml,
    http_request,
    pid_alive,
    wait_for,
)
from .test_lifecycle import _refused, _try_serves

pytestmark = pytest.mark.timeout(120)

NEW_MODEL = '\n[models.new-model]\nprovider = "upstream"\nupstream_model = "mock-1"\n'
OTHER_MODEL = '\n[models.other-model]\nprovider = "upstream"\nupstream_model = "mock-1"\n'
#: enough fresh connections that SO_REUSEPORT hands each of two workers some (a miss: 2**-39)
PROBES = 40

KEY_ID = "hardenkeyaaa"
KEY_SECRET = "H" * 43
KEY = format_key(KEY_ID, KEY_SECRET)
OPERATOR = "operator-token-of-the-test"


def _logs(gw: Gateway) -> str:
    return gw.process.logs(10**7, records=False)


def _model_status(port: int, name: str, key: str | None = None) -> int:
    headers = [("Connection", "close")] + ([("Authorization", f"Bearer {key}")] if key else [])
    with RawClient(port) as c:
        return c.request(http_request("GET", f"/v1/models/{name}", headers=headers)).status


def _workers(pid: int, n: int, timeout: float = 20.0) -> set[int]:
    def exactly_n() -> set[int] | None:
        kids = {p for p in children_of(pid) if pid_alive(p)}
        return kids if len(kids) == n else None

    found: set[int] = wait_for(exactly_n, timeout, what=f"{n} live children under pid {pid}")
    return found


def _port_free(port: int) -> bool:
    """Nobody holds the port at all (not even a bound, non-listening socket): a plain bind succeeds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# -- 8. reloads: the file is read once, validated, and handed over --------------------------------------


def test_empty_file_is_refused_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result
    assert "no models are defined" in result.stderr, result.stderr
    check = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "no models are defined" in check.stderr, check


def test_empty_file_reload_is_rejected_and_the_old_config_serves(start_gateway: StartGateway,
                                                                   mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port, extra_models=NEW_MODEL), workers=2, name="empty-reload")
    assert gw.config_path is not None
    gw.config_path.write_text("")
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "no models are defined" in _logs(gw), 15.0, what="the rejection of the empty file")
    assert "reload rejected" in _logs(gw)
    for _ in range(PROBES // 4):
        assert _model_status(gw.port, "new-model") == 200
    assert_serves(gw.port)


def _auth(key_models: str) -> str:
    """``[auth]``: keys required, the one static key of these tests, allowed ``key_models``."""
    return f"""[auth]
required = true

[[auth.keys]]
id = "{KEY_ID}"
digest = "{digest(KEY_SECRET, b'')}"
tenant = "team"
models = {key_models}
"""


def _keys_toml(mock_port: int, admin_port: int, *, key_models: str = '["chat-model"]') -> str:
    """Keys required, one static key, one tenant with a policy, an operator token; ``[auth]`` last but
    for the admin table, so that a file cut before ``[auth]`` is still a valid file."""
    return gateway_toml(mock_port) + f"""
[limits.policies.tenant-policy]
requests_per_minute = 6000

{_auth(key_models)}
[tenants.team]
limit_policy = "tenant-policy"

[admin]
port = {admin_port}
operator_token = "{digest(OPERATOR, b'')}"
"""


def test_reloads_that_loosen_security_are_logged_naming_each_change(
    start_gateway: StartGateway, mock_port: int
) -> None:
    admin_port = free_port()
    gw = start_gateway(_keys_toml(mock_port, admin_port), name="loosen")
    assert gw.config_path is not None
    assert _model_status(gw.port, "chat-model") == 401
    assert _model_status(gw.port, "chat-model", KEY) == 200
    assert _model_status(gw.port, "mock-1", KEY) != 200

    # a key loosened: it may call every model now
    gw.config_path.write_text(_keys_toml(mock_port, admin_port, key_models='["*"]'))
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _model_status(gw.port, "mock-1", KEY) == 200, 15.0, what="the widened key")
    assert f'loosens security: auth.keys[id="{KEY_ID}"].models: now also "*"' in _logs(gw)

    # the keys file cut short before [auth]: still valid (it has models), but keys are off now
    full = _keys_toml(mock_port, admin_port, key_models='["*"]')
    gw.config_path.write_text(full[: full.index("[auth]")])
    gw.process.send_signal(signal.SIGHUP)
    wait_for(lambda: _model_status(gw.port, "chat-model") == 200, 15.0, what="the truncated file's reload")
    logs = _logs(gw)
    assert "loosens security: auth.required: true -> false" in logs
    assert "loosens security: admin.operator_token: removed" in logs


def _probe_models(port: int, expect: dict[str, int]) -> None:
    """``PROBES`` requests per model, each on a fresh connection: every worker answers some of them."""
    for name, status in expect.items():
        seen = [_model_status(port, name) for _ in range(PROBES)]
        assert seen == [status] * PROBES, (name, seen)


def test_workers_never_serve_different_configs(start_gateway: StartGateway, mock_port: int) -> None:
    """The file changes again after the supervisor validated it, before one worker acted on the reload:
    that worker still applies what the supervisor validated (it never reads the file itself)."""
    server = {"worker_heartbeat_timeout": 0}  # a worker is held stopped on purpose here
    gw = start_gateway(gateway_toml(mock_port, server=server), workers=2, name="same-config")
    assert gw.config_path is not None
    late, early = sorted(_workers(gw.pid, 2))
    _wait_live(gw, 2)  # both serve: the probes below reach both
    os.kill(late, signal.SIGSTOP)
    try:
        gw.config_path.write_text(gateway_toml(mock_port, server=server, extra_models=NEW_MODEL))
        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded from" in _logs(gw), 15.0, what="the supervisor's reload")
        # rewritten between the supervisor's validation and the stopped worker's turn
        gw.config_path.write_text(gateway_toml(mock_port, server=server, extra_models=OTHER_MODEL))
    finally:
        os.kill(late, signal.SIGCONT)
    wait_for(lambda: _logs(gw).count("config reloaded") >= 3, 15.0, what="both workers to reload")
    _probe_models(gw.port, {"new-model": 200, "other-model": 404})

    # a respawned worker serves the validated config too, not what the file says now
    os.kill(early, signal.SIGKILL)
    wait_for(lambda: early not in _workers(gw.pid, 2), 20.0, what="a respawned worker")
    wait_for(lambda: _try_serves(gw.port), 20.0, what="the respawned worker to serve")
    _probe_models(gw.port, {"new-model": 200, "other-model": 404})


def test_watch_config_reloads_on_atomic_rename_and_symlink_swap(
    start_gateway: StartGateway, mock_port: int, tmp_path: Path
) -> None:
    server = {"watch_config": True, "watch_interval": 0.2}
    gw = start_gateway(gateway_toml(mock_port, server=server), workers=2, name="watch")
    assert gw.config_path is not None
    assert _model_status(gw.port, "new-model") == 404

    # an editor's save: a new file renamed over the old one
    tmp = gw.config_path.with_suffix(".swp")
    tmp.write_text(gateway_toml(mock_port, server=server, extra_models=NEW_MODEL))
    os.replace(tmp, gw.config_path)
    wait_for(lambda: _model_status(gw.port, "new-model") == 200, 15.0, what="new-model after the rename")
    assert "a change of the watched files" in _logs(gw)
    _probe_models(gw.port, {"new-model": 200})

    # an empty file written in place is rejected like on SIGHUP; the running config stays
    gw.config_path.write_text("")
    wait_for(lambda: "no models are defined" in _logs(gw), 15.0, what="the empty file's rejection")
    assert _model_status(gw.port, "new-model") == 200

    # a Kubernetes ConfigMap: the path is a symlink through "..data", swapped to a new directory
    cm = tmp_path / "configmap"
    (cm / "..v1").mkdir(parents=True)
    (cm / "..v1" / "gateway.toml").write_text(gateway_toml(mock_port, server=server, extra_models=NEW_MODEL))
    (cm / "..data").symlink_to("..v1")
    (cm / "gateway.toml").symlink_to("..data/gateway.toml")
    gw.config_path.unlink()
    gw.config_path.symlink_to(cm / "gateway.toml")
    (cm / "..v2").mkdir()
    (cm / "..v2" / "gateway.toml").write_text(gateway_toml(mock_port, server=server, extra_models=OTHER_MODEL))
    (cm / "..data_tmp").symlink_to("..v2")
    os.replace(cm / "..data_tmp", cm / "..data")
    wait_for(lambda: _model_status(gw.port, "other-model") == 200, 15.0, what="the ConfigMap's swap")
    _probe_models(gw.port, {"other-model": 200, "new-model": 404})


# -- 11. the state directory ----------------------------------------------------------------------------


@contextlib.contextmanager
def _read_only_config_dir() -> Iterator[Path]:
    """A directory the gateway can read, not write (a root-owned /etc/gateway in the container image):
    mode 0555, and for root (who writes anyway) a read-only bind mount in the gateway's own mount
    namespace (``_serve``)."""
    directory = Path(tempfile.mkdtemp(prefix="gateway-ro-"))
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory, ignore_errors=True)


_REMOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'


@functools.cache
def _namespace() -> list[str] | None:
    """How root runs a command in a mount namespace of its own (``unshare``, privileged or in a user
    namespace), or None when this machine allows neither."""
    probe = tempfile.mkdtemp(prefix="gateway-ns-")
    try:
        for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
            try:
                done = subprocess.run([*prefix, "sh", "-c", _REMOUNT, probe, "true"], capture_output=True,
                                      timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if done.returncode == 0:
                return prefix
        return None
    finally:
        os.rmdir(probe)


def _serve(config: Path, port: int, log_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    etc = config.parent
    etc.chmod(0o555)
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "2",
               "--host", HOST, "--port", str(port)]
    if os.geteuid() == 0:
        prefix = _namespace()
        if prefix is None:
            pytest.skip("root writes into a 0555 directory, and this machine refuses the mount namespace "
                        "(unshare) that would make it read-only")
        command = [*prefix, "sh", "-c", _REMOUNT, str(etc), *command]
    with open(log_dir / f"serve-{port}.log", "wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "MOCK_KEY": MOCK_KEY, "HOME": str(etc / "home"),
                 "XDG_STATE_HOME": "", **env},
        )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _auth_toml(mock_port: int, store: str = "") -> str:
    return gateway_toml(mock_port) + _auth('["*"]') + f"\n[store]\n{store}\n"


def test_read_only_config_dir_without_a_state_dir_is_a_clear_startup_error(
    mock_port: int, tmp_path: Path
) -> None:
    with _read_only_config_dir() as etc:
        config = etc / "gateway.toml"
        config.write_text(_auth_toml(mock_port))
        proc = _serve(config, free_port(), tmp_path, {})
        try:
            code = proc.wait(60)  # exits by itself: no crash loop
        finally:
            _stop_group(proc)
        output = next(tmp_path.glob("serve-*.log")).read_text()
        assert code == 1, output
        # the config's directory is not writable, so the user's state directory was tried: named
        assert f"the state directory {etc}/home/.local/state/llm-gateway is not writable" in output, output
        assert "set [store] data_dir" in output, output
        assert "respawning" not in output and "crashed" not in output, output


@pytest.mark.parametrize("how", ["xdg_state_home", "data_dir"])
def test_read_only_config_dir_keeps_its_state_in_the_data_dir(mock_port: int, tmp_path: Path,
                                                               how: str) -> None:
    state = Path(tempfile.mkdtemp(prefix="gateway-state-"))
    try:
        with _read_only_config_dir() as etc:
            config = etc / "gateway.toml"
            env: dict[str, str] = {}
            if how == "data_dir":
                config.write_text(_auth_toml(mock_port, f'data_dir = "{state}"'))
                where = state
            else:
                config.write_text(_auth_toml(mock_port))
                env["XDG_STATE_HOME"] = str(state)
                where = state / "llm-gateway"
            port = free_port()
            proc = _serve(config, port, tmp_path, env)
            try:
                wait_for(lambda: proc.poll() is not None or _model_status_safe(port, KEY) == 200, 60.0,
                         what="the gateway to serve with its state in the data directory")
                assert proc.poll() is None, next(tmp_path.glob("serve-*.log")).read_text()
                assert _model_status(port, "chat-model") == 401
                assert (where / "gateway.db").is_file()
                assert not (etc / "gateway.db").exists()
            finally:
                _stop_group(proc)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _model_status_safe(port: int, key: str) -> int:
    try:
        return _model_status(port, "chat-model", key)
    except OSError:
        return 0


def test_a_worker_that_keeps_failing_to_start_stops_the_gateway(mock_port: int, tmp_path: Path) -> None:
    """Something the startup check cannot see (a limits table of another version) fails every start:
    the supervisor backs off, then gives up with an error instead of respawning forever."""
    (tmp_path / "gateway.db-limits").write_bytes(b"\x07" * 4096)
    limits = '\n[limits]\ndefault_policy = "p"\n[limits.policies.p]\nrequests_per_minute = 600\n'
    config = tmp_path / "crash.toml"
    config.write_text(gateway_toml(mock_port) + limits)
    args = ["serve", "--config", str(config), "--workers", "1", "--host", HOST, "--port", str(free_port())]
    proc = ServerProcess("crash-loop", args, tmp_path, 0, env={"MOCK_KEY": MOCK_KEY}).start()
    try:
        wait_for(lambda: proc.exited() is not None, 90.0, what="the gateway to give up")
        logs = proc.logs(10**7, records=False)
        assert proc.exited() == 1, logs
        assert "5 times in a row; giving up" in logs, logs
        assert logs.count("before it served") == 5, logs
    finally:
        proc.stop()


# -- 12. orphans and hangs ------------------------------------------------------------------------------


def test_supervisor_killed_with_sigkill_takes_its_workers_with_it(start_gateway: StartGateway,
                                                                  mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port), workers=2, name="orphans")
    workers = _workers(gw.pid, 2)
    os.kill(gw.pid, signal.SIGKILL)
    gw.process.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in workers), 20.0, what="the orphaned workers to exit")
    wait_for(lambda: _refused(gw.port) and _port_free(gw.port), 10.0, what="the port to be free")


def test_a_stopped_worker_is_replaced(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(gateway_toml(mock_port, server={"worker_heartbeat_timeout": 3.0}), workers=2,
                       name="heartbeat")
    before = _workers(gw.pid, 2)
    _wait_live(gw, 2)  # both loops run, so both beat
    victim = min(before)
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: not pid_alive(victim), 30.0, what="the stopped worker to be killed")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGCONT)
    after = wait_for(lambda: (lambda k: k if victim not in k else None)(_workers(gw.pid, 2)), 20.0,
                     what="a replacement worker")
    assert len(after & before) == 1
    logs = _logs(gw)
    assert f"(pid {victim}) missed its heartbeat" in logs, logs
    wait_for(lambda: _try_serves(gw.port), 20.0, what="the gateway to serve after the replacement")
    for _ in range(PROBES // 2):
        with RawClient(gw.port) as c:
            assert c.request(chat_request("hi", headers=[("Connection", "close")])).status == 200

    wait_for(lambda: _metric(gw.port, 'gateway_worker_restarts_total{reason="heartbeat"}') >= 1, 15.0,
             what="the replacement in the metrics")


def _wait_live(gw: Gateway, n: int) -> None:
    """Until ``n`` workers have started serving (each writes its metrics snapshot from then on)."""
    wait_for(lambda: _metric(gw.port, 'gateway_metrics_workers{state="live"}') == n, 30.0,
             what=f"{n} workers to be up")


def _metric(port: int, series: str) -> float:
    """The value of one series in a scrape (0 when it is not there)."""
    with RawClient(port) as c:
        body = c.request(http_request("GET", "/metrics", headers=[("Connection", "close")])).body
    found = re.search(rb"^" + re.escape(series.encode()) + rb" (\S+)$", body, re.M)
    return float(found[1]) if found else 0.0
