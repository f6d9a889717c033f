"""Allow-list and injection patterns that begin with their own inline flags (``(?i)...``) are joined
into one regex each; the gateway serves with them (it refused every guarded request before: Python
rejects global flags past a pattern's start), and the config check accepts them and still refuses a
broken pattern with its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import Gateway, _launch
from .helpers import HOST
from .tiny_upstream import TinyUpstream

POLICY = """
[guardrails.policies.flags]
input = { email = "mask" }
allow = { patterns = ["(?i)SUPPORT@EXAMPLE\\\\.ORG", "(?u)help@example\\\\.net"] }
injection = { patterns = ["(?i)open the pod bay doors"], action = "block", threshold = 0.5 }

[guardrails.apply]
gateway = "flags"
"""


def _answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    content = json.loads(body)["messages"][-1]["content"]
    out = {"id": "c1", "object": "chat.completion", "created": 1733512345, "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, "echo": content}
    return 200, "application/json", json.dumps(out).encode()


def _config(up: TinyUpstream, extra: str) -> str:
    text = f'[providers.up]\ntype = "openai"\nbase_url = "http://{HOST}:{up.port}/v1"\n'
    return text + 'api_key = "env:MOCK_KEY"\nread_timeout = 10.0\n\n[models.m]\nprovider = "up"\n' + extra


@pytest.fixture(scope="module")
def upstream() -> Iterator[TinyUpstream]:
    up = TinyUpstream(_answer)
    try:
        yield up
    finally:
        up.close()


@pytest.fixture(scope="module")
def gateway(upstream: TinyUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = _launch("guard-flags", tmp_path_factory.mktemp("guard-flags"), config_text=_config(upstream, POLICY),
                 workers=1, frontend="native")
    try:
        yield gw
    finally:
        gw.process.stop()


def _chat(gw: Gateway, text: str) -> httpx.Response:
    return httpx.post(f"http://{HOST}:{gw.port}/v1/chat/completions", timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": text}]})


def test_an_allowed_address_in_any_case_reaches_the_upstream(gateway: Gateway, upstream: TinyUpstream) -> None:
    r = _chat(gateway, "write to support@example.org or jane.doe@corp.example")
    assert r.status_code == 200, r.text
    sent = json.loads(upstream.seen[-1][2])["messages"][-1]["content"]
    assert "support@example.org" in sent  # allowed, (?i) applied
    assert "jane.doe@corp.example" not in sent  # masked


def test_an_injection_pattern_with_flags_blocks_in_any_case(gateway: Gateway) -> None:
    r = _chat(gateway, "Please OPEN THE POD BAY DOORS now")
    assert r.status_code == 400, r.text
    assert "guardrail" in r.json()["error"]["code"]


def test_the_check_accepts_flagged_patterns_and_refuses_a_broken_one(tmp_path: Path,
                                                                     upstream: TinyUpstream) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(_config(upstream, POLICY))
    env = {**os.environ, "MOCK_KEY": "k"}
    ok = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(cfg)],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    cfg.write_text(_config(upstream, POLICY.replace('"(?u)help@example\\\\.net"', '"x(?i)y"')))
    bad = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode != 0
    assert "allow" in bad.stdout + bad.stderr and "patterns" in bad.stdout + bad.stderr
