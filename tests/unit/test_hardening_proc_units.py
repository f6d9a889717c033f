"""The pieces of the process model that need no process: what a reload loosens, the config snapshot and
its pinned credential files, the config pipe's framing, the config watch's settling, the data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config_text, resolve_secret
from gateway.config.security import weakenings
from gateway.config.snapshot import (
    _pinned,
    decode_snapshot,
    encode_snapshot,
    install,
    read_snapshot,
)
from gateway.server.control import ConfigReceiver, ConfigSender, HeartbeatTable, config_code, frame
from gateway.server.watch import ConfigWatch
from gateway.store.datadir import StateDirError, prepare_state_dir, user_state_dir

BASE = """
[providers.p]
type = "mock"
[models.m]
provider = "p"
[limits.policies.pol]
requests_per_minute = 100
fail_mode = "fail_closed"
[limits.budgets.b]
usd_per_day = 10.0
"""

DIGEST = "sha256:" + "ab" * 32


def _cfg(extra: str = "", *, key: str = 'models = ["m"]', tenant: str = 'limit_policy = "pol"') -> str:
    return BASE + f"""
[auth]
required = true
[[auth.keys]]
id = "keyidaaaaaaa"
digest = "{DIGEST}"
tenant = "t"
expires_at = 2000000000.0
{key}
[tenants.t]
{tenant}
[admin]
operator_token = "{DIGEST}"
tenant_tokens = {{ t = "{DIGEST}" }}
{extra}"""


def test_nothing_loosened_nothing_reported() -> None:
    assert weakenings(load_config_text(_cfg()), load_config_text(_cfg())) == []


def test_each_loosening_is_named() -> None:
    old = load_config_text(_cfg())
    new = load_config_text(
        BASE.replace("requests_per_minute = 100", "requests_per_minute = 1000")
        .replace('fail_mode = "fail_closed"', "")
        .replace("usd_per_day = 10.0", 'usd_per_day = 10.0\naction = "alert"')
        + f"""
