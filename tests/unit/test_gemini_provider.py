"""The Google provider types' plumbing: Vertex tokens from google-auth refreshed off the request path, the
paths each upstream model is sent to (streams on their own path), and the config keys.

The token tests use real google-auth service-account credentials (an RSA key made here) whose
``token_uri`` is a fake OAuth token endpoint on loopback, so the JWT grant is really signed and
exchanged; waits are on events with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import ConfigError, load_config, load_config_text
from gateway.engine import build_translator
from gateway.providers.base import UpstreamError
from gateway.providers.gemini import GeminiTranslator, VertexAnthropicTranslator, default_base_url
from gateway.providers.google_auth import TokenSource, load_credentials

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class TokenServer:
    """An OAuth token endpoint: answers JWT-bearer grants with ``tok-N`` tokens that expire after
    ``expires_in`` seconds; ``fail`` answers the next grants 500."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.grants = 0
        self.fail = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
                assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                if outer.fail:
                    outer.fail -= 1
                    status, body = 500, b'{"error": "internal_failure"}'
                else:
                    outer.grants += 1
                    status, body = 200, json.dumps({"access_token": f"tok-{outer.grants}",
                                                    "expires_in": outer.expires_in}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[TokenServer]:
    s = TokenServer()
    try:
        yield s
    finally:
        s.close()


def key_file(tmp_path: Path, port: int) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "sa-project", "private_key_id": "k1", "private_key": pem,
        "client_email": "gw@sa-project.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"http://127.0.0.1:{port}/token"}))
    return path


async def _until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FakeTransport:
    """Records the requests the translator sends (path and headers)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    async def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        self.sent.append((path, dict(headers), body))
        return None

    async def close(self) -> None:
        pass


# -- tokens ------------------------------------------------------------------------------------------------


def test_load_credentials_from_a_key_file(tmp_path: Path, server: TokenServer) -> None:
    creds, project = load_credentials(str(key_file(tmp_path, server.port)))
    assert project == "sa-project"
    assert creds.service_account_email == "gw@sa-project.iam.gserviceaccount.com"


def test_first_token_then_refreshed_ahead_of_expiry(tmp_path: Path) -> None:
    server = TokenServer(expires_in=4)  # refreshed 2 s in (half the life left, less than the margin)
    try:
        creds, _ = load_credentials(str(key_file(tmp_path, server.port)))

        async def run() -> None:
            src = TokenSource(creds)  # made in a running loop: the task starts at once
            try:
                assert await src.ready() == "Bearer tok-1"
                await _until(lambda: src.header == "Bearer tok-2", "the refresh before expiry")
                assert src.refreshes == 2
            finally:
                await src.close()

        asyncio.run(run())
    finally:
        server.close()


def test_a_failed_refresh_is_retried_and_reported(tmp_path: Path, server: TokenServer) -> None:
    server.fail = 1_000_000  # google-auth retries a 500 itself a few times first
    creds, _ = load_credentials(str(key_file(tmp_path, server.port)))

    async def run() -> None:
        src = TokenSource(creds)
        try:
            with pytest.raises(UpstreamError, match="no Google access token"):
                await src.ready()
            assert src.failure and "internal_failure" in src.failure
            server.fail = 0
            # retried in the background (1 s backoff): then requests go on
            await _until(lambda: src.header is not None, "the retried refresh")
            assert await src.ready() == "Bearer tok-1" and src.failure is None
        finally:
            await src.close()

    asyncio.run(run())


def test_requests_only_add_the_header(tmp_path: Path, server: TokenServer) -> None:
    """Sends never refresh: 50 requests, one grant; a new token reaches the next request's head."""
    creds, _ = load_credentials(str(key_file(tmp_path, server.port)))

    async def run() -> None:
        transport = FakeTransport()
        src = TokenSource(creds)
        provider = GeminiTranslator("v", transport, "/v1", [("content-type", "application/json")], auth=src,
                                    vertex=("proj", "us-central1"))
        model = provider.for_model("gemini-2.5-flash")
        try:
            for i in range(50):
                await model.send("chat", b"{}", f"r{i}")
            assert server.grants == 1
            assert {h["authorization"] for _, h, _ in transport.sent} == {"Bearer tok-1"}
            creds.expiry = None
            await asyncio.get_running_loop().run_in_executor(None, src._refresh)  # what the task does
            src.header = f"Bearer {creds.token}"
            await model.send("chat", b"{}", "next")
            assert transport.sent[-1][1]["authorization"] == "Bearer tok-2"
        finally:
            await provider.close()

    asyncio.run(run())


# -- paths -----------------------------------------------------------------------------------------------


def _paths(t: Any) -> dict[str, str]:
    return dict(t._paths)


def test_gemini_paths_and_the_stream_flag() -> None:
    async def run() -> None:
        transport = FakeTransport()
        provider = GeminiTranslator("g", transport, "/v1beta", [("x-goog-api-key", "k")])
        model = provider.for_model("gemini-2.5-flash")
        assert provider.for_model("gemini-2.5-flash") is model and model.model_in_path
        assert _paths(model) == {
            "chat": "/v1beta/models/gemini-2.5-flash:generateContent",
            "messages": "/v1beta/models/gemini-2.5-flash:generateContent",
            "responses": "/v1beta/models/gemini-2.5-flash:generateContent",
            "stream": "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "embeddings": "/v1beta/models/gemini-2.5-flash:batchEmbedContents",
        }
        await model.send("chat", b'{"contents":[]}', "a")
        await model.send("chat", b'{"contents":[]}', "b", None, True)
        await model.send("embeddings", b"{}", "c")
        assert [p for p, _, _ in transport.sent] == [
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/gemini-2.5-flash:batchEmbedContents"]
        assert all(h["x-goog-api-key"] == "k" for _, h, _ in transport.sent)
        tuned = provider.for_model("tunedModels/my-model-123")
        assert _paths(tuned)["chat"] == "/v1beta/tunedModels/my-model-123:generateContent"

    asyncio.run(run())


def test_vertex_paths() -> None:
    provider = GeminiTranslator("v", FakeTransport(), "/v1", [], vertex=("proj", "europe-west4"))
    where = "/v1/projects/proj/locations/europe-west4"
    gem = provider.for_model("gemini-2.5-flash")
    assert _paths(gem)["chat"] == f"{where}/publishers/google/models/gemini-2.5-flash:generateContent"
    assert _paths(gem)["embeddings"] == f"{where}/publishers/google/models/gemini-2.5-flash:predict"
    claude = provider.for_model("claude-sonnet-4-5@20250929")
    assert isinstance(claude, VertexAnthropicTranslator)
    assert _paths(claude) == {
        "chat": f"{where}/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        "messages": f"{where}/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        "responses": f"{where}/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        "stream": f"{where}/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
    }
    endpoint = provider.for_model("endpoints/1234567890")
    assert _paths(endpoint)["chat"] == f"{where}/endpoints/1234567890:generateContent"


def test_default_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "k")
    cfg = load_config_text('[providers.g]\ntype = "gemini"\napi_key = "env:K"\n'
                           '[providers.v]\ntype = "vertex"\nproject = "my-proj-1"\n'
                           '[providers.w]\ntype = "vertex"\nproject = "my-proj-1"\nlocation = "global"\n'
                           '[models.m]\nprovider = "g"\n')
    assert default_base_url(cfg.providers["g"]) == "https://generativelanguage.googleapis.com/v1beta"
    assert default_base_url(cfg.providers["v"]) == "https://us-central1-aiplatform.googleapis.com/v1"
    assert default_base_url(cfg.providers["w"]) == "https://aiplatform.googleapis.com/v1"


def test_build_translator_for_vertex(tmp_path: Path, server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = key_file(tmp_path, server.port)
    cfg = load_config_text(f'[providers.v]\ntype = "vertex"\nlocation = "us-east5"\ncredentials_file = "{path}"\n'
                           '[models.m]\nprovider = "v"\n')
    from gateway.config.schema import UpstreamConfig

    async def run() -> None:
        t = build_translator("v", cfg.providers["v"], UpstreamConfig())
        try:
            assert isinstance(t, GeminiTranslator)
            # the project comes from the key file when the config names none
            assert _paths(t.for_model("gemini-2.5-flash"))["chat"].startswith(
                "/v1/projects/sa-project/locations/us-east5/")
        finally:
            await t.close()

    asyncio.run(run())


# -- config ----------------------------------------------------------------------------------------------


def _errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text + '[models.m]\nprovider = "p"\n')
    return "\n".join(info.value.errors)


def test_config_problems() -> None:
    assert 'only for type "vertex"' in _errors('[providers.p]\ntype = "gemini"\nproject = "abcdef"\n')
    assert "not for type" in _errors('[providers.p]\ntype = "vertex"\napi_key = "env:X"\n')
    assert "region" in _errors('[providers.p]\ntype = "vertex"\nlocation = "Mars"\n')
    assert "project id" in _errors('[providers.p]\ntype = "vertex"\nproject = "A B"\n')
    assert "no such file" in _errors('[providers.p]\ntype = "vertex"\ncredentials_file = "/nonexistent/k.json"\n')


def test_relative_credentials_file_is_resolved_against_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "sa.json").write_text("{}")
    (tmp_path / "g.toml").write_text('[providers.p]\ntype = "vertex"\nproject = "my-proj-1"\n'
                                     'credentials_file = "keys/sa.json"\n[models.m]\nprovider = "p"\n')
    assert load_config(tmp_path / "g.toml").providers["p"].credentials_file == str(tmp_path / "keys" / "sa.json")


