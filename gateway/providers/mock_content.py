"""What the mock LLM says, whatever the dialect: text, schema-valid JSON, tool calls, replies to results.

Theory of operation
-------------------
Each dialect (``mock.py`` for OpenAI and Azure, ``mock_anthropic.py``) decodes its own wire request into
the few facts this module acts on, asks ``decide`` for a ``Turn``, and renders that turn in its own wire
format (a message or a stream of events). The decision is a pure function of the request, so the same
request always gets the same answer, in every dialect:

=====================================================  =================================================
the request                                            the turn
=====================================================  =================================================
tools given, choice ``required``/``any``               tool calls: the cued tools (below), else the first
tools given, choice names a tool                       one call of that tool
tools given, choice ``auto`` (or absent), last user    tool calls: the cued tools
message has the cue ``!tool NAME [NAME...]``
the last message is a tool result                      text that names the tool and quotes the result
structured output (a JSON schema)                      a JSON object valid against the schema
JSON mode (no schema)                                  a small JSON object
anything else                                          lorem-ipsum words (``MockLLM``'s words)
=====================================================  =================================================

The cue: the token ``!tool`` anywhere in the last user message, followed by the names of the tools to
call (tokens that name a declared tool; the first token that does not ends the list). ``!tool`` alone
calls the first declared tool. Two or more names give parallel calls, in the order written, unless the
request disallows parallel calls (then only the first). Under ``tool_choice: none`` the cue is ignored,
and only a message from the *user* carries it, so a conversation does not loop on the same call after a
tool result.

Generated values (``value_for``) are drawn from a small deterministic generator seeded by a hash of the
conversation, so different prompts get different values and the same prompt the same ones. Supported
JSON Schema: ``type`` (one or a list), ``enum``, ``const``, ``properties``/``required`` (every declared
property is produced), ``additionalProperties``, ``items``/``prefixItems``, ``minItems``/``maxItems``,
``uniqueItems`` (scalars), ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``/
``multipleOf``, ``minLength``/``maxLength``, the formats ``date-time``, ``date``, ``time``, ``email``,
``uri``, ``uuid``, ``ipv4``, ``ipv6``, ``hostname``, ``duration``, ``$ref`` to ``#/...`` pointers
(``$defs``/``definitions``), ``anyOf``/``oneOf`` (the first branch that is not ``null``), ``allOf``
(merged), ``nullable``. Not supported (the value may not match): ``pattern``, ``not``,
``if``/``then``/``else``, ``dependentSchemas``, remote ``$ref``. Recursion stops at depth 12, where
only required properties and ``minItems`` elements are produced.

A value is bounded whatever the schema asks (a request must not hold the worker's loop or its memory):
at most ``MAX_VALUES`` values in all, nesting ``HARD_DEPTH`` deep (a required property that refers to its
own schema), ``MAX_COUNT`` items or properties from ``minItems``/``minProperties``, ``MAX_LENGTH``
characters from ``minLength``. Past a bound the value is cut short (and may then not match the schema).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "HARD_DEPTH",
    "MAX_COUNT",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_VALUES",
    "ToolCall",
    "ToolSpec",
    "Turn",
    "call_id",
    "decide",
    "json_fragments",
    "tool_cue",
    "tool_result_text",
    "value_for",
]

#: nesting depth past which generated values stop adding optional properties and items
MAX_DEPTH: Final = 12
#: nesting depth at which objects and arrays are generated empty, required properties or not
HARD_DEPTH: Final = 32
#: values generated for one schema at most; then objects and arrays come out empty
MAX_VALUES: Final = 5_000
#: the most items or properties ``minItems`` or ``minProperties`` get
MAX_COUNT: Final = 256
#: the longest string ``minLength`` gets
MAX_LENGTH: Final = 4096
#: longest quoted tool result in a reply
_RESULT_QUOTE: Final = 200

_WORDS: Final = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()

_CUE: Final = "!tool"


class ToolSpec(msgspec.Struct, frozen=True):
    """A declared tool: its name and the JSON schema of its arguments (None: any object)."""

    name: str
    parameters: dict[str, Any] | None = None


class ToolCall(msgspec.Struct, frozen=True):
    """One call the mock makes: a deterministic id, the tool, the arguments as JSON text."""

    id: str
    name: str
    arguments: str


class Turn(msgspec.Struct, frozen=True):
    """What to answer. ``kind``: ``text`` (``text`` holds the words or the reply to a tool result),
    ``json`` (``text`` is the JSON document) or ``tools`` (``calls``)."""

    kind: Literal["text", "json", "tools"]
    text: str = ""
    calls: tuple[ToolCall, ...] = ()


# --- a deterministic generator --------------------------------------------------------------------------


class _Rng:
    """A 64-bit LCG (not ``random``: the values must not change between Python versions)."""

    __slots__ = ("left", "x")

    def __init__(self, seed: int) -> None:
        self.x = seed & 0xFFFFFFFFFFFFFFFF
        #: values still to be generated (``MAX_VALUES``)
        self.left = MAX_VALUES

    def next(self, n: int) -> int:
        """A value in [0, n)."""
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        return (self.x >> 33) % max(1, n)


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def call_id(seed: str, index: int, prefix: str, length: int = 24) -> str:
    """A deterministic tool-call id (``call_…`` for OpenAI, ``toolu_…`` for Anthropic): [A-Za-z0-9]."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    digest = hashlib.blake2b(f"{index}:{seed}".encode("utf-8", "surrogatepass"), digest_size=32).digest()
    return prefix + "".join(alphabet[b % len(alphabet)] for b in digest[:length])


