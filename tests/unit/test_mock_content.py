"""The mock's structured output and tool calls: deterministic, schema-valid, in the OpenAI SDK's types."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field

from gateway.providers import mock_content
from gateway.providers.mock import MockLLM
from gateway.providers.mock_content import ToolSpec, decide, tool_cue, value_for

# jsonschema checks "time" as draft 3's HH:MM:SS unless rfc3339-validator is installed; the mock's RFC 3339
# times ("12:06:00Z") are what JSON Schema 2020-12 means, so that one checker is left out
_FORMATS = jsonschema.FormatChecker(formats=[f for f in jsonschema.FormatChecker.checkers if f != "time"])


def valid(schema: dict[str, Any], value: Any) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=_FORMATS).validate(value)


# --- schemas -------------------------------------------------------------------------------------------


class Color(StrEnum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str = Field(min_length=3, max_length=40)
    zip_code: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=99)
    score: float = Field(gt=0, lt=1)
    tags: list[str] = Field(min_length=2, max_length=4)
    favourite: Color
    home: Address
    others: list[Address] = []
    nickname: str | None = None
    active: bool


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


@pytest.mark.parametrize("model", [Person, Address, Tree])
def test_pydantic_schemas_get_valid_values(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    value = value_for(schema, "seed")
    valid(schema, value)
    model.model_validate(value)


def test_values_are_deterministic_and_vary_with_the_seed() -> None:
    schema = Person.model_json_schema()
    assert value_for(schema, "a") == value_for(schema, "a")
    assert any(value_for(schema, "a") != value_for(schema, s) for s in ("b", "c", "d"))


@pytest.mark.parametrize("schema", [
    {"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 5},
    {"type": "integer", "minimum": 10, "multipleOf": 7},
    {"type": "number", "minimum": 0.5, "maximum": 0.5},
    {"type": "number", "multipleOf": 0.25, "minimum": 1},
    {"type": "string", "minLength": 50},
    {"type": "string", "maxLength": 2},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "email"},
    {"type": "string", "format": "uuid"},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    {"type": ["null", "string"]},
    {"const": {"k": 1}},
    {"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}},
    {"type": "object", "minProperties": 2},
    {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
    {"oneOf": [{"type": "null"}, {"type": "object", "properties": {"z": {"type": "boolean"}}, "required": ["z"]}]},
    {"$defs": {"n": {"type": "integer", "maximum": -5}}, "type": "object",
     "properties": {"v": {"$ref": "#/$defs/n"}}, "required": ["v"], "additionalProperties": False},
])
def test_keywords(schema: dict[str, Any]) -> None:
    for seed in ("1", "2", "3", "4"):
        valid(schema, value_for(schema, seed))


# hypothesis: random schemas within the supported subset

_scalar = st.one_of(
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-1000, 1000), st.integers(0, 50)),
    st.builds(lambda lo, span, xl: {"type": "number", ("exclusiveMinimum" if xl else "minimum"): lo,
                                    "maximum": lo + span},
              st.floats(-1e6, 1e6), st.floats(0.5, 1e3), st.booleans()),
    st.builds(lambda lo, extra: {"type": "string", "minLength": lo, "maxLength": lo + extra},
              st.integers(0, 30), st.integers(0, 30)),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), min_size=1, max_size=4, unique=True).map(
        lambda xs: {"enum": xs}),
    st.sampled_from(["date", "date-time", "time", "email", "uri", "uuid", "ipv4", "ipv6", "hostname"]).map(
        lambda f: {"type": "string", "format": f}),
)


def _compound(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    obj = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4), children, max_size=4).flatmap(
        lambda props: st.builds(
            lambda req, closed: {"type": "object", "properties": props, "required": req,
                                 "additionalProperties": not closed},
            st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]), st.booleans()))
    arr = st.builds(lambda items, lo, extra: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + extra},
                    children, st.integers(0, 3), st.integers(0, 3))
    union = st.lists(children, min_size=1, max_size=3).map(lambda xs: {"anyOf": xs})
    nullable = children.map(lambda c: {"anyOf": [c, {"type": "null"}]})
    return st.one_of(obj, arr, union, nullable)


_schemas = st.recursive(_scalar, _compound, max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=_schemas, seed=st.text(max_size=8))
def test_random_schemas_get_valid_values(schema: dict[str, Any], seed: str) -> None:
    value = value_for(schema, seed)
    valid(schema, value)
    assert value_for(schema, seed) == value


# --- decisions ------------------------------------------------------------------------------------------

WEATHER = ToolSpec("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]})
TIME = ToolSpec("get_time", {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}}})


def _decide(**kw: Any) -> mock_content.Turn | None:
    args: dict[str, Any] = dict(seed="s", last_user="hello", tools=[WEATHER, TIME], choice="auto", parallel=True,
                                tool_result=None, schema=None, json_mode=False, id_prefix="call_")
    args.update(kw)
    return decide(**args)


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]},  # required and recursive
    {"type": "object", "properties": {"x": {"$ref": "#"}, "y": {"$ref": "#"}}, "required": ["x", "y"]},
    {"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
               "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
     "$ref": "#/$defs/a"},
    {"type": "object", "properties": {"x": {"type": "array", "items": {"type": "string"},
                                            "minItems": 100_000_000}}, "required": ["x"]},
    {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000,
                                                  "items": {"type": "array", "minItems": 1000}}},
    {"type": "string", "minLength": 10**9},
    {"type": "object", "minProperties": 10**9},
])
def test_what_a_schema_asks_for_is_bounded(schema: dict[str, Any]) -> None:
    """A client's schema cannot make the mock hold the worker's loop or fill its memory: recursion, counts
    and lengths are cut at the documented bounds."""
    value = value_for(schema, "seed")
    assert len(json.dumps(value)) < 200_000
    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        return 0
    assert depth(value) <= mock_content.HARD_DEPTH + 1


def test_the_cue() -> None:
    names = ["get_weather", "get_time"]
    assert tool_cue("no cue here", names) is None
    assert tool_cue("please !tool", names) == ["get_weather"]
    assert tool_cue("!tool get_time get_weather then", names) == ["get_time", "get_weather"]
    assert tool_cue("!tool unknown", names) == ["get_weather"]


def test_decisions() -> None:
    assert _decide() is None
    forced = _decide(choice="required")
    assert forced is not None and [c.name for c in forced.calls] == ["get_weather"]
    named = _decide(choice="get_time")
    assert named is not None and [c.name for c in named.calls] == ["get_time"]
    cued = _decide(last_user="x !tool get_time get_weather")
    assert cued is not None and [c.name for c in cued.calls] == ["get_time", "get_weather"]
    assert cued.calls[0].id != cued.calls[1].id and all(c.id.startswith("call_") for c in cued.calls)
    single = _decide(last_user="x !tool get_time get_weather", parallel=False)
    assert single is not None and len(single.calls) == 1
    assert _decide(last_user="!tool get_time", choice="none") is None
    reply = _decide(last_user=None, tool_result=("get_weather", "sunny, 21C"))
    assert reply is not None and reply.kind == "text" and "get_weather" in reply.text and "sunny, 21C" in reply.text
    js = _decide(schema=Person.model_json_schema())
    assert js is not None and js.kind == "json"
    Person.model_validate_json(js.text)
    jm = _decide(tools=[], json_mode=True)
    assert jm is not None and isinstance(json.loads(jm.text), dict)
    for call in cued.calls:
        schema = WEATHER.parameters if call.name == "get_weather" else TIME.parameters
        assert schema is not None
        valid(schema, json.loads(call.arguments))


# --- the OpenAI dialect, in the SDK's own types ---------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": t.name, "parameters": t.parameters}} for t in (WEATHER, TIME)]


def _chat(llm: MockLLM, **body: Any) -> Any:
    body.setdefault("model", "mock-1")
    reply = llm.respond("chat", json.dumps(body).encode())
    assert reply.status == 200, reply.body
    if reply.chunks is None:
        return ChatCompletion.model_validate_json(reply.body)
    assert reply.chunks[-1] == b"data: [DONE]\n\n"
    return [ChatCompletionChunk.model_validate_json(c[6:]) for c in reply.chunks[:-1]]


def test_openai_tool_call_required_and_named() -> None:
    llm = MockLLM()
    msgs = [{"role": "user", "content": "what is the weather"}]
    done = _chat(llm, messages=msgs, tools=TOOLS, tool_choice="required")
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    valid(WEATHER.parameters or {}, json.loads(call.function.arguments))
    named = _chat(llm, messages=msgs, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["get_time"]
    # without a cue, auto answers words
    plain = _chat(llm, messages=msgs, tools=TOOLS)
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.tool_calls is None


def test_openai_parallel_calls_stream_with_their_own_index() -> None:
    llm = MockLLM()
    msgs = [{"role": "user", "content": "both please !tool get_weather get_time"}]
    chunks = _chat(llm, messages=msgs, tools=TOOLS, stream=True, stream_options={"include_usage": True})
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                if tc.id:
                    entry["id"] = tc.id
                if tc.function and tc.function.name:
                    entry["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
    assert sorted(calls) == [0, 1]
    assert [calls[0]["name"], calls[1]["name"]] == ["get_weather", "get_time"]
    done = _chat(llm, messages=msgs, tools=TOOLS)
    for i, call in enumerate(done.choices[0].message.tool_calls):
        assert (calls[i]["id"], calls[i]["name"], calls[i]["arguments"]) == (
            call.id, call.function.name, call.function.arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_openai_structured_output_stream_and_not() -> None:
    llm = MockLLM()
    schema = Person.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    msgs = [{"role": "user", "content": "a person"}]
    done = _chat(llm, messages=msgs, response_format=fmt)
    person = Person.model_validate_json(done.choices[0].message.content)
    chunks = _chat(llm, messages=msgs, response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert Person.model_validate_json(text) == person
    obj = _chat(llm, messages=msgs, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_openai_reply_to_a_tool_result() -> None:
    llm = MockLLM()
    first = _chat(llm, messages=[{"role": "user", "content": "!tool get_weather"}], tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    msgs = [
        {"role": "user", "content": "!tool get_weather"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny and 21 degrees"},
    ]
    done = _chat(llm, messages=msgs, tools=TOOLS)
    text = done.choices[0].message.content
    assert done.choices[0].finish_reason == "stop" and "get_weather" in text and "sunny and 21 degrees" in text


@pytest.mark.parametrize(("body", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
])
def test_openai_refuses_what_openai_refuses(body: dict[str, Any], param: str) -> None:
    reply = MockLLM().respond("chat", json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                  **body}).encode())
    assert reply.status == 400
    assert json.loads(reply.body)["error"]["param"] == param
