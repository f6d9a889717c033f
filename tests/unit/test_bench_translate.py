"""The translation benchmark (``python -m bench.proxy_vs_nginx --scenario translate``, ``bench.translate``):
that nginx is sent exactly what the gateway sends its Anthropic upstream, and that a quick run measures
both targets and the translation's own CPU. Never how fast anything is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # ``bench`` is not an installed package: import it from the checkout
    sys.path.insert(0, str(REPO_ROOT))

from bench import proxy_vs_nginx as harness  # noqa: E402
from bench import translate  # noqa: E402
from bench.configs import gateway_toml  # noqa: E402
from gateway.config import load_config_text  # noqa: E402
from gateway.config.schema import MockConfig  # noqa: E402
from gateway.context import Context  # noqa: E402
from gateway.providers.anthropic import AnthropicTranslator  # noqa: E402
from gateway.providers.mock import MockTransport  # noqa: E402

needs_tools = pytest.mark.skipif(
    not (shutil.which("nginx") or os.access("/usr/sbin/nginx", os.X_OK)) or not shutil.which("wrk"),
    reason="needs nginx and wrk (apt-get install -y nginx wrk)",
)


def _chat_ctx(body: bytes) -> Context:
    """An OpenAI chat client's request context (the compiled translators take only the real type)."""
    ctx = Context(SimpleNamespace(body=body), "t", None, None)  # type: ignore[arg-type]
    ctx.endpoint = "chat"
    return ctx


def test_nginx_is_sent_the_bytes_the_gateway_sends_upstream() -> None:
    sc = harness.SCENARIOS["translate"]
    t = AnthropicTranslator("a", MockTransport(MockConfig()), "/v1", "k", {})
    sent = t.request_body(_chat_ctx(sc.body), harness.MODEL, False)
    path, body, check = sc.request_of("nginx")
    assert (path, body) == ("/v1/messages", sent)
    assert check(200, b'{"type":"message","content":[{"type":"text","text":"hi"}]}') is None
    assert check(200, b'{"object":"chat.completion"}') is not None
    # the gateway's side is the OpenAI request, answered as a chat completion
    assert sc.request_of("gateway") == ("/v1/chat/completions", sc.body, sc.check)
    assert json.loads(sc.body)["messages"][0]["role"] == "user"
    assert sc.upstream_dialect == "anthropic"


def test_the_gateway_config_names_an_anthropic_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_KEY", harness.BENCH_KEY)
    config = load_config_text(gateway_toml(18080, 19000, provider_type="anthropic"), "bench.toml")
    assert config.providers["upstream"].type == "anthropic"
    assert load_config_text(gateway_toml(18080, 19000), "bench.toml").providers["upstream"].type == "openai"


def test_the_translation_cpu_figures() -> None:
    r = translate.measure(number=50, deltas=3)
    assert set(r) >= {"request", "answer", "per_request", "stream", "per_event"}
    assert r["request"] > 0 and r["answer"] > 0 and r["stream"] > 0
    assert r["per_request"] == pytest.approx(r["request"] + r["answer"])
    text = translate.summary(r)
    assert "translation per non-stream request" in text


@needs_tools
@pytest.mark.timeout(150)
def test_quick_translate_run_measures_both_targets_and_the_translation(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "bench.proxy_vs_nginx", "--quick", "--scenario", "translate",
            "--timeout", "10", "--json", str(out)]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its services and removes its temp dir
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        pytest.fail("the quick benchmark did not finish within 120 s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["scenario"]["name"] == "translate"
    assert result["scenario"]["nginx_path"] == "/v1/messages"
    for name, target in result["targets"].items():
        assert target["error_total"] == 0, name
        assert target["median_req_per_cpu_s"] > 0, name
    assert result["translation_us"]["per_request"] > 0
    assert "translation's own CPU per request" in stdout
