"""CPU of the dialect translations alone, per request, in process (no sockets, no engine).

    python -m bench.translate               # non-stream request + answer, and a 20-event stream

(``python -m bench.proxy_vs_nginx --scenario translate`` prints the OpenAI -> Anthropic figures beside its
throughput.)

What it times is what a translator adds to a request over the pass-through path: building the upstream
request from the client's body (``request_body``), turning the answer into the client's (``take_body``),
and relaying a stream of 20 text deltas (``stream_relay``), for an OpenAI chat client on an Anthropic
upstream and for an Anthropic Messages client on an OpenAI-compatible one; and, for comparison, what
a Messages client's pass-through relay costs on an Anthropic upstream (bytes forwarded, usage read).
"""

from __future__ import annotations

import argparse
import json
import time
import timeit
from typing import Any

from gateway.config.schema import MockConfig
from gateway.context import Context
from gateway.dialects.anthropic_messages import ANTHROPIC_MESSAGES
from gateway.providers.anthropic import AnthropicTranslator
from gateway.providers.mock import MockTransport
from gateway.providers.openai import OpenAITranslator

BODY = b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}'
MESSAGE = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "text", "text": "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do"}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 12},
}).encode()


MESSAGES_BODY = b'{"model":"mock-1","max_tokens":256,"messages":[{"role":"user","content":"hello there"}]}'
COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mock-1",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
}).encode()


class _Request:
    def __init__(self, body: bytes) -> None:
        self.body = body


def _messages_context() -> Context:
    """A Messages client's request context (the compiled translators take only the real type)."""
    ctx = Context(_Request(MESSAGES_BODY), "bench", None, None)  # type: ignore[arg-type]
    ctx.endpoint = "messages"
    ctx.dialect = ANTHROPIC_MESSAGES
    return ctx


def _chat_context() -> Context:
    """An OpenAI chat client's request context, as the engine builds it (the compiled translators take
    only the real type)."""
    ctx = Context(_Request(BODY), "bench", None, None)  # type: ignore[arg-type]
    ctx.endpoint = "chat"
    return ctx


def _chunks(deltas: int) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        data: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            data = {**data, "choices": [], "usage": usage}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": "word "}) for _ in range(deltas)]
    out += [chunk({}, "stop"), chunk({}, usage={"prompt_tokens": 9, "completion_tokens": deltas}),
            b"data: [DONE]\n\n"]
    return out


def _per_call(fn: Any, n: int) -> float:
    return float(min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6)


def _relay_cost(translator: Any, ctx: Any, chunks: list[bytes], n: int) -> float:
    def stream() -> None:
        relay = translator.stream_relay(ctx)
        for c in chunks:
            relay.feed(c)
        relay.end()

    return _per_call(stream, n)


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def _stream(deltas: int) -> list[bytes]:
    start = {"id": "m", "type": "message", "role": "assistant", "model": "c", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}
    out = [_event({"type": "message_start", "message": start}),
           _event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})]
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "word "}}
    out += [_event(delta) for _ in range(deltas)]
    out += [_event({"type": "content_block_stop", "index": 0}),
            _event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": deltas}}),
            _event({"type": "message_stop"})]
    return out


def measure(number: int = 20000, deltas: int = 20) -> dict[str, float]:
    """Microseconds of CPU per call, best of 5: ``request`` (OpenAI -> Messages API body), ``answer``
    (``message`` -> ``chat.completion``), ``per_request`` (the two: a non-stream request's translation),
    ``stream`` (a stream of ``deltas`` text deltas) and ``per_event``."""
    t = AnthropicTranslator("a", MockTransport(MockConfig()), "/v1", "k", {})
    ctx = _chat_context()
    chunks = _stream(deltas)

    def stream() -> None:
        relay = t.stream_relay(ctx)
        for c in chunks:
            relay.feed(c)
        relay.end()

    def cpu(fn: Any, n: int) -> float:
        return min(timeit.repeat(fn, number=n, repeat=5, timer=time.process_time)) / n * 1e6

    n = number
    req = cpu(lambda: t.request_body(ctx, "claude", False), n)
    ans = cpu(lambda: t.take_body(ctx, MESSAGE), n)
    st = cpu(stream, max(1, n // 20))
    return {"request": req, "answer": ans, "per_request": req + ans, "stream": st,
            "per_event": st / len(chunks), "deltas": deltas}


def summary(r: dict[str, float]) -> str:
    return "\n".join((
        f"request OpenAI -> Anthropic: {r['request']:.2f} us",
        f"answer Anthropic -> OpenAI:  {r['answer']:.2f} us",
        f"translation per non-stream request: {r['per_request']:.2f} us CPU",
        f"stream of {r['deltas']:g} deltas:        {r['stream']:.2f} us ({r['per_event']:.2f} us per event)",
    ))


def messages_summary(n: int, deltas: int) -> str:
    """An Anthropic Messages client: translated to an OpenAI-compatible upstream, or passed through to an
    Anthropic one (bytes forwarded, usage read)."""
    t = AnthropicTranslator("a", MockTransport(MockConfig()), "/v1", "k", {})
    o = OpenAITranslator("o", MockTransport(MockConfig()), "/v1", "k", {})
    mctx = _messages_context()
    oai_chunks = _chunks(deltas)
    m = max(1, n // 20)
    req = _per_call(lambda: o.request_body(mctx, "mock-1", False), n)
    ans = _per_call(lambda: o.take_body(mctx, COMPLETION), n)
    st = _relay_cost(o, mctx, oai_chunks, m)
    chunks = _stream(deltas)
    pans = _per_call(lambda: t.take_body(mctx, MESSAGE), n)
    pst = _relay_cost(t, mctx, chunks, m)
    return "\n".join((
        f"request Messages -> OpenAI:  {req:.2f} us",
        f"answer OpenAI -> Messages:   {ans:.2f} us",
        f"stream of {deltas} deltas:        {st:.2f} us ({st / len(oai_chunks):.2f} us per event)",
        f"pass-through Messages answer (usage read): {pans:.2f} us",
        f"pass-through Messages stream of {deltas} deltas: {pst:.2f} us "
        f"({pst / len(chunks):.2f} us per event)",
    ))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", "-n", type=int, default=20000)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args(argv)
    print(summary(measure(args.number, args.deltas)))
    print(messages_summary(args.number, args.deltas))


if __name__ == "__main__":
    main()
