"""``gateway mock`` on its own: an OpenAI-compatible server the official SDK can talk to directly.

The gateway tests trust the mock as their upstream; these check that trust, and the command's flags.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .helpers import HOST, ServerProcess, free_port

pytestmark = pytest.mark.timeout(60)

USER = [{"role": "user", "content": "hello mock"}]


@pytest.fixture
def mock_client(mock_port: int) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=f"http://{HOST}:{mock_port}/v1", api_key="k", max_retries=0, timeout=10.0)
    try:
        yield c
    finally:
        c.close()


def test_mock_chat_is_deterministic(mock_client: openai.OpenAI) -> None:
    a = mock_client.chat.completions.create(model="mock-1", messages=USER)
    b = mock_client.chat.completions.create(model="mock-1", messages=USER)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id
    assert a.usage is not None and a.usage.completion_tokens == 12


def test_mock_stream_usage_only_when_asked(mock_client: openai.OpenAI) -> None:
    plain = list(mock_client.chat.completions.create(model="mock-1", messages=USER, stream=True))
    assert all(c.choices and c.usage is None for c in plain)
    with_usage = list(mock_client.chat.completions.create(
        model="mock-1", messages=USER, stream=True, stream_options={"include_usage": True},
    ))
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None


def test_mock_embeddings_and_models(mock_client: openai.OpenAI) -> None:
    vec = mock_client.embeddings.create(model="mock-embed-1", input="abc").data[0].embedding
    assert len(vec) == 16 and math.isclose(math.hypot(*vec), 1.0, rel_tol=1e-5)
    assert {m.id for m in mock_client.models.list()} >= {"mock-1", "mock-embed-1"}
    assert mock_client.models.retrieve("mock-1").id == "mock-1"
    with pytest.raises(openai.NotFoundError):
        mock_client.models.retrieve("nope")


def test_mock_directives_by_message_and_header(mock_client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        mock_client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "!mock status=429"}])
    assert info.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        mock_client.chat.completions.create(model="mock-1", messages=USER, extra_headers={"x-mock": "status=503"})
    with pytest.raises(openai.BadRequestError) as bad:
        mock_client.chat.completions.create(model="mock-1", messages=[{"role": "user", "content": "!mock nope=1"}])
    assert bad.value.code == "invalid_mock_directive"


def test_mock_command_flags(tmp_path: Path) -> None:
    port = free_port()
    args = ["mock", "--port", str(port), "-q", "--chunks", "3", "--chunk-delay-ms", "50", "--latency-ms", "200"]
    proc = ServerProcess("mock-flags", args, tmp_path, port).start()
    client = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="k", max_retries=0, timeout=10.0)
    try:
        proc.wait_ready("/healthz")
        t0 = time.monotonic()
        chunks = list(client.chat.completions.create(model="mock-1", messages=USER, stream=True))
        elapsed = time.monotonic() - t0
        assert sum(1 for c in chunks if c.choices[0].delta.content) == 3
        # a lower bound only, from the configured delays (200 ms before the head, 50 ms between the three
        # chunks; a tenth off for the timer's resolution): a correct mock cannot answer faster
        assert elapsed >= 0.2 + 2 * 0.05 * 0.9
    finally:
        client.close()
        proc.stop()
