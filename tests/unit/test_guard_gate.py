"""The guardrails phase's compiled fast path (``Gate``) against its twin: the same answers, the same
hand-offs to the phase, for prompts and answers with and without triggers."""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import pytest

from bench.guard_inproc import _PII, _TEXT, GUARD
from gateway._core import guardgate_py, scan_py
from gateway.guard.config import GuardPolicy
from gateway.guard.policy import Guard
from gateway.guard.triggers import prefilter_args

try:
    from gateway._core import _guardgate as compiled_gate
    from gateway._core import _scan as compiled_scan
except ImportError:  # pragma: no cover - a build without extensions
    compiled_gate = None  # type: ignore[assignment]


class _Fields:
    def __init__(self, messages: Any) -> None:
        self.messages = messages


class _Ctx:
    def __init__(self, body: bytes, messages: Any = ()) -> None:
        self.fields = _Fields(messages) if messages is not None else object()
        self.body = body
        self.guard: Any = None


def _gates() -> list[tuple[str, Any, Guard, list[tuple[Any, ...]]]]:
    guard = Guard([("typical", msgspec.convert(tomllib.loads(GUARD)["guardrails"]["policies"]["typical"],
                                               GuardPolicy))])
    out = []
    impls = [("twin", guardgate_py.Gate, scan_py.Prefilter)]
    if compiled_gate is not None:
        impls.append(("compiled", compiled_gate.Gate, compiled_scan.Prefilter))
    for name, gate_cls, prefilter_cls in impls:
        sides = []
        for sc in (guard.in_scanner, guard.out_scanner):
            assert sc is not None
            needles, config, _ = prefilter_args(sc._others, sc._digit_dets)
            sides.append(prefilter_cls(needles, **config))
        calls: list[tuple[Any, ...]] = []

        def check(ctx: Any, g: Any, messages: Any, mask: int, calls: list[tuple[Any, ...]] = calls) -> str:
            calls.append(("check", mask != 0))
            return "checked"

        def respond(ctx: Any, body: bytes, calls: list[tuple[Any, ...]] = calls) -> bytes:
            calls.append(("respond", body))
            return b"responded"

        out.append((name, gate_cls(guard, sides[0], sides[1], guard.plain, guard.out_always, check, respond),
                    guard, calls))
    return out


@pytest.mark.parametrize("text", [_TEXT, _PII, "write to bob@example.com", "nothing", "project phoenix"])
def test_gate_and_twin_agree(text: str) -> None:
    body = msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": text}]})
    answer = msgspec.json.encode({"choices": [{"message": {"content": text}}]})
    seen = []
    for _, gate, guard, calls in _gates():
        ctx = _Ctx(body)
        got = [gate.on_request(ctx), ctx.guard is guard]
        got.append(gate.on_response(ctx, answer))
        got.append(gate.on_request(_Ctx(body, messages=None)))  # not a chat request
        got.append(gate.on_response(_Ctx(body), answer))  # a request with no state: the answer as it came
        seen.append((got, list(calls)))
    assert all(s == seen[0] for s in seen), seen
    got, calls = seen[0]
    if text in (_TEXT, "nothing"):  # no trigger: the gate answered both ways itself
        assert got[:3] == [None, True, answer] and calls == []
    else:
        assert got[0] == "checked" and calls[0] == ("check", True)
