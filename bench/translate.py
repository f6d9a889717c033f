"""CPU of the OpenAI ⇄ Anthropic translation alone, per request, in process (no sockets, no engine).

    python -m bench.translate               # non-stream request + answer, and a 20-event stream

(``python -m bench.proxy_vs_nginx --scenario translate`` prints these figures beside its throughput.)

What it times is what ``AnthropicTranslator`` adds to a request over the pass-through path: building the
Messages API request from the OpenAI body (``request_body``), turning the ``message`` into a
``chat.completion`` (``take_body``), and relaying a stream of 20 text deltas (``stream_relay``).
"""

from __future__ import annotations

import argparse
import json
import time
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


def measure(number: int = 20000, deltas: int = 20) -> dict[str, float]:
    """Microseconds of CPU per call, best of 5: ``request`` (OpenAI -> Messages API body), ``answer``
    (``message`` -> ``chat.completion``), ``per_request`` (the two: a non-stream request's translation),
    ``stream`` (a stream of ``deltas`` text deltas) and ``per_event``."""
    t = AnthropicTranslator("a", MockTransport(MockConfig()), "/v1", "k", {})
    ctx = _Ctx()
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", "-n", type=int, default=20000)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args(argv)
    print(summary(measure(args.number, args.deltas)))


if __name__ == "__main__":
    main()
