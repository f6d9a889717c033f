"""The phase chain's way out: ``on_response`` sees (and may change) a complete answer before it is sent,
``on_stream`` observers see (and may change) the client-bound stream, in reverse chain order; a chain
without them holds none."""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

from recorder import Recorder
from test_engine import CHAT, CONFIG, make, run

from gateway._core.http import Request
from gateway.cache.phase import answer_changed
from gateway.config import load_config_text
from gateway.context import Context
from gateway.engine import Engine
from gateway.phases import Phase, StreamObserver


class Upper(StreamObserver):
    __slots__ = ("ended", "seen")

    def __init__(self) -> None:
        self.seen = b""
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        self.seen += data
        return data.replace(b'"content":"', b'"content":">')

    def end(self) -> bytes:
        self.ended = True
        return b""


class Guard(Phase):
    """An output guardrail: marks the answer's text, whole or streamed, and remembers what it saw."""

    name: ClassVar[str] = "guard_in"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.observers: list[Upper] = []
        self.order: list[str] = []

    def on_response(self, ctx: Context, body: bytes) -> bytes:
        self.bodies.append(body)
        self.order.append(self.name)
        doc = json.loads(body)
        doc["choices"][0]["message"]["content"] = "[checked] " + doc["choices"][0]["message"]["content"]
        return json.dumps(doc).encode()

    def on_stream(self, ctx: Context) -> StreamObserver | None:
        o = Upper()
        self.observers.append(o)
        return o


class Later(Guard):
    name: ClassVar[str] = "cache"


def test_on_response_changes_the_answer_sent() -> None:
    guard = Guard()
    rec = run(make([guard]), "POST", "/v1/chat/completions", CHAT)
    assert rec.status == 200
    assert rec.json()["choices"][0]["message"]["content"].startswith("[checked] ")
    assert len(guard.bodies) == 1 and b"[checked]" not in guard.bodies[0]


def test_the_way_out_runs_in_reverse_chain_order() -> None:
    first, second = Guard(), Later()
    order: list[str] = []
    first.order = second.order = order
    rec = run(make([first, second]), "POST", "/v1/chat/completions", CHAT)
    assert order == ["cache", "guard_in"]  # the later phase sees the answer first
    assert rec.json()["choices"][0]["message"]["content"].startswith("[checked] [checked] ")


def test_a_stream_observer_sees_and_changes_the_client_bound_stream() -> None:
    guard = Guard()
    rec = run(make([guard]), "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    assert rec.status == 200 and rec.finished
    assert len(guard.observers) == 1 and guard.observers[0].ended
    seen = guard.observers[0].seen
    assert seen.endswith(b"data: [DONE]\n\n")
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in rec.events()[:-1]]
    assert any(c and c.startswith(">") for c in contents)


def test_a_chain_without_hooks_holds_none() -> None:
    engine = make([])
    run(engine, "POST", "/v1/chat/completions", CHAT)
    runtime = engine.runtime
    assert runtime is not None
    assert runtime.response_chain == () and runtime.stream_chain == ()


def test_an_answer_a_guard_changed_is_not_cached() -> None:
    class Redact(Guard):
        def on_response(self, ctx: Context, body: bytes) -> bytes:
            answer_changed(ctx)
            return super().on_response(ctx, body)

    async def go() -> list[str | None]:
        engine = Engine(load_config_text(CONFIG + "\n[cache]\nenabled = true\n"), phases=[Redact()])
        await engine.startup()
        seen = []
        for _ in range(2):
            rec = Recorder()
            req = Request("POST", "/v1/chat/completions", "", 11,
                          [(b"host", b"t"), (b"content-type", b"application/json")], json.dumps(CHAT).encode(),
                          True)
            await engine.handle(req, rec)
            await asyncio.sleep(0)
            seen.append(rec.header("x-gateway-cache"))
        await engine.shutdown()
        return seen

    assert asyncio.run(go()) == ["miss", "miss"]
