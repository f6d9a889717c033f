"""CPU of the OpenAI ⇄ Anthropic translation alone, per request, in process (no sockets, no engine).

    python -m bench.translate               # non-stream request + answer, and a 20-event stream

What it times is what ``AnthropicTranslator`` adds to a request over the pass-through path: building the
Messages API request from the OpenAI body (``request_body``), turning the ``message`` into a
``chat.completion`` (``take_body``), and relaying a stream of 20 text deltas (``stream_relay``).
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from gateway.config.schema import MockConfig
from gateway.providers.anthropic import AnthropicTranslator
from gateway.providers.mock import MockTransport

BODY = b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}'
MESSAGE = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "text", "text": "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do"}],
    "stop_reason": "end_turn", "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 12},
}).encode()


class _Ctx:
    endpoint = "chat"
    stream = False
    include_usage = False
    usage: Any = None
    body = BODY
    fields = None


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", "-n", type=int, default=20000)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args(argv)
    t = AnthropicTranslator("a", MockTransport(MockConfig()), "/v1", "k", {})
    ctx = _Ctx()
    chunks = _stream(args.deltas)

    def stream() -> None:
        relay = t.stream_relay(ctx)
        for c in chunks:
            relay.feed(c)
        relay.end()

    n = args.number
    req = min(timeit.repeat(lambda: t.request_body(ctx, "claude", False), number=n, repeat=5)) / n * 1e6
    ans = min(timeit.repeat(lambda: t.take_body(ctx, MESSAGE), number=n, repeat=5)) / n * 1e6
    m = max(1, n // 20)
    st = min(timeit.repeat(stream, number=m, repeat=5)) / m * 1e6
    print(f"request OpenAI -> Anthropic: {req:.2f} us")
    print(f"answer Anthropic -> OpenAI:  {ans:.2f} us")
    print(f"stream of {args.deltas} deltas:        {st:.2f} us ({st / (len(chunks)):.2f} us per event)")


if __name__ == "__main__":
    main()
