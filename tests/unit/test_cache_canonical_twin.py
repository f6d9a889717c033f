"""The compiled canonical form of a request body (``gateway._core._canon``) against its twin, the
reference (``gateway._core.canon_py``): the same bytes, or the same refusal, for every body.

Bodies are generated as JSON values written in many ways (whitespace, escapes, number spellings, key
orders, repeated keys), and as raw bytes that are often not JSON at all. The cache's key is a hash of
these bytes, so any difference would split or merge cache entries.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway._core import canon, canon_py
from gateway.cache.keys import (
    IGNORED_FIELDS,
    MESSAGES_IGNORED,
    RESPONSES_IGNORED,
    KeyParts,
    cache_key,
    canonical,
    key_head,
    messages_canonical,
    messages_form,
    request_form,
)

try:
    from gateway._core import _canon
except ImportError:  # not built: the twin is all there is
    _canon = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_canon is None, reason="gateway._core._canon is not built")
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IGNORED_SETS = (IGNORED_FIELDS, MESSAGES_IGNORED, RESPONSES_IGNORED, ())


def _both(body: bytes, ignored: tuple[str, ...] = IGNORED_FIELDS) -> tuple[bytes | None, bytes | None]:
    assert _canon is not None
    return _canon.Canonicaliser(ignored).canonical(body), canon_py.Canonicaliser(ignored).canonical(body)


# -- numbers --------------------------------------------------------------------------------------

def _spellings(draw: st.DrawFn, x: float) -> str:
    """One of the ways a JSON writer may spell the double ``x``."""
    how = draw(st.sampled_from(["repr", "json", "e", "fixed", "padded", "upper"]))
    if how == "repr":
        return repr(x)
    if how == "json":
        return json.dumps(x)
    if how == "e":
        return f"{x:.{draw(st.integers(0, 17))}e}"
    if how == "fixed":
        return f"{x:.{draw(st.integers(0, 20))}f}"
    if how == "padded":
        text = repr(x)
        return text + ("0" * draw(st.integers(1, 5)) if "." in text and "e" not in text else "")
    return repr(x).upper()


@st.composite
def numbers(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["float", "int", "decimal", "small", "tiny"]))
    if kind == "int":
        return str(draw(st.integers(-(10**25), 10**25)))
    if kind == "decimal":  # digits and an exponent, as a person writes them
        sign = draw(st.sampled_from(["", "-"]))
        whole = str(draw(st.integers(0, 10**draw(st.integers(0, 18)))))
        frac = draw(st.text("0123456789", min_size=0, max_size=18))
        exp = draw(st.one_of(st.just(""), st.builds(
            lambda mark, sign, e: mark + sign + str(e),
            st.sampled_from(["e", "E"]), st.sampled_from(["", "+", "-"]), st.integers(0, 330))))
        return sign + whole + ("." + frac if frac else "") + exp
    if kind == "small":
        return _spellings(draw, draw(st.integers(-10**6, 10**6)) / draw(st.sampled_from([1, 2, 4, 10, 100, 1000])))
    if kind == "tiny":
        return _spellings(draw, draw(st.floats(min_value=1e-320, max_value=1e-290)))
    x = draw(st.floats(allow_nan=False, allow_infinity=False))
    return _spellings(draw, x)


# -- strings --------------------------------------------------------------------------------------

def _escape(draw: st.DrawFn, ch: str) -> str:
    """``ch`` written raw or escaped, as some JSON writer would."""
    cp = ord(ch)
    if ch in '"\\' or cp < 0x20:
        return json.dumps(ch)[1:-1] if draw(st.booleans()) else f"\\u{cp:04x}"
    how = draw(st.sampled_from(["raw", "raw", "u", "U"]))
    if how == "raw":
        return ch
    if ch == "/" and draw(st.booleans()):
        return "\\/"
    if cp >= 0x10000:
        hi, lo = struct.unpack(">HH", ch.encode("utf-16-be"))
        text = f"\\u{hi:04x}\\u{lo:04x}"
    else:
        text = f"\\u{cp:04x}"
    return text.upper().replace("\\U", "\\u") if how == "U" else text


@st.composite
def strings(draw: st.DrawFn) -> str:
    text = draw(st.text(st.characters(exclude_categories=("Cs",)), max_size=20))
    return '"' + "".join(_escape(draw, c) for c in text) + '"'


# -- values ---------------------------------------------------------------------------------------

KEYS = st.one_of(
    st.sampled_from(["model", "messages", "role", "content", "temperature", "user", "stream", "metadata",
                     "stream_options", "a", "b", "ab", "é", "z", "\U0001f600", "\ufb01", "A", ""]),
    st.text(max_size=6).filter(lambda k: not any(0xD800 <= ord(c) <= 0xDFFF for c in k)),
)


def _ws(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n  "]))


@st.composite
def values(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["num", "str", "lit", "arr", "obj"] if depth < 4 else ["num", "str", "lit"]))
    if kind == "num":
        return draw(numbers())
    if kind == "str":
        return draw(strings())
    if kind == "lit":
        return draw(st.sampled_from(["true", "false", "null"]))
    if kind == "arr":
        items = draw(st.lists(values(depth + 1), max_size=4))
        return "[" + _ws(draw) + ("," + _ws(draw)).join(items) + _ws(draw) + "]"
    return draw(objects(depth + 1))


@st.composite
def objects(draw: st.DrawFn, depth: int = 0) -> str:
    keys = draw(st.lists(KEYS, max_size=6))
    members = []
    for k in keys:
        key = json.dumps(k, ensure_ascii=False) if draw(st.integers(0, 9)) else json.dumps(k)
        members.append(_ws(draw) + key + _ws(draw) + ":" + _ws(draw) + draw(values(depth)) + _ws(draw))
    return "{" + ",".join(members) + _ws(draw) + "}"


# -- the properties -------------------------------------------------------------------------------

@needs_compiled
@SETTINGS
@given(objects(), st.sampled_from(IGNORED_SETS))
@example('{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}', IGNORED_FIELDS)
@example('{"a":1e-5,"b":1e-7,"c":0.1e1,"d":-0.0,"e":-0,"f":1.5e16,"g":9007199254740993.0}', ())
@example('{"a":"\\ud83d\\ude00\\u00e9\\/\\u0001\\b"}', ())
@example('{"b":1,"a":2,"b":3}', ())
@example('{"user":1,"us\\u0065r":2,"x":{"user":3}}', IGNORED_FIELDS)
def test_compiled_writes_what_the_twin_writes(text: str, ignored: tuple[str, ...]) -> None:
    compiled, twin = _both(text.encode(), ignored)
    assert twin is not None  # every generated object is JSON
    assert compiled == twin


@needs_compiled
@SETTINGS
@given(st.binary(max_size=64) | objects().map(lambda t: t.encode()).flatmap(
    lambda b: st.integers(0, len(b)).flatmap(lambda i: st.binary(max_size=3).map(lambda x: b[:i] + x + b[i:]))))
@example(b'{"a":"\xff"}')
@example(b'{"a":"\xed\xa0\x80"}')
@example(b'{"a":"\\ud800"}')
@example(b'{"a":1}x')
@example(b'{"a":01}')
@example(b'{"a":1.}')
@example(b'{"a":"\x01"}')
@example(b'[1,2]')
@example(b'')
def test_compiled_refuses_what_the_twin_refuses(body: bytes) -> None:
    """Bytes that are often not JSON (cut, spliced, invalid UTF-8): the same answer, None included."""
    compiled, twin = _both(body)
    assert compiled == twin


@needs_compiled
@SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_double_is_written_as_msgspec_writes_it(x: float) -> None:
    for text in (repr(x), f"{x:.15g}", f"{x:.17e}"):
        body = b'{"x":%s}' % text.encode()
        compiled, twin = _both(body)
        assert compiled == twin, text


def test_facade_canonical_is_the_keys_canonical_form() -> None:
    """``keys.canonical`` (the phase's key body) is the facade's, and equals the decoded form encoded."""
    body = b'{"model":"m","stream":true,"messages":[{"content":"x","role":"user"}],"temperature":0.70}'
    assert canonical(body) == canon_py.encode_canonical(request_form(body))
    assert canonical(body) == canon.Canonicaliser(IGNORED_FIELDS).canonical(body)


@needs_compiled
def test_large_bodies_and_deep_nesting() -> None:
    big = {"messages": [{"role": "user", "content": "x" * 3_000_000 + "é\n"}], "model": "m"}
    body = json.dumps(big).encode()
    assert _both(body)[0] == _both(body)[1]
    deep = b'{"a":' + b"[" * 300 + b"1" + b"]" * 300 + b"}"  # past the walk's depth: the twin's answer
    assert _both(deep)[0] == _both(deep)[1]


# -- the key's hash -------------------------------------------------------------------------------

@needs_compiled
@SETTINGS
@given(st.binary(max_size=300), st.binary(max_size=200), st.binary(max_size=400))
def test_compiled_blake2b_is_hashlibs(head: bytes, extra: bytes, canon: bytes) -> None:
    """The compiled BLAKE2b against hashlib's, on every length around its 128-byte block."""
    assert _canon is not None
    compiled = _canon.KeyHash(head, _canon.Canonicaliser(IGNORED_FIELDS))
    twin = canon_py.KeyHash(head, canon_py.Canonicaliser(IGNORED_FIELDS))
    assert compiled.digest(extra, canon) == twin.digest(extra, canon)
    assert compiled.digest(extra, canon) == hashlib.blake2b(head + extra + canon, digest_size=32).digest()


@needs_compiled
def test_compiled_blake2b_at_each_block_boundary() -> None:
    assert _canon is not None
    form = _canon.Canonicaliser(())
    for n in range(0, 520):
        data = bytes(range(256)) * 3
        head, rest = data[: n // 2], data[n // 2 : n]
        assert _canon.KeyHash(head, form).digest(b"", rest) == hashlib.blake2b(data[:n], digest_size=32).digest()


@needs_compiled
@SETTINGS
@given(objects(), st.binary(max_size=40))
def test_compiled_key_is_the_reference_key(text: str, extra: bytes) -> None:
    """``KeyHash.key`` (the phase's call) is ``keys.cache_key`` over the decoded form (the reference)."""
    assert _canon is not None
    parts = KeyParts("t:alpha", "openai_chat", "chat", "mock-1")
    head = key_head(parts)
    body = text.encode()
    compiled = _canon.KeyHash(head, _canon.Canonicaliser(IGNORED_FIELDS)).key(extra, body)
    assert compiled == cache_key(head, request_form(body), extra)
    assert compiled == canon_py.KeyHash(head, canon_py.Canonicaliser(IGNORED_FIELDS)).key(extra, body)


@needs_compiled
def test_usual_bodies_never_leave_the_compiled_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """What SDKs send (unsorted keys, escapes, non-ASCII, fractions, exponents, tools, ignored fields)
    is written by the walk itself: the twin is not called (the miss's cost depends on it)."""
    assert _canon is not None

    def refuse(body: bytes, ignored: object) -> None:
        raise AssertionError(f"fell back to the twin: {body!r}")

    monkeypatch.setattr(_canon, "_reference", refuse)
    bodies = [
        b'{"model":"mock-1","messages":[{"role":"user","content":"hello there"}]}',
        json.dumps({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "Be brief.\n\"Quote\" \\ tab\t"},
            {"role": "user", "content": "caf\u00e9 \U0001f600 \u2028"}],
            "temperature": 0.7, "top_p": 1.0, "max_tokens": 256, "seed": 42, "stream": True,
            "stream_options": {"include_usage": True}, "user": "u-1", "frequency_penalty": -0.5,
            "logit_bias": {"50256": -100}, "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": {"type": "object", "required": ["city"],
                                                       "properties": {"city": {"type": "string"}}}}}],
            "response_format": {"type": "json_object"}, "n": 1, "stop": ["\n\n"], "x": [1e-7, 2.5e10, 0.0001],
        }).encode(),
        json.dumps({"messages": [{"role": "user", "content": "\u00e9\u00e8"}], "model": "m"},
                   ensure_ascii=True, indent=2).encode(),
    ]
    keyhash = _canon.KeyHash(b"head", _canon.Canonicaliser(IGNORED_FIELDS))
    for body in bodies:
        assert _canon.Canonicaliser(IGNORED_FIELDS).canonical(body) == canon_py.canonical_json(body, IGNORED_FIELDS)
        assert keyhash.key(b"", body) is not None


