"""A phase that answers with a GatewayError it returns instead of raising (docs/architecture.md).

    python examples/phase_refusal.py

The engine answers with the returned error exactly as if it had been raised, and changes nothing in
it, so one instance answers every request: the same 429 twice, no exception raised.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway._core.http import Request
from gateway.config import load_config_text
from gateway.engine import Engine
from gateway.errors import RateLimited
from gateway.phases import Phase


class Closed(Phase):
    """Refuses every request with one shared 429: returned, not raised."""

    name = "admit"

    def __init__(self) -> None:
        self.error = RateLimited("Closed for maintenance.", headers=[("retry-after", "60")])

    def on_request(self, ctx: Any) -> RateLimited:
        return self.error


class Recorder:
    started = False
    keep_alive = True

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started = True
        print(status, dict(headers)["retry-after"], body.decode())

    def done(self) -> None:
        pass


async def main() -> None:
    config = load_config_text(
        '[log]\ncall_records = false\n[providers.mock]\ntype = "mock"\n[models.mock-1]\nprovider = "mock"\n'
    )
    engine = Engine(config, phases=[Closed()])
    await engine.startup()
    body = b'{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}'
    for _ in range(2):
        request = Request("POST", "/v1/chat/completions", "", 11, [(b"host", b"x")], body, True)
        engine.begin(request, Recorder())  # type: ignore[arg-type]  # send() is all an error answer uses
    await engine.shutdown()


asyncio.run(main())
