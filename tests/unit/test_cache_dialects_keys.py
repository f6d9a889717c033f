"""Cache keys of the Anthropic Messages and OpenAI Responses dialects: the same request written
differently (key order, number forms, the fields and marks that do not change the answer) gives the
same key; any answer-changing field changed gives another; the headers and the resolved conversation
are part of it; and no two dialects share a key."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from test_cache_keys import PROPS, _json, _shuffled, _write

from gateway import ir
from gateway.cache.keys import (
    MESSAGES_IGNORED,
    RESPONSES_IGNORED,
    KeyParts,
    cache_key,
    canonical,
    header_part,
    messages_form,
    request_form,
    responses_form,
)

MSG = KeyParts("t:alpha", "anthropic_messages", "messages", "claude")
RESP = KeyParts("t:alpha", "openai_responses", "responses", "gpt")

_text = st.text(max_size=12)
_mark = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
_block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, _text),
    st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
              st.text(min_size=1, max_size=6), st.text(min_size=1, max_size=6),
              st.dictionaries(st.text(max_size=4), _json, max_size=3)),
    st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c},
              st.text(min_size=1, max_size=6), st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text),
                                                        max_size=2)),
)
_message = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant"]),
                     st.one_of(_text, st.lists(_block, min_size=1, max_size=3)))
_tool = st.builds(lambda n, s: {"name": n, "input_schema": s}, st.text(min_size=1, max_size=6),
                  st.dictionaries(st.text(max_size=4), _json, max_size=3))
_messages_requests = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=6), "max_tokens": st.integers(1, 4096),
     "messages": st.lists(_message, min_size=1, max_size=3)},
    optional={"system": st.one_of(_text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, _text),
                                                    min_size=1, max_size=2)),
              "tools": st.lists(_tool, max_size=2), "temperature": st.floats(0, 1),
              "stop_sequences": st.lists(_text, max_size=2), "top_k": st.integers(1, 50),
              "thinking": st.builds(lambda b: {"type": "enabled", "budget_tokens": b}, st.integers(1024, 4096))},
)


def _mark_blocks(req: dict[str, Any], draw: Any) -> dict[str, Any]:
    """The same request with ``cache_control`` marks put on (or taken off) its blocks and tools."""
    def marked(block: Any) -> Any:
        if not isinstance(block, dict):
            return block
        out = {k: v for k, v in block.items() if k != "cache_control"}
        if out.get("type") == "tool_result" and isinstance(out.get("content"), list):
            out["content"] = [marked(b) for b in out["content"]]
        mark = draw(_mark)
        if mark is not None:
            out["cache_control"] = mark
        return out

    out = dict(req)
    if isinstance(out.get("system"), list):
        out["system"] = [marked(b) for b in out["system"]]
    if "tools" in out:
        out["tools"] = [marked(t) for t in out["tools"]]
    out["messages"] = [{**m, "content": [marked(b) for b in m["content"]]} if isinstance(m["content"], list)
                       else m for m in out["messages"]]
    return out


def _key(req: dict[str, Any] | bytes, headers: bytes = header_part(None, b"2023-06-01")) -> bytes:
    body = req if isinstance(req, bytes) else json.dumps(req).encode()
    return cache_key(MSG, messages_form(body), headers)


@PROPS
@given(req=_messages_requests, data=st.data())
def test_messages_written_differently_and_marked_have_the_same_key(req: dict[str, Any], data: Any) -> None:
    other = _mark_blocks(_shuffled(req, data.draw), data.draw)
    if data.draw(st.booleans()):
        other["stream"] = data.draw(st.booleans())
    if data.draw(st.booleans()):
        other["metadata"] = {"user_id": data.draw(_text)}
    assert _key(req) == _key(_write(other, data.draw).encode())


@PROPS
@given(req=_messages_requests, data=st.data())
def test_messages_any_relevant_field_changed_gives_another_key(req: dict[str, Any], data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(set(req) - set(MESSAGES_IGNORED))))
    new = data.draw(_json)
    if canonical(json.dumps({"v": new}).encode()) == canonical(json.dumps({"v": req[name]}).encode()):
        return
    assert _key(req) != _key({**req, name: new})


@PROPS
@given(req=_messages_requests, data=st.data())
def test_messages_a_changed_block_gives_another_key(req: dict[str, Any], data: Any) -> None:
    i = data.draw(st.integers(0, len(req["messages"]) - 1))
    m = req["messages"][i]
    new = data.draw(st.one_of(_text, st.lists(_block, min_size=1, max_size=3)))
    changed = {**req, "messages": [*req["messages"][:i], {**m, "content": new}, *req["messages"][i + 1:]]}
    if messages_form(json.dumps(changed).encode()) == messages_form(json.dumps(req).encode()):
        return
    assert _key(req) != _key(changed)


def test_cache_control_stays_where_it_is_data() -> None:
    """Only a block's or a tool's mark is left out: a property of that name in a tool's schema or in a
    tool call's input is the request's data."""
    schema = {"name": "t", "input_schema": {"type": "object", "properties": {"cache_control": {}}}}
    plain = {"name": "t", "input_schema": {"type": "object", "properties": {}}}
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert _key({**base, "tools": [schema]}) != _key({**base, "tools": [plain]})
    call = [{"type": "tool_use", "id": "a", "name": "t", "input": {"cache_control": 1}}]
    bare = [{"type": "tool_use", "id": "a", "name": "t", "input": {}}]
    msgs = [{"role": "user", "content": "hi"}]
    assert _key({**base, "messages": [*msgs, {"role": "assistant", "content": call}]}) != _key(
        {**base, "messages": [*msgs, {"role": "assistant", "content": bare}]})


def test_messages_headers_are_part_of_the_key() -> None:
    req = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    v = b"2023-06-01"
    assert _key(req, header_part(b"a,b", v)) == _key(req, header_part(b"a,b", v))
    assert len({
        _key(req, header_part(None, v)),
        _key(req, header_part(b"a", v)),
        _key(req, header_part(b"a,b", v)),
        _key(req, header_part(None, None)),
        _key(req, header_part(b"2023-06-01", None)),  # a value cannot pass for another header's
        _key(req, b""),
    }) == 6


def test_messages_and_chat_never_share_a_key() -> None:
    body = b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    chat = cache_key(KeyParts("t:alpha", "openai_chat", "chat", "m"), request_form(body))
    assert chat != cache_key(KeyParts("t:alpha", "anthropic_messages", "messages", "m"), messages_form(body))
    assert chat != cache_key(KeyParts("t:alpha", "openai_responses", "responses", "m"), responses_form(body, None))


# -- OpenAI Responses --------------------------------------------------------------------------------

_items = st.lists(st.one_of(
    st.builds(lambda r, t: {"type": "message", "role": r, "content": t},
              st.sampled_from(["user", "assistant", "developer"]), _text),
    st.builds(lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": a},
              st.text(min_size=1, max_size=5), st.text(min_size=1, max_size=5), _text),
    st.builds(lambda c, o: {"type": "function_call_output", "call_id": c, "output": o},
              st.text(min_size=1, max_size=5), _text),
), min_size=1, max_size=4)
_responses_requests = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=6), "input": st.one_of(_text, _items)},
    optional={"instructions": _text, "temperature": st.floats(0, 2), "max_output_tokens": st.integers(1, 999),
              "tools": st.lists(st.builds(lambda n: {"type": "function", "name": n}, st.text(min_size=1,
                                                                                            max_size=5)),
                                max_size=2),
              "text": st.just({"format": {"type": "json_object"}})},
)
_conversation = st.lists(st.builds(lambda r, t: ir.Message(r, [ir.TextPart(t)]),
                                   st.sampled_from(["user", "assistant"]), _text), min_size=1, max_size=3)


def _rkey(req: dict[str, Any] | bytes, previous: list[ir.Message] | None = None) -> bytes:
    body = req if isinstance(req, bytes) else json.dumps(req).encode()
    return cache_key(RESP, responses_form(body, previous))


@PROPS
@given(req=_responses_requests, data=st.data())
def test_responses_written_differently_have_the_same_key(req: dict[str, Any], data: Any) -> None:
    other = _shuffled(req, data.draw)
    for name in data.draw(st.lists(st.sampled_from(RESPONSES_IGNORED), unique=True)):
        other[name] = data.draw(st.one_of(_text, st.booleans(), st.just({"k": "v"})))
    if isinstance(other["input"], list):  # item ids never change the answer
        other["input"] = [{**item, "id": data.draw(st.text(min_size=1, max_size=6))}
                          if data.draw(st.booleans()) else item for item in other["input"]]
    assert _rkey(req) == _rkey(_write(other, data.draw).encode())


@PROPS
@given(req=_responses_requests, data=st.data())
def test_responses_any_relevant_field_changed_gives_another_key(req: dict[str, Any], data: Any) -> None:
    name = data.draw(st.sampled_from(sorted(req)))
    new = data.draw(_json)
    if canonical(json.dumps({"v": new}).encode()) == canonical(json.dumps({"v": req[name]}).encode()):
        return
    assert _rkey(req) != _rkey({**req, name: new})


@PROPS
@given(req=_responses_requests, first=_conversation, second=_conversation,
       ids=st.tuples(st.text(min_size=1, max_size=8), st.text(min_size=1, max_size=8)))
def test_responses_keyed_on_the_resolved_conversation(req: dict[str, Any], first: list[ir.Message],
                                                      second: list[ir.Message], ids: tuple[str, str]) -> None:
    """Two previous responses holding the same conversation are one question; another conversation
    (under the same id or not) is another, and so is no previous response at all."""
    a, b = ({**req, "previous_response_id": i} for i in ids)
    assert _rkey(a, first) == _rkey(b, first)
    assert _rkey(a, first) != _rkey(req)
    if first != second:
        assert _rkey(a, first) != _rkey(a, second)
