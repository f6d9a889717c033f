"""Types of the compiled fast path of the guardrails phase; the twin ``guardgate_py`` documents it."""

from collections.abc import Callable
from typing import Any

__all__ = ["Gate"]

class Gate:
    def __init__(self, guard: Any, prompt: Any, answer: Any, plain: bool, answer_always: bool,
                 check: Callable[..., Any], respond: Callable[[Any, bytes], bytes]) -> None: ...
    def on_request(self, ctx: Any) -> Any: ...
    def on_response(self, ctx: Any, body: bytes) -> bytes: ...