[[auth.keys]]
id = "keyidaaaaaaa"
digest = "{DIGEST}"
tenant = "t"
models = ["m", "other-*"]
[tenants.t]
name = "t"
"""
    )
    found = weakenings(old, new)
    assert found == [
        "auth.required: true -> false: data-plane requests are no longer authenticated",
        "admin.operator_token: removed",
        "admin.tenant_tokens.t: removed",
        'auth.keys[id="keyidaaaaaaa"].models: now also "other-*"',
        'auth.keys[id="keyidaaaaaaa"].expires_at: removed',
        'tenants.t.limit_policy: "pol" -> none',
        "limits.policies.pol.requests_per_minute: 100 -> 1000",
        "limits.policies.pol.fail_mode: fail_closed -> fail_open",
        "limits.budgets.b.action: block -> alert",
    ]


def test_tightening_is_not_reported() -> None:
    old = load_config_text(_cfg(key='models = ["*"]'))
    new = load_config_text(_cfg(key='models = ["m"]'))
    assert weakenings(old, new) == []


def test_snapshot_carries_the_credential_files_and_pins_them(tmp_path: Path) -> None:
    secret = tmp_path / "key.txt"
    secret.write_text("first\n")
    config = tmp_path / "gateway.toml"
    config.write_text('[providers.p]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      'api_key = "file:key.txt"\n[models.m]\nprovider = "p"\n')
    snap = decode_snapshot(encode_snapshot(read_snapshot(config)))
    assert snap.files == {str(secret): "first\n"}
    secret.write_text("second\n")  # rewritten after the validation
    try:
        install(snap)
        assert resolve_secret(f"file:{secret}") == "first"
    finally:
        _pinned.clear()
    assert resolve_secret(f"file:{secret}") == "second"
    assert read_snapshot(config).digest != snap.digest


def test_a_file_without_models_is_no_snapshot(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nport = 8080\n")
    with pytest.raises(ConfigError, match="no models are defined"):
        read_snapshot(config)


def test_the_config_pipe_delivers_the_newest_complete_frame() -> None:
    r, w = os.pipe()
    sender, receiver = ConfigSender(w), ConfigReceiver(r)
    try:
        sender.send(frame(b"one"))
        sender.send(frame(b"two"))
        assert not sender.pending
        receiver._buf += os.read(r, 1 << 16)
        assert receiver._take_frames() == b"two"
        whole = frame(b"three")
        receiver._buf += whole[:5]
        assert receiver._take_frames() is None
        receiver._buf += whole[5:]
        assert receiver._take_frames() == b"three"
    finally:
        sender.close()
        os.close(r)


def test_a_full_pipe_keeps_only_the_frame_in_progress_and_the_newest() -> None:
    r, w = os.pipe()
    sender = ConfigSender(w)
    try:
        big = frame(b"x" * (1 << 20))  # larger than the pipe: stays in progress
        sender.send(big)
        for i in range(5):
            sender.send(frame(b"newer %d" % i))
        assert len(sender._queue) == 2 and sender._queue[-1] == frame(b"newer 4")
    finally:
        sender.close()
        os.close(r)


def test_heartbeat_slots() -> None:
    table = HeartbeatTable(2)
    table.reset(1)
    assert table.read(1) == (0, 0.0, 0.0, 0)
    table.beat(1)
    pid, beat, ready, config = table.read(1)
    assert pid == os.getpid() and beat > 0 and ready == 0 and config == 0
    table.beat(1, ready=True)
    assert table.read(1).ready > 0
    code = config_code("f" * 64)
    assert code == 2**60 - 1 and config_code("") == 0
    table.running(1, code)  # the config it serves with: kept by later beats
    table.beat(1)
    assert table.read(1).config == code and table.read(0).config == 0
    table.close()


def test_the_watch_waits_for_a_change_to_settle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "gateway.supervisor")
    path = tmp_path / "gateway.toml"
    path.write_text("a")
    watch = ConfigWatch([str(path)], interval=1.0)
    assert not watch.poll(0.0)
    tmp = tmp_path / "new.toml"
    tmp.write_text("bb")
    os.replace(tmp, path)  # a save by rename: a new inode at the path
    assert not watch.poll(10.0)  # seen, not settled
    assert not watch.poll(10.5)
    assert watch.poll(11.0)
    assert not watch.poll(20.0)  # applied: nothing more
    path.unlink()
    assert not watch.poll(30.0) and not watch.poll(40.0)  # missing: wait for it to come back
    assert caplog.text.count(f"the config file {path} is gone") == 1  # said once
    path.write_text("ccc")
    assert not watch.poll(50.0) and watch.poll(51.0)
    assert f"the config file {path} is back" in caplog.text


def test_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert user_state_dir() == str(tmp_path / "xdg" / "llm-gateway")
    monkeypatch.setenv("XDG_STATE_HOME", "relative")  # ignored, as the spec says
    assert user_state_dir() == os.path.join(os.path.expanduser("~"), ".local", "state", "llm-gateway")
    keys = f'[auth]\nrequired = true\n[store]\nurl = "sqlite://{tmp_path}/state/gateway.db"\n'
    assert prepare_state_dir(load_config_text(BASE + keys)) == str(tmp_path / "state")
    assert (tmp_path / "state").is_dir()
    plain = '[providers.p]\ntype = "mock"\n[models.m]\nprovider = "p"\n[store]\nurl = "sqlite:///nowhere/x.db"\n'
    assert prepare_state_dir(load_config_text(plain)) is None  # a plain proxy needs no state files
    blocked = tmp_path / "file"
    blocked.write_text("")
    bad = f'[auth]\nrequired = true\n[store]\nurl = "sqlite://{blocked}/gateway.db"\n'
    with pytest.raises(StateDirError, match=f"the state directory {blocked} is not writable"):
        prepare_state_dir(load_config_text(BASE + bad))


def test_refused_request_ids_differ_between_forked_workers() -> None:
    """Workers are forked from one parent: the ids of the requests they refuse must still not collide."""
    from gateway.errors import refused_id

    first = refused_id()
    assert first.startswith("refused-") and refused_id() != first
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own prefix
        os.write(w, refused_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child.startswith("refused-") and child.rsplit("-", 1)[0] != first.rsplit("-", 1)[0]