# --- values from schemas --------------------------------------------------------------------------------


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for raw in ref[1:].split("/"):
        if not raw:
            continue
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return {}
    return node if isinstance(node, dict) else {}


def _merge(schema: dict[str, Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    """``schema`` with its ``$ref`` and ``allOf`` folded in (properties and required lists united)."""
    out = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
    parts: list[dict[str, Any]] = []
    ref = schema.get("$ref")
    if isinstance(ref, str) and depth < 64:
        parts.append(_merge(_resolve(ref, root), root, depth + 1))
    for sub in schema.get("allOf") or ():
        if isinstance(sub, dict):
            parts.append(_merge(sub, root, depth + 1))
    for part in parts:
        for k, v in part.items():
            if k == "properties" and isinstance(v, dict):
                out["properties"] = {**v, **(out.get("properties") or {})}
            elif k == "required" and isinstance(v, list):
                out["required"] = list(dict.fromkeys([*(out.get("required") or []), *v]))
            else:
                out.setdefault(k, v)
    return out


def _branch(options: list[Any]) -> dict[str, Any]:
    """The first ``anyOf``/``oneOf`` branch that is not ``null`` (a pydantic ``Optional`` gets a value)."""
    dicts = [o for o in options if isinstance(o, dict)]
    for o in dicts:
        if o.get("type") != "null":
            return o
    return dicts[0] if dicts else {}


def _type_of(schema: dict[str, Any]) -> str:
    t = schema.get("type")
    if isinstance(t, list):
        named = [x for x in t if isinstance(x, str) and x != "null"]
        return named[0] if named else "null"
    if isinstance(t, str):
        return t
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")):
        return "number"
    if any(k in schema for k in ("minLength", "maxLength", "format", "pattern")):
        return "string"
    return "object" if not schema else "string"


def value_for(schema: dict[str, Any], seed: str, root: dict[str, Any] | None = None) -> Any:
    """A value valid against ``schema`` (within the subset the module docstring lists), same seed same
    value. ``root``: the document ``$ref`` pointers resolve in (default: ``schema`` itself)."""
    return _value(schema, root if root is not None else schema, _Rng(_seed(seed)), 0)


def _value(schema: Any, root: dict[str, Any], rng: _Rng, depth: int) -> Any:
    rng.left -= 1
    if schema is True or not isinstance(schema, dict):
        return _WORDS[rng.next(len(_WORDS))]
    if "$ref" in schema or "allOf" in schema:
        schema = _merge(schema, root, 0)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[rng.next(len(enum))]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            base = {k: v for k, v in schema.items() if k != key}
            return _value(_merge({**base, "allOf": [_branch(options)]}, root, 0), root, rng, depth)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, root, rng, depth)
    if kind == "array":
        return _array(schema, root, rng, depth)
    if kind == "integer":
        return _integer(schema, rng)
    if kind == "number":
        return _number(schema, rng)
    if kind == "boolean":
        return rng.next(2) == 1
    if kind == "null":
        return None
    return _string(schema, rng)


def _object(schema: dict[str, Any], root: dict[str, Any], rng: _Rng, depth: int) -> dict[str, Any]:
    raw = schema.get("properties")
    props: dict[str, Any] = raw if isinstance(raw, dict) else {}
    required = [r for r in schema.get("required") or () if isinstance(r, str)]
    names = list(props) if depth < MAX_DEPTH else [n for n in props if n in required]
    out: dict[str, Any] = {}
    if depth >= HARD_DEPTH or rng.left <= 0:
        return out
    for name in names:
        out[name] = _value(props[name], root, rng, depth + 1)
    extra = schema.get("additionalProperties")
    for name in required:  # required but not declared: typed by additionalProperties when it says
        if name not in out:
            out[name] = _value(extra if isinstance(extra, dict) else {"type": "string"}, root, rng, depth + 1)
    want = schema.get("minProperties")
    if isinstance(want, int):
        want = min(want, MAX_COUNT)
    i = 0
    while isinstance(want, int) and len(out) < want and extra is not False and rng.left > 0:
        out.setdefault(f"extra_{i}", _value(extra if isinstance(extra, dict) else {"type": "string"},
                                            root, rng, depth + 1))
        i += 1
    return out


def _array(schema: dict[str, Any], root: dict[str, Any], rng: _Rng, depth: int) -> list[Any]:
    raw = schema.get("prefixItems")
    prefix: list[Any] = raw if isinstance(raw, list) else []
    items = schema.get("items", {})
    lo = min(schema.get("minItems", 0), MAX_COUNT) if isinstance(schema.get("minItems"), int) else 0
    hi = schema.get("maxItems") if isinstance(schema.get("maxItems"), int) else None
    n = max(lo, min(len(prefix), MAX_COUNT), 0 if depth >= MAX_DEPTH else 1 + rng.next(2))
    if depth >= HARD_DEPTH:
        n = 0
    if items is False:
        n = min(n, len(prefix))
    if hi is not None:
        n = min(n, hi)
    out: list[Any] = []
    unique = bool(schema.get("uniqueItems"))
    for i in range(n):
        if rng.left <= 0:
            break
        sub = prefix[i] if i < len(prefix) else items
        value = _value(sub, root, rng, depth + 1)
        tries = 0
        while unique and value in out and tries < 16:
            value = _value(sub, root, rng, depth + 1)
            tries += 1
        if unique and value in out:
            if i >= max(lo, len(prefix)):
                break  # fewer, distinct items are still valid when minItems allows
            value = _distinct(value, out)
        out.append(value)
    return out


def _distinct(value: Any, taken: list[Any]) -> Any:
    """A value like ``value`` not in ``taken`` (strings get a suffix, numbers an offset)."""
    i = 1
    while True:
        if isinstance(value, str):
            candidate: Any = f"{value}-{i}"
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return value
        else:
            candidate = value + i
        if candidate not in taken:
            return candidate
        i += 1


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    xlo = schema.get("exclusiveMinimum")
    xhi = schema.get("exclusiveMaximum")
    lo_open = hi_open = False
    if isinstance(xlo, int | float) and not isinstance(xlo, bool) and (lo is None or xlo >= lo):
        lo, lo_open = xlo, True
    if isinstance(xhi, int | float) and not isinstance(xhi, bool) and (hi is None or xhi <= hi):
        hi, hi_open = xhi, True
    return (float(lo) if isinstance(lo, int | float) else None,
            float(hi) if isinstance(hi, int | float) else None, lo_open, hi_open)


def _integer(schema: dict[str, Any], rng: _Rng) -> int:
    lo_f, hi_f, lo_open, hi_open = _bounds(schema)
    lo = None if lo_f is None else math.floor(lo_f) + 1 if lo_open else math.ceil(lo_f)
    hi = None if hi_f is None else math.ceil(hi_f) - 1 if hi_open else math.floor(hi_f)
    if lo is None:
        lo = 0 if hi is None or hi >= 0 else hi - 100
    if hi is None:
        hi = lo + 100
    step = schema.get("multipleOf")
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        first = -(-lo // step) * step
        count = (hi - first) // step + 1
        return first + step * rng.next(count) if count > 0 else first
    return lo + rng.next(hi - lo + 1) if hi >= lo else lo


def _number(schema: dict[str, Any], rng: _Rng) -> float | int:
    step = schema.get("multipleOf")
    lo, hi, lo_open, hi_open = _bounds(schema)
    if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
        if float(step).is_integer():
            return _integer(schema, rng)
        lo_k = 0 if lo is None else int(-(-lo // step)) + (1 if lo_open and (lo / step).is_integer() else 0)
        hi_k = lo_k + 100 if hi is None else int(hi // step) - (
            1 if hi_open and (hi / step).is_integer() else 0)
        k = lo_k + rng.next(hi_k - lo_k + 1) if hi_k >= lo_k else lo_k
        return round(k * step, 12) if (round(k * step, 12) / step).is_integer() else k * step
    if lo is None and hi is None:
        return rng.next(10000) / 100
    if lo is None:
        assert hi is not None
        lo = hi - 100.0
        lo_open = False
    if hi is None:
        hi = lo + 100.0
        hi_open = False
    if hi <= lo:
        return lo
    # a point strictly inside (lo, hi): open bounds are never hit
    frac = (1 + rng.next(98)) / 100.0
    value = lo + (hi - lo) * frac
    return value if (not lo_open or value > lo) and (not hi_open or value < hi) else (lo + hi) / 2


_FORMATS: Final[dict[str, str]] = {
    "date-time": "2024-01-{day:02d}T12:00:00Z",
    "date": "2024-01-{day:02d}",
    "time": "12:{day:02d}:00Z",
    "email": "{word}@example.com",
    "idn-email": "{word}@example.com",
    "uri": "https://example.com/{word}",
    "iri": "https://example.com/{word}",
    "uri-reference": "https://example.com/{word}",
    "url": "https://example.com/{word}",
    "uuid": "00000000-0000-4000-8000-0000000000{day:02d}",
    "ipv4": "192.0.2.{day}",
    "ipv6": "2001:db8::{day}",
    "hostname": "{word}.example.com",
    "idn-hostname": "{word}.example.com",
    "duration": "P{day}D",
}


def _string(schema: dict[str, Any], rng: _Rng) -> str:
    fmt = schema.get("format")
    template = _FORMATS.get(fmt) if isinstance(fmt, str) else None
    if template is not None:
        return template.format(day=1 + rng.next(28), word=_WORDS[rng.next(len(_WORDS))])
    lo = min(schema.get("minLength", 0), MAX_LENGTH) if isinstance(schema.get("minLength"), int) else 0
    hi = schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None
    words = [_WORDS[rng.next(len(_WORDS))] for _ in range(1 + rng.next(3))]
    text = " ".join(words)
    while len(text) < lo:
        text += " " + _WORDS[rng.next(len(_WORDS))]
    if hi is not None:
        text = text[:hi]
        if len(text) < lo:
            text += "x" * (lo - len(text))
    return text


# --- tools ------------------------------------------------------------------------------------------------


def tool_cue(text: str, names: Sequence[str]) -> list[str] | None:
    """The tools the ``!tool`` cue in ``text`` names (see the module docstring); None without a cue."""
    tokens = text.split()
    try:
        at = tokens.index(_CUE)
    except ValueError:
        return None
    known = set(names)
    chosen: list[str] = []
    for token in tokens[at + 1:]:
        if token not in known:
            break
        chosen.append(token)
    if not chosen and names:
        chosen.append(names[0])
    return chosen


def _calls(
    names: Sequence[str], tools: Sequence[ToolSpec], seed: str, id_prefix: str
) -> tuple[ToolCall, ...]:
    by_name = {t.name: t for t in tools}
    out: list[ToolCall] = []
    for i, name in enumerate(names):
        spec = by_name[name]
        schema = spec.parameters if spec.parameters is not None else {"type": "object"}
        args = value_for(schema, f"{i}:{name}:{seed}")
        if not isinstance(args, dict):
            args = {}
        out.append(ToolCall(call_id(seed, i, id_prefix), name, msgspec.json.encode(args).decode()))
    return tuple(out)


def tool_result_text(name: str | None, result: str) -> str:
    """The reply to a tool result: names the tool (when known) and quotes the result."""
    quoted = result if len(result) <= _RESULT_QUOTE else result[:_RESULT_QUOTE] + "…"
    return f"The {name} tool returned: {quoted}" if name else f"The tool returned: {quoted}"


def decide(
    *,
    seed: str,
    last_user: str | None,
    tools: Sequence[ToolSpec],
    choice: Literal["auto", "none", "required"] | str,
    parallel: bool,
    tool_result: tuple[str | None, str] | None,
    schema: dict[str, Any] | None,
    json_mode: bool,
    id_prefix: str,
) -> Turn | None:
    """The turn for a request (see the table in the module docstring), or None for plain words.

    ``seed``: text that identifies the conversation (values and ids derive from it); ``last_user``: the
    text of the last message when it is the user's, else None; ``choice``: ``auto``, ``none``,
    ``required``, or a tool's name; ``tool_result``: (tool name, result text) when the last message is a
    tool result; ``schema``: a structured-output JSON schema; ``json_mode``: any JSON object will do.
    """
    names = [t.name for t in tools]
    chosen: list[str] | None = None
    if tools and choice != "none":
        cued = tool_cue(last_user, names) if last_user is not None else None
        if choice == "required":
            chosen = cued or names[:1]
        elif choice == "auto":
            chosen = cued
        elif choice in names:
            chosen = [choice]
    if chosen:
        if not parallel:
            chosen = chosen[:1]
        return Turn("tools", calls=_calls(chosen, tools, seed, id_prefix))
    if schema is not None:
        return Turn("json", msgspec.json.encode(value_for(schema, seed)).decode())
    if tool_result is not None:
        return Turn("text", tool_result_text(*tool_result))
    if json_mode:
        return Turn("json", msgspec.json.encode({"answer": value_for({"type": "string"}, seed)}).decode())
    return None


def json_fragments(text: str, parts: int) -> list[str]:
    """``text`` cut into at most ``parts`` non-empty pieces (a stream's argument or JSON deltas)."""
    n = len(text)
    if n == 0:
        return [""]
    k = max(1, min(parts, n))
    return [text[i * n // k:(i + 1) * n // k] for i in range(k)]
