"""Mixed functional load for the gateway with locust: the traffic of a real deployment, not a benchmark.

    pip install locust                     # not a dependency of the project
    gateway serve &                        # the embedded config: mock-1, mock-embed-1, no keys required
    locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 200 -r 20 -t 5m

Each simulated user is a client application that mostly chats (non-streamed and streamed), sometimes
embeds, and sometimes gets it wrong: a wrong API key, a model that does not exist. Every answer is
checked (status, shape, a stream that ends with ``[DONE]``), so a failure in locust's table is a wrong
answer, not only a slow one. The numbers to watch are the failure counts and the percentiles per name;
locust is closed-loop and Python, so its throughput says little about the gateway's ceiling (that is
``python -m bench.run``).

Request sizes follow a mix seen in chat applications: most prompts are a few hundred bytes, some carry a
document of several kilobytes, a few are long (32-64 KB); conversations have a system prompt and
earlier turns; ``max_tokens`` varies. Embedding requests carry 1 to 16 inputs.

Environment:

* ``GATEWAY_API_KEY``: the key to send (default none). When set, the gateway is taken to require keys,
  and a wrong key must get 401.
* ``GATEWAY_CHAT_MODEL`` (default ``mock-1``), ``GATEWAY_EMBED_MODEL`` (default ``mock-embed-1``).
* ``GATEWAY_MOCK_LATENCY_MS`` (default 0): sent as ``x-mock: latency_ms=N``, so that a mock upstream
  answers like a slow model.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import HttpUser, between, task

API_KEY = os.environ.get("GATEWAY_API_KEY", "")
CHAT_MODEL = os.environ.get("GATEWAY_CHAT_MODEL", "mock-1")
EMBED_MODEL = os.environ.get("GATEWAY_EMBED_MODEL", "mock-embed-1")
MOCK_LATENCY_MS = int(os.environ.get("GATEWAY_MOCK_LATENCY_MS", "0"))
#: a well-formed key that no gateway has issued
WRONG_KEY = "gw-aaaaaaaaaaaa-" + "x" * 43

_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
          "have an they you were her she there been one all we their has would when if so no what up out "
          "about who model request token stream latency gateway budget limit cache route provider").split()

#: (prompt bytes low, high, weight): short questions, pasted documents, long contexts
PROMPT_SIZES = ((50, 500, 60), (1_000, 4_000, 25), (4_000, 16_000, 10), (32_000, 64_000, 5))
#: (earlier turns, weight)
HISTORY = ((0, 50), (2, 30), (6, 15), (12, 5))
MAX_TOKENS = (None, 16, 64, 256, 1024)


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:size]


def _weighted(rng: random.Random, table: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(table, weights=[row[-1] for row in table])[0]


def chat_request(rng: random.Random, *, stream: bool = False, model: str = CHAT_MODEL) -> dict[str, Any]:
    """A chat completion request of the size mix above."""
    lo, hi, _ = _weighted(rng, PROMPT_SIZES)
    (turns, _) = _weighted(rng, HISTORY)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant. " +
                                       _text(rng, rng.randint(50, 400))}]
    for i in range(turns):
        role = "user" if i % 2 == 0 else "assistant"
        messages.append({"role": role, "content": _text(rng, rng.randint(20, 600))})
    messages.append({"role": "user", "content": _text(rng, rng.randint(lo, hi))})
    body: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = rng.choice(MAX_TOKENS)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return body


class GatewayUser(HttpUser):
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.headers = {"Content-Type": "application/json"}
        if API_KEY:
            self.headers["Authorization"] = f"Bearer {API_KEY}"
        if MOCK_LATENCY_MS:
            self.headers["x-mock"] = f"latency_ms={MOCK_LATENCY_MS}"

    @task(50)
    def chat(self) -> None:
        body = chat_request(self.rng)
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              name="chat", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            try:
                resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                resp.failure("not a chat completion")

    @task(25)
    def chat_stream(self) -> None:
        body = chat_request(self.rng, stream=True)
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              name="chat (stream)", stream=True, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
                return
            events = 0
            last = b""
            for line in resp.iter_lines():
                if line.startswith(b"data: "):
                    events += 1
                    last = line
                    if line != b"data: [DONE]":
                        try:
                            chunk = json.loads(line[6:])
                        except ValueError:
                            resp.failure("an event that is not JSON")
                            return
                        if "error" in chunk:
                            resp.failure(f"error event: {chunk['error']}")
                            return
            if last != b"data: [DONE]" or events < 2:
                resp.failure(f"stream of {events} events without [DONE]")

    @task(12)
    def embeddings(self) -> None:
        n = self.rng.choice((1, 1, 1, 4, 16))
        inputs = [_text(self.rng, self.rng.randint(50, 500)) for _ in range(n)]
        body = {"model": EMBED_MODEL, "input": inputs[0] if n == 1 else inputs}
        with self.client.post("/v1/embeddings", data=json.dumps(body), headers=self.headers,
                              name="embeddings", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            try:
                data = resp.json()["data"]
            except (ValueError, KeyError, TypeError):
                resp.failure("not an embedding list")
                return
            if len(data) != n:
                resp.failure(f"{len(data)} embeddings for {n} inputs")

    @task(5)
    def models(self) -> None:
        with self.client.get("/v1/models", headers=self.headers, name="models", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")

    @task(5)
    def wrong_key(self) -> None:
        headers = dict(self.headers, Authorization=f"Bearer {WRONG_KEY}")
        body = chat_request(self.rng)
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=headers,
                              name="wrong key (401)", catch_response=True) as resp:
            # a gateway that requires no keys ignores the header and answers
            expected = (401,) if API_KEY else (200, 401)
            if resp.status_code not in expected:
                resp.failure(f"status {resp.status_code}, expected {expected}")
            else:
                resp.success()

    @task(3)
    def unknown_model(self) -> None:
        body = chat_request(self.rng, model="no-such-model")
        with self.client.post("/v1/chat/completions", data=json.dumps(body), headers=self.headers,
                              name="unknown model (404)", catch_response=True) as resp:
            if resp.status_code != 404:
                resp.failure(f"status {resp.status_code}, expected 404")
                return
            try:
                code = resp.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                resp.failure("not an OpenAI-shaped error")
                return
            if code != "model_not_found":
                resp.failure(f"error code {code!r}")
            else:
                resp.success()