# -- Anthropic Messages ---------------------------------------------------------------------------

MARK = '"cache_control":{"type":"ephemeral"}'


@st.composite
def messages_bodies(draw: st.DrawFn) -> str:
    """A Messages body whose blocks, tools and system are marked for Anthropic's prompt cache or not, with
    ``cache_control`` sometimes elsewhere (a tool's schema property, a string)."""
    def block(text: str) -> str:
        mark = "," + MARK if draw(st.booleans()) else ""
        return f'{{"type":"text","text":{json.dumps(text)}{mark}}}'

    texts = draw(st.lists(st.text(max_size=8), min_size=1, max_size=3))
    content = "[" + ",".join(block(t) for t in texts) + "]"
    system = draw(st.sampled_from(["", ',"system":"be brief"', ',"system":[' + block("sys") + "]"]))
    prop = draw(st.sampled_from(["city", "cache_control"]))
    tool_mark = "," + MARK if draw(st.booleans()) else ""
    tool = f'{{"name":"t","input_schema":{{"type":"object","properties":{{"{prop}":{{"type":"string"}}}}}}{tool_mark}}}'
    tools = draw(st.sampled_from(["", f',"tools":[{tool}]']))
    extra = draw(st.sampled_from(["", ',"stream":true', ',"metadata":{"user_id":"u"}', ',"x":"cache_control"']))
    tokens = draw(st.integers(1, 9))
    return f'{{"model":"claude","max_tokens":{tokens},"messages":[{{"role":"user","content":{content}}}]{system}{tools}{extra}}}'


@SETTINGS
@given(messages_bodies() | objects())
def test_messages_canonical_is_the_messages_form(text: str) -> None:
    """The compiled Messages key body equals ``messages_form`` encoded (the reference), marks or not."""
    body = text.encode()
    assert messages_canonical(body) == canon_py.encode_canonical(messages_form(body))
