"""CPU of the OpenAI ⇄ Gemini translation alone, per request, in process (no sockets, no engine), and what
a Vertex AI bearer token costs a request.

    python -m bench.translate_gemini        # non-stream request + answer, a 20-chunk stream, the send path

What it times is what ``GeminiTranslator`` adds to a request over the pass-through path: building the
``generateContent`` request from the OpenAI body (``request_body``), turning the answer into a
``chat.completion`` (``take_body``), relaying a stream of 20 text chunks (``stream_relay``), and the send
path with an API key (a header prebuilt in the request head) against Vertex's refreshed bearer token (the
same head, after one identity check that the token did not change; the refresh itself runs in a
background task and never on a request).
"""

from __future__ import annotations

import argparse
import json
import timeit
from typing import Any

from gateway.providers.gemini import GeminiTranslator
from gateway.providers.google_auth import TokenSource

BODY = b'{"model":"gemini","messages":[{"role":"user","content":"hello there"}]}'
ANSWER = json.dumps({
    "candidates": [{"content": {"role": "model", "parts": [
        {"text": "Lorem ipsum dolor sit amet consectetur adipiscing elit sed do"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 12, "totalTokenCount": 22},
    "modelVersion": "gemini-2.5-flash", "responseId": "r1",
}).encode()


class _Ctx:
    endpoint = "chat"
    stream = False
    include_usage = False
    usage: Any = None
    body = BODY
    fields = None
    #: the client's dialect (None: OpenAI chat), as the engine's context carries it
    dialect: Any = None
    request_id = "bench"


class _NullTransport:
    """Returns nothing; the send path up to the transport is what is timed."""

    def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        return None

    async def close(self) -> None:
        pass


class _Token:
    """Credentials that already hold a token (as after the background refresh)."""

    token = "ya29.bench"
    expiry = None


def _stream(chunks: int) -> list[bytes]:
    def chunk(text: str, last: bool) -> bytes:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if last:
            cand["finishReason"] = "STOP"
        data = {"candidates": [cand], "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": chunks,
                                                        "totalTokenCount": 9 + chunks},
                "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\r\n\r\n"

    return [chunk("word ", i == chunks - 1) for i in range(chunks)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", "-n", type=int, default=20000)
    parser.add_argument("--chunks", type=int, default=20)
    args = parser.parse_args(argv)
    transport = _NullTransport()
    provider = GeminiTranslator("g", transport, "/v1beta", [("x-goog-api-key", "k")])
    keyed = provider.for_model("gemini-2.5-flash")
    source = TokenSource(_Token())
    source.header = "Bearer ya29.bench"
    vertex = GeminiTranslator("v", transport, "/v1", [], auth=source,
                              vertex=("p", "us-central1")).for_model("gemini-2.5-flash")
    ctx = _Ctx()
    chunks = _stream(args.chunks)

    def stream() -> None:
        relay = keyed.stream_relay(ctx)
        for c in chunks:
            relay.feed(c)
        relay.end()

    n = args.number
    req = min(timeit.repeat(lambda: keyed.request_body(ctx, "gemini-2.5-flash", False), number=n, repeat=5))
    ans = min(timeit.repeat(lambda: keyed.take_body(ctx, ANSWER), number=n, repeat=5))
    m = max(1, n // 20)
    st = min(timeit.repeat(stream, number=m, repeat=5)) / m * 1e6
    body = keyed.request_body(ctx, "gemini-2.5-flash", False)
    vertex.send("chat", body, "warm")  # the first send builds the heads with the token
    key_send = min(timeit.repeat(lambda: keyed.send("chat", body, "r1"), number=n * 5, repeat=5))
    tok_send = min(timeit.repeat(lambda: vertex.send("chat", body, "r1"), number=n * 5, repeat=5))
    print(f"request OpenAI -> Gemini:   {req / n * 1e6:.2f} us")
    print(f"answer Gemini -> OpenAI:    {ans / n * 1e6:.2f} us")
    print(f"stream of {args.chunks} chunks:        {st:.2f} us ({st / len(chunks):.2f} us per chunk)")
    print(f"send, API key header:       {key_send / (n * 5) * 1e6:.3f} us")
    print(f"send, Vertex bearer token:  {tok_send / (n * 5) * 1e6:.3f} us (refreshes on requests: 0)")


if __name__ == "__main__":
    main()