def test_examples_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    gemini = load_config(EXAMPLES / "gemini.toml")
    assert gemini.providers["gemini"].type == "gemini"
    assert gemini.models["gemini-embedding"].endpoints == ["embeddings"]
    vertex = load_config(EXAMPLES / "vertex.toml")
    assert {p.location for p in vertex.providers.values()} == {"europe-west4", "global"}
    assert vertex.models["claude-sonnet"].upstream_model == "claude-sonnet-4-5@20250929"


def test_provider_docs_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Gemini and Vertex TOML blocks of docs/providers.md load (a key file named there is checked
    for existence, so the block that names one is loaded with it left out)."""
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    doc = (EXAMPLES.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
    google = [b for b in blocks if 'type = "gemini"' in b or 'type = "vertex"' in b]
    assert len(google) == 3
    for block in google:
        text = "\n".join(line for line in block.splitlines() if not line.startswith("credentials_file"))
        cfg = load_config_text(text, "docs/providers.md")
        assert all(p.type in ("gemini", "vertex") for p in cfg.providers.values())


def test_claude_on_vertex_bodies_and_errors() -> None:
    import anthropic.types as at
    from openai.types.chat import ChatCompletion

    fixtures = EXAMPLES.parent / "tests" / "fixtures" / "providers" / "vertex"
    claude = GeminiTranslator("v", FakeTransport(), "/v1", [], vertex=("p", "us-east5")).for_model("claude-sonnet-4-5")

    from gateway.context import Context

    # an OpenAI chat client's request context (the compiled translators take only the real type)
    ctx = Context(SimpleNamespace(body=b'{"model": "c", "messages": [{"role": "user", "content": "hi"}], '
                                       b'"max_tokens": 50}'), "t", None, None)  # type: ignore[arg-type]
    ctx.endpoint = "chat"
    body = json.loads(claude.request_body(ctx, "claude-sonnet-4-5", True))
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16" and body["max_tokens"] == 50
    ctx.stream = True
    ctx.body = ctx.body.replace(b'"max_tokens"', b'"stream": true, "max_tokens"')
    raw = claude.request_body(ctx, "claude-sonnet-4-5", True)
    assert json.loads(raw)["stream"] is True and raw == raw.strip()  # the body names no path
    answer = (fixtures / "responses" / "claude_raw_predict.json").read_bytes()
    at.Message.model_validate_json(answer)
    ctx.stream = False
    out = ChatCompletion.model_validate_json(claude.take_body(ctx, answer))
    assert out.choices[0].message.content == "Hello from Claude on Vertex AI."
    assert ctx.usage.prompt_tokens == 12 and ctx.usage.completion_tokens == 9
    # Vertex's own errors are Google's; Anthropic's are Anthropic's
    quota = claude.error_answer(429, (fixtures / "errors" / "resource_exhausted_429.json").read_bytes())
    assert quota is not None and quota[0] == 429
    overloaded = claude.error_answer(529, b'{"type": "error", "error": {"type": "overloaded_error", "message": "x"}}')
    assert overloaded is not None and overloaded[0] == 503
    denied = claude.error_answer(403, (fixtures / "errors" / "permission_denied_403.json").read_bytes())
    assert denied is not None and denied[0] == 502 and b"upstream_permission" in denied[1]


def test_a_rotated_key_file_changes_the_provider_credentials(tmp_path: Path) -> None:
    """A reload keeps a provider's translator while its credentials read the same: a key file rewritten in
    place (a rotated Kubernetes Secret) must read differently."""
    from gateway.providers.presets import credentials_of

    key = tmp_path / "k.json"
    key.write_text('{"type": "service_account", "v": 1}')
    text = f'[providers.p]\ntype = "vertex"\nproject = "my-proj-1"\ncredentials_file = "{key}"\n[models.m]\nprovider = "p"\n'
    p = load_config_text(text).providers["p"]
    before = credentials_of(p)
    assert credentials_of(p) == before
    key.write_text('{"type": "service_account", "v": 2}')
    assert credentials_of(p) != before


def test_first_token_wait_is_bounded(tmp_path: Path, server: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token endpoint (or metadata server) that does not answer fails the first requests after
    FIRST_TOKEN_TIMEOUT with a 502-mapped UpstreamError, instead of holding them."""
    from gateway.providers import google_auth

    monkeypatch.setattr(google_auth, "FIRST_TOKEN_TIMEOUT", 0.3)
    creds, _ = load_credentials(str(key_file(tmp_path, server.port)))
    release = threading.Event()

    def hanging(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise OSError("released")

    async def run() -> None:
        src = TokenSource(creds, request_factory=lambda: hanging)
        try:
            with pytest.raises(UpstreamError, match="does not answer"):
                await src.ready()
        finally:
            release.set()
            await src.close()

    asyncio.run(run())
