"""The semantic tier on Anthropic Messages requests: the prompt text of its ``messages`` (``system`` is
in the partition, marks aside), tool turns not looked up, and partitions apart by dialect and by the
headers exact keys take."""

from __future__ import annotations

import json
from typing import Any

from gateway.cache.config import SemanticPolicy
from gateway.cache.keys import header_part, messages_form, request_form
from gateway.cache.semantic import partition_of, prompt_text

POLICY = SemanticPolicy(embeddings_model="e")


def mform(**fields: Any) -> dict[str, Any]:
    body = {"model": "claude", "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": "hello there"}], **fields}
    return messages_form(json.dumps(body).encode())


def test_messages_prompt_text() -> None:
    marked = [{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}]
    f = mform(messages=[{"role": "user", "content": marked}, {"role": "assistant", "content": "ok"},
                        {"role": "user", "content": "three"}])
    assert prompt_text(f, POLICY) == ("user: one\ntwo\nassistant: ok\nuser: three", None)
    call = [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]
    result = [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}]
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": call},
             {"role": "user", "content": result}]
    assert prompt_text(mform(messages=turns), POLICY) == (None, "tools")
    assert prompt_text(mform(tools=[{"name": "w", "input_schema": {}}]), POLICY) == (None, "tools")
    image = [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]
    assert prompt_text(mform(messages=[{"role": "user", "content": image}]), POLICY) == (None, "content")
    assert prompt_text(mform(temperature=1), POLICY) == (None, "temperature")


def test_messages_partitions() -> None:
    same = partition_of("t:a", "claude", POLICY, mform(system="s"), "anthropic_messages")
    marked = mform(system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}])
    unmarked = mform(system=[{"type": "text", "text": "s"}])
    assert partition_of("t:a", "claude", POLICY, marked, "anthropic_messages") == partition_of(
        "t:a", "claude", POLICY, unmarked, "anthropic_messages")
    assert same == partition_of("t:a", "claude", POLICY, mform(system="s", metadata={"user_id": "u"}),
                                "anthropic_messages")
    others = {
        partition_of("t:a", "claude", POLICY, mform(system="other"), "anthropic_messages"),
        partition_of("t:b", "claude", POLICY, mform(system="s"), "anthropic_messages"),
        partition_of("t:a", "claude", POLICY, mform(system="s"), "anthropic_messages",
                     header_part(b"a-beta", b"2023-06-01")),
        partition_of("t:a", "claude", POLICY, mform(system="s"), "openai_chat"),
    }
    assert same not in others and len(others) == 4
    # the very same body as OpenAI chat: another partition
    body = json.dumps({"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}]})
    assert partition_of("t:a", "claude", POLICY, request_form(body.encode())) != partition_of(
        "t:a", "claude", POLICY, messages_form(body.encode()), "anthropic_messages")
