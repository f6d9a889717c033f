"""The ``sampling`` key (provider default, model override) decides which of the client's temperature, top_p
and top_k reach an Anthropic upstream.

Real processes: a ``gateway serve`` in front of an Anthropic-shaped upstream in this process that keeps
every request body it gets (``Recorder``), and ``gateway check`` for the key's checks. Each model below is
asked with all three parameters set, and what the upstream received is compared.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Gateway, _launch, _stop
from .helpers import HOST, RawClient, http_request
from .tiny_upstream import TinyUpstream

pytestmark = pytest.mark.timeout(60)


def _answer(path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps({
        "id": "msg_rec", "type": "message", "role": "assistant", "model": "claude-rec",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1},
    }).encode()


def _config(port: int, mock_port: int) -> str:
    base = f'base_url = "http://{HOST}:{port}/v1"\napi_key = "env:MOCK_KEY"\n'
    return f"""
[server]
drain_timeout = 2.0

[providers.claude]
type = "anthropic"
{base}
[providers.claude-strict]
type = "anthropic"
{base}sampling = "none"

[providers.openai]
type = "openai"
base_url = "http://{HOST}:{mock_port}/v1"
api_key = "env:MOCK_KEY"

[models.default]
provider = "claude"
upstream_model = "m-default"

[models.single]
provider = "claude"
upstream_model = "m-single"
sampling = "single"

[models.provider-none]
provider = "claude-strict"
upstream_model = "m-provider-none"

[models.model-all]
provider = "claude-strict"
upstream_model = "m-model-all"
sampling = "all"

[models.routed-none]
sampling = "none"
deployments = [{{ provider = "claude", upstream_model = "m-routed-none" }}]

[models.mixed-none]
sampling = "none"
strategy = "cost"
deployments = [{{ provider = "openai", upstream_model = "mock-1", cost = 1.0 }}]
"""


@pytest.fixture(scope="module")
def recorder() -> Iterator[TinyUpstream]:
    rec = TinyUpstream(_answer)
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture(scope="module")
def gw(recorder: TinyUpstream, mock_port: int, logs_dir: Path, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    gateway = _launch("gateway-sampling", logs_dir, config_text=_config(recorder.port, mock_port),
                      workers=1, frontend="native")
    failed = request.session.testsfailed
    try:
        yield gateway
    finally:
        _stop(gateway.process, request, failed)


def _sent(gw: Gateway, rec: TinyUpstream, model: str, **params: Any) -> dict[str, Any]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **params}).encode()
    with RawClient(gw.port) as c:
        resp = c.request(http_request("POST", "/v1/chat/completions", body))
    assert resp.status == 200, resp
    upstream = [json.loads(b) for _, _, b in rec.seen]
    mine = [u for u in upstream if u["model"] == f"m-{model}"]
    assert mine, upstream
    return {k: mine[-1][k] for k in ("temperature", "top_p", "top_k") if k in mine[-1]}


ALL = {"temperature": 0.3, "top_p": 0.9, "top_k": 40}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("default", ALL),                                   # the provider's default: everything
        ("single", {"temperature": 0.3, "top_k": 40}),      # temperature wins over top_p
        ("provider-none", {}),                              # the provider says none
        ("model-all", ALL),                                 # the model overrides its provider
        ("routed-none", {}),                                # a routed model's key reaches its deployments
    ],
)
def test_sampling_sent_upstream(gw: Gateway, recorder: TinyUpstream, model: str, expected: dict[str, Any]) -> None:
    assert _sent(gw, recorder, model, **ALL) == expected


def test_single_keeps_top_p_alone(gw: Gateway, recorder: TinyUpstream) -> None:
    assert _sent(gw, recorder, "single", top_p=0.8) == {"top_p": 0.8}


def test_openai_deployments_ignore_the_model_key(gw: Gateway) -> None:
    # an OpenAI-compatible deployment of a model with sampling = "none" gets the client's bytes unchanged
    body = json.dumps({"model": "mixed-none", "temperature": 0.3,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    with RawClient(gw.port) as c:
        assert c.request(http_request("POST", "/v1/chat/completions", body)).status == 200


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[providers.p]\ntype = "openai"\nbase_url = "http://127.0.0.1:1/v1"\nsampling = "none"\n',
         'providers.p.sampling: only for type "anthropic"'),
        ('[providers.p]\ntype = "anthropic"\nsampling = "some"\n', "providers.p.sampling"),
        ('[providers.p]\ntype = "anthropic"\n[models.m]\nprovider = "p"\nsampling = false\n', "models.m.sampling"),
    ],
)
def test_gateway_check_refuses_bad_sampling(snippet: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(snippet)
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and expected in out.stderr + out.stdout, out
