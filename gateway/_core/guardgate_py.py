"""Pure-Python twin of ``gateway._core._guardgate``: the guardrails phase's fast path.

Theory of operation. Most guarded requests hold nothing any detector finds, and with only the gateway's
policies applying they all have the same guard (``gateway.guard.policy.Guard``). For them the phase's
whole work is two passes of the prefilter (``gateway._core.scan``): over the prompt's raw bytes on the
way in, over the answer's on the way out. A ``Gate`` is that work alone, built once per phase; the
phase (``gateway.guard.phase.GuardPhase``) uses its two methods as its own ``on_request`` and
``on_response``, and the gate hands anything else back to the phase:

    method       | answers itself                              | hands to the phase
    -------------+---------------------------------------------+-----------------------------------------
    on_request   | not a chat request (None); a prompt with no | ``check(ctx, guard, messages, mask)``: a
                 | trigger and a ``plain`` guard: None, the    | trigger, or a guard with more to check
                 | guard kept on the request for the answer    | (shape, injection, counting, webhooks)
    on_response  | no state (the body); the guard alone and no | ``respond(ctx, body)``: a trigger, or a
                 | trigger in the answer (the body, unchanged) | request that carries more (a masker)

The compiled gate calls the compiled prefilter at C level; this twin calls whatever ``scan`` it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Gate"]


class Gate:
    """See the module docstring. ``prompt``/``answer``: the prefilters of the guard's sides (None: the
    side checks nothing); ``plain``: a prompt without a trigger needs nothing more; ``answer_always``: an
    answer is checked whatever its triggers."""

    __slots__ = ("_answer", "_answer_always", "_check", "_guard", "_plain", "_prompt", "_respond")

    def __init__(self, guard: Any, prompt: Any, answer: Any, plain: bool, answer_always: bool,
                 check: Callable[..., Any], respond: Callable[[Any, bytes], bytes]) -> None:
        self._guard = guard
        self._prompt = prompt
        self._answer = answer
        self._plain = plain
        self._answer_always = answer_always
        self._check = check
        self._respond = respond

    def on_request(self, ctx: Any) -> Any:
        messages = getattr(ctx.fields, "messages", None)
        if messages is None:  # not a chat request: nothing to guard here
            return None
        mask = self._prompt.scan(ctx.body) if self._prompt is not None else 0
        if not mask and self._plain:
            if self._answer is not None:
                ctx.guard = self._guard
            return None
        return self._check(ctx, self._guard, messages, mask)

    def on_response(self, ctx: Any, body: bytes) -> bytes:
        state = ctx.guard
        if state is None:
            return body
        if (state is self._guard and self._answer is not None and not self._answer_always
                and not self._answer.scan(body)):
            return body
        return self._respond(ctx, body)
