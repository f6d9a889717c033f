"""The semantic tier for Anthropic Messages requests, through real processes (the standalone mock's
bag-of-words embeddings): a paraphrase hits and is replayed in the Messages dialect; an OpenAI chat
request never gets a Messages neighbour (the dialect is part of the partition), nor a request with
another ``system``."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from .conftest import StartGateway
from .helpers import HOST
from .test_cache_semantic import PARAPHRASE, QUESTION, sem, semantic_toml

pytestmark = pytest.mark.timeout(120)


def test_messages_paraphrase_hits_and_dialects_stay_apart(start_gateway: StartGateway, mock_port: int) -> None:
    gw = start_gateway(semantic_toml(mock_port))
    c = anthropic.Anthropic(base_url=f"http://{HOST}:{gw.port}", api_key="k", max_retries=0, timeout=30.0)
    try:
        def ask(text: str, **extra: Any) -> Any:
            return c.messages.with_raw_response.create(
                model="chat-model", max_tokens=64, extra_body={"temperature": 0},
                messages=[{"role": "user", "content": text}], **extra)

        first = ask(QUESTION, system="Answer well.")
        assert first.headers["x-gateway-cache"] == "miss"
        hit = ask(PARAPHRASE, system=[{"type": "text", "text": "Answer well.",
                                       "cache_control": {"type": "ephemeral"}}])
        # a string system and its one text block are other JSON: the partition differs
        assert hit.headers["x-gateway-cache"] == "miss"
        hit = ask(PARAPHRASE, system="Answer well.")
        assert hit.headers["x-gateway-cache"] == "hit"
        assert float(hit.headers["x-gateway-cache-similarity"]) == pytest.approx(1.0, abs=1e-3)
        assert hit.parse().id == first.parse().id and hit.parse().content == first.parse().content
        with c.messages.stream(model="chat-model", max_tokens=64, extra_body={"temperature": 0}, system="Answer well.",
                               messages=[{"role": "user", "content": PARAPHRASE}]) as s:
            assert s.response.headers["x-gateway-cache"] == "hit"
            assert s.get_final_text() == first.parse().content[0].text  # type: ignore[union-attr]
        assert ask(PARAPHRASE, system="Answer badly.").headers["x-gateway-cache"] == "miss"
        # OpenAI chat, the rest of the request the same (model, max_tokens, temperature): the Messages
        # entries are not its neighbours
        assert ask(QUESTION).headers["x-gateway-cache"] == "miss"
        assert ask(PARAPHRASE).headers["x-gateway-cache"] == "hit"
        assert sem(gw, PARAPHRASE, max_tokens=64).header("x-gateway-cache") == "miss"
    finally:
        c.close()
