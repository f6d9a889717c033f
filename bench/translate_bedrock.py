"""CPU of the OpenAI ⇄ Bedrock translation and of SigV4 signing, per request, in process.

    python -m bench.translate_bedrock        # request, answer, a 20-delta ConverseStream, signing

What it times is what ``BedrockTranslator`` adds to a request over the pass-through path: the Converse
request from the OpenAI body (``request_body``), the ``chat.completion`` from the Converse answer
(``take_body``), a ConverseStream of 20 text deltas in AWS's binary framing through the compiled
event-stream decoder (``stream_relay``), and the signature of one request (``SigV4Signer.headers``:
botocore's ``SigV4Auth`` with the frozen credentials; the whole per-request cost of the credentials,
since refreshing them runs in a task off the request path) compared with formatting the same headers
into the prebuilt head.
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from botocore.credentials import Credentials

from gateway.config.schema import MockConfig
from gateway.providers.aws import AwsCredentials, SigV4Signer
from gateway.providers.bedrock import BedrockTranslator
from gateway.providers.mock import MockTransport
from gateway.providers.mock_bedrock import event_message

BODY = b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}'
ANSWER = json.dumps({
    "output": {"message": {"role": "assistant", "content": [
        {"text": "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do"}]}},
    "stopReason": "end_turn", "usage": {"inputTokens": 10, "outputTokens": 12, "totalTokens": 22},
    "metrics": {"latencyMs": 100},
}).encode()
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
PATH = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


class _Fields:
    model = "claude"


class _Ctx:
    endpoint = "chat"
    stream = False
    include_usage = False
    usage: Any = None
    body = BODY
    fields = _Fields()
    request_id = "req-1"
    dialect: Any = None  # OpenAI chat


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return event_message(headers, json.dumps(payload).encode())


def _stream(deltas: int) -> list[bytes]:
    out = [_event("messageStart", {"role": "assistant"})]
    out += [_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "word "}})
            for _ in range(deltas)]
    usage = {"inputTokens": 9, "outputTokens": deltas, "totalTokens": 9 + deltas}
    out += [_event("contentBlockStop", {"contentBlockIndex": 0}),
            _event("messageStop", {"stopReason": "end_turn"}),
            _event("metadata", {"usage": usage, "metrics": {"latencyMs": 10}})]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", "-n", type=int, default=20000)
    parser.add_argument("--deltas", type=int, default=20)
    args = parser.parse_args(argv)
    creds = AwsCredentials(Credentials("AKIDEXAMPLE", "secret", "session-token"))
    t = BedrockTranslator("b", MockTransport(MockConfig()), "", "us-east-1", creds, None, {})
    signer = SigV4Signer(creds, "us-east-1", "https://bedrock-runtime.us-east-1.amazonaws.com",
                         "bedrock-runtime.us-east-1.amazonaws.com")
    ctx = _Ctx()
    chunks = _stream(args.deltas)
    body = t.request_body(ctx, MODEL, False)

    def stream() -> None:
        relay = t.stream_relay(ctx)
        for c in chunks:
            relay.feed(c)
        relay.end()

    def headers_only() -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in (("authorization", "x" * 180), ("x-amz-date", "x" * 16)))\
            .encode("latin-1")

    n = args.number
    req = min(timeit.repeat(lambda: t.request_body(ctx, MODEL, False), number=n, repeat=5)) / n * 1e6
    ans = min(timeit.repeat(lambda: t.take_body(ctx, ANSWER), number=n, repeat=5)) / n * 1e6
    m = max(1, n // 20)
    st = min(timeit.repeat(stream, number=m, repeat=5)) / m * 1e6
    sign = min(timeit.repeat(lambda: signer.headers(PATH, body), number=m, repeat=5)) / m * 1e6
    fmt = min(timeit.repeat(headers_only, number=n, repeat=5)) / n * 1e6
    print(f"request OpenAI -> Converse:  {req:.2f} us")
    print(f"answer Converse -> OpenAI:   {ans:.2f} us")
    print(f"stream of {args.deltas} deltas:         {st:.2f} us ({st / len(chunks):.2f} us per event)")
    print(f"SigV4 signature per request: {sign:.2f} us (of which formatting its two headers {fmt:.2f} us)")


if __name__ == "__main__":
    main()
