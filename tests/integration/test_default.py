"""``gateway serve`` with no config: the embedded default serves the in-process mock, no upstream, no key."""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from .conftest import Gateway

pytestmark = pytest.mark.timeout(60)


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


@pytest.fixture
def dclient(default_gateway: Gateway) -> Iterator[openai.OpenAI]:
    c = default_gateway.client()
    try:
        yield c
    finally:
        c.close()


def test_default_models(dclient: openai.OpenAI) -> None:
    assert {m.id for m in dclient.models.list()} == {"mock-1", "mock-embed-1", "gpt-4o-mini"}


@pytest.mark.parametrize("model", ["mock-1", "gpt-4o-mini"])
def test_default_chat(dclient: openai.OpenAI, model: str) -> None:
    resp = dclient.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}])
    assert resp.model == model
    assert resp.choices[0].message.content
    assert resp.usage is not None and resp.usage.completion_tokens == 12


def test_default_chat_stream(dclient: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Stream, please."}]
    full = dclient.chat.completions.create(model="mock-1", messages=messages)
    chunks = list(dclient.chat.completions.create(model="mock-1", messages=messages, stream=True))
    assert all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full.choices[0].message.content
    with_usage = list(dclient.chat.completions.create(
        model="mock-1", messages=messages, stream=True, stream_options={"include_usage": True},
    ))
    assert with_usage[-1].choices == [] and with_usage[-1].usage is not None


def test_default_embeddings(dclient: openai.OpenAI) -> None:
    resp = dclient.embeddings.create(model="mock-embed-1", input=["one", "two"])
    assert len(resp.data) == 2
    for d in resp.data:
        assert len(d.embedding) == 16
        assert math.isclose(math.hypot(*d.embedding), 1.0, rel_tol=1e-5)
    flt = dclient.embeddings.create(model="mock-embed-1", input=["one", "two"], encoding_format="float")
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
               for x, y in zip(resp.data, flt.data, strict=True)
               for a, b in zip(x.embedding, y.embedding, strict=True))


def test_default_injected_errors(dclient: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        dclient.chat.completions.create(model="mock-1", messages=_user("!mock status=429"))
    assert info.value.response.headers.get("retry-after") == "1"
    with pytest.raises(openai.APIError):
        for _ in dclient.chat.completions.create(
            model="mock-1", messages=_user("!mock cut=1"), stream=True,
        ):
            pass
    assert dclient.chat.completions.create(model="mock-1", messages=_user("ok")).choices
