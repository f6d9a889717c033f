"""SSE framing: the compiled ``_sse`` module and its pure-Python twin ``sse_py``.

Example tests run against both implementations; the property tests drive both with the same bytes in the
same fragmentation and demand identical results.
"""

from __future__ import annotations

import os
import re
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gateway._core
from gateway._core import sse_py

try:
    from gateway._core import _sse
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _sse = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_sse is None, reason="gateway._core._sse is not built")

IMPLS = [
    pytest.param(sse_py, id="twin"),
    pytest.param(_sse, id="compiled", marks=needs_compiled),
]
MODS = [m for m in (sse_py, _sse) if m is not None]

# GATEWAY_PROPERTY_EXAMPLES=5000 for a deeper run
PROPS = settings(
    max_examples=int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo ``len(data) + 1``; repeated offsets give empty pieces)."""
    out, prev = [], 0
    for c in sorted(c % (len(data) + 1) for c in cuts):
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def scan(mod: ModuleType, pieces: list[bytes], max_event_bytes: int | None = None) -> tuple[list[Any], bytes]:
    """Feed ``pieces``; return what each feed returned (or "too-large") and the pending tail."""
    s = mod.SSEScanner() if max_event_bytes is None else mod.SSEScanner(max_event_bytes)
    out: list[Any] = []
    for piece in pieces:
        try:
            got = s.feed(piece)
        except ValueError:
            out.append("too-large")
            break
        assert type(got) is bytes
        out.append(got)
    pending = s.pending
    assert type(pending) is bytes
    return out, pending


# ---------------------------------------------------------------------------------------------------------
# SSEScanner


def test_scanner_holds_incomplete_events_lf(impl: ModuleType) -> None:
    s = impl.SSEScanner()
    assert s.pending == b""
    assert s.feed(b"data: a\n\ndata: b\n") == b"data: a\n\n"
    assert s.pending == b"data: b\n"
    assert s.feed(b"") == b""
    assert s.feed(b"data: c") == b""
    assert s.pending == b"data: b\ndata: c"
    assert s.feed(b"\n") == b""
    assert s.feed(b"\n: comment\n\nid") == b"data: b\ndata: c\n\n: comment\n\n"
    assert s.pending == b"id"
    assert s.feed(b": 1\n\n") == b"id: 1\n\n"
    assert s.pending == b""


def test_scanner_holds_incomplete_events_crlf(impl: ModuleType) -> None:
    s = impl.SSEScanner()
    assert s.feed(b"data: a\r\n\r") == b""
    assert s.feed(b"\n") == b"data: a\r\n\r\n"
    assert s.feed(b"data: b\r\n") == b""
    assert s.feed(b"\r\ndata: c\r\n\r\ndata") == b"data: b\r\n\r\ndata: c\r\n\r\n"
    assert s.pending == b"data"
    # mixed line endings: a CRLF line closed by an LF blank line, and the other way round
    s = impl.SSEScanner()
    assert s.feed(b"data: a\r\n\ndata: b\n\r\n") == b"data: a\r\n\ndata: b\n\r\n"


def test_scanner_returns_whole_chunks_unchanged(impl: ModuleType) -> None:
    chunk = b"data: {\"a\":1}\n\ndata: [DONE]\n\n"
    assert impl.SSEScanner().feed(chunk) == chunk


STREAM = (
    b": keep-alive\n\n"
    b"event: message\nid: 1\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"
    b"data: line one\r\ndata:line two\r\n\r\n"
    b"retry: 1000\ndata: \n\n"
    b"data: {\"usage\":{\"total_tokens\":3}}\n\n"
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("tail", [b"", b"data: partial", b"data: partial\n", b"data: partial\r\n\r"])
def test_scanner_split_at_every_byte(impl: ModuleType, tail: bytes) -> None:
    stream = STREAM + tail
    for i in range(len(stream) + 1):
        out, pending = scan(impl, [stream[:i], stream[i:]])
        assert b"".join(out) == STREAM, i
        assert pending == tail
        for piece in out:  # every output ends at an event boundary
            assert piece == b"" or piece.endswith((b"\n\n", b"\n\r\n"))
    out, pending = scan(impl, bytewise(stream))
    assert b"".join(out) == STREAM
    assert pending == tail
    assert sum(1 for o in out if o) == len(impl.split_events(STREAM))


def test_scanner_event_size_limit(impl: ModuleType) -> None:
    s = impl.SSEScanner(max_event_bytes=10)
    assert s.max_event_bytes == 10
    assert s.feed(b"data: 1234") == b""  # exactly the limit is fine
    with pytest.raises(ValueError):
        s.feed(b"5")
    # complete events of any size pass; only the held-back tail is limited
    s = impl.SSEScanner(max_event_bytes=10)
    assert s.feed(b"data: " + b"x" * 100 + b"\n\n") == b"data: " + b"x" * 100 + b"\n\n"
    assert impl.SSEScanner().max_event_bytes == 1 << 20


@pytest.mark.parametrize("blank", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_scanner_trailing_blank_line_does_not_depend_on_fragmentation(impl: ModuleType, blank: bytes) -> None:
    # a blank line in its own segment right after a complete event ('data: a\n\n' then '\n') is released
    # as it is when the same bytes come in one segment; held back, the engine reported "The upstream
    # stream ended inside an event" at the end of such a stream
    stream = b"data: a\n\n" + blank
    whole = scan(impl, [stream])
    assert whole == ([stream], b"")
    split = scan(impl, [stream[:9], stream[9:]])
    assert split == ([stream[:9], blank], b"")
    # the CRLF blank line cut in two, and more blank lines, each in its own segment
    pieces = [stream[:9], *bytewise(blank), b"\n", b"\r\n"]
    out, pending = scan(impl, pieces)
    assert (b"".join(out), pending) == (b"".join(pieces), b"")
    # at the very start of a stream nothing has ended yet: a lone blank line is no boundary there
    assert scan(impl, [blank]) == ([b""], blank)


# ---------------------------------------------------------------------------------------------------------
# split_events / event_data


@pytest.mark.parametrize(
    ("data", "events"),
    [
        (b"", []),
        (b"data: a\n\n", [b"data: a\n\n"]),
        (b"data: a\n\ndata: b\n\n", [b"data: a\n\n", b"data: b\n\n"]),
        (b"data: a\r\n\r\ndata: b\r\n\r\n", [b"data: a\r\n\r\n", b"data: b\r\n\r\n"]),
        (b"event: e\ndata: a\ndata: b\n\n", [b"event: e\ndata: a\ndata: b\n\n"]),
        (b": ping\n\ndata: a\n\n", [b": ping\n\n", b"data: a\n\n"]),
        (b"\n\n\r\ndata: a\n\n\n\ndata: b\n\n", [b"data: a\n\n", b"data: b\n\n"]),  # blank lines skipped
        (b"data: a\n\ndata: b", [b"data: a\n\n", b"data: b"]),  # incomplete tail kept
        (b"data: a\n\ndata: b\n", [b"data: a\n\n", b"data: b\n"]),
        (b"data: a\r\n\ndata: b\n\r\n", [b"data: a\r\n\n", b"data: b\n\r\n"]),
    ],
)
def test_split_events(impl: ModuleType, data: bytes, events: list[bytes]) -> None:
    assert impl.split_events(data) == events


@pytest.mark.parametrize(
    ("event", "data"),
    [
        (b"data: x\n\n", b"x"),
        (b"data:x\n\n", b"x"),
        (b"data:  x\n\n", b" x"),  # only one leading space is removed
        (b"data: x \n\n", b"x "),
        (b"data:\n\n", b""),
        (b"data: \n\n", b""),
        (b"data: a\ndata: b\n\n", b"a\nb"),
        (b"data: a\r\ndata:b\r\n\r\n", b"a\nb"),
        (b"data: a\ndata:\ndata: c\n\n", b"a\n\nc"),
        (b"event: usage\nid: 7\ndata: {\"u\":1}\nretry: 5\n\n", b"{\"u\":1}"),
        (b": comment\ndata: a\n: data: no\n\n", b"a"),
        (b": only a comment\n\n", None),
        (b"event: x\n\n", None),
        (b"", None),
        (b"Data: x\n\n", None),  # field names are case-sensitive
        (b" data: x\n\n", None),
        (b"data: a: b\n\n", b"a: b"),
        (b"data: x", b"x"),  # no terminator needed
        (b"data: \xff\xfe\n\n", b"\xff\xfe"),
    ],
)
def test_event_data(impl: ModuleType, event: bytes, data: bytes | None) -> None:
    assert impl.event_data(event) == data


@needs_compiled
@PROPS
@given(st.lists(st.sampled_from([b"data:", b"data: ", b" ", b"\n", b"\r", b"\r\n", b"x", b"{}", b"event: e",
                                 b"da", b":", b"ta:", b"\xff"]), max_size=16))
def test_event_data_compiled_matches_the_twin(pieces: list[bytes]) -> None:
    event = b"".join(pieces)  # the compiled one scans bytes itself; the twin splits lines
    assert _sse.event_data(event) == sse_py.event_data(event)


# ---------------------------------------------------------------------------------------------------------
# facade


def test_facade_picks_the_compiled_module() -> None:
    from gateway._core import sse

    no_ext = os.environ.get("GATEWAY_NO_EXTENSIONS") == "1"
    assert sse.COMPILED is (_sse is not None and not no_ext)
    expected = _sse if sse.COMPILED else sse_py
    assert sse.SSEScanner is expected.SSEScanner
    assert sse.split_events is expected.split_events
    assert sse.event_data is expected.event_data
    assert gateway._core.compiled()["sse"] is sse.COMPILED
    assert sorted(sse.__all__) == sorted(sse_py.__all__)
    if _sse is not None:
        assert sorted(_sse.__all__) == sorted(sse_py.__all__)


# ---------------------------------------------------------------------------------------------------------
# property tests

TEXT = bytes(c for c in range(0x20, 0x100) if c != 0x7F).replace(b"\r", b"").replace(b"\n", b"")
TEXT_TABLE = bytes(TEXT[i % len(TEXT)] for i in range(256))
texts = st.builds(bytes.__add__, st.sampled_from([b"", b"", b" ", b"  ", b":", b" :"]),
                  st.binary(max_size=16).map(lambda b: b.translate(TEXT_TABLE)))
eols = st.sampled_from([b"\n", b"\r\n"])
cut_lists = st.lists(st.integers(0, 10_000), max_size=8)


line_kinds = st.sampled_from(["data", "data", "data-nospace", "event", "id", "comment", "retry"])


def sse_line(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(line without EOL, its data payload or None)."""
    kind = draw(line_kinds)
    text = draw(texts)
    if kind == "data":
        return b"data: " + text, text
    if kind == "data-nospace":
        return b"data:" + text, text[1:] if text.startswith(b" ") else text
    if kind == "comment":
        return b":" + text, None
    return kind.encode() + b": " + text.replace(b":", b""), None


@st.composite
def sse_stream(draw: st.DrawFn) -> tuple[bytes, int, list[bytes], list[bytes | None]]:
    """(stream, end of the last complete event, the complete events, their data payloads)."""
    events, payloads = [], []
    for _ in range(draw(st.integers(0, 5))):
        lines = [sse_line(draw) for _ in range(1 + draw(st.integers(0, 3)))]
        ev = b"".join(line + draw(eols) for line, _ in lines) + draw(eols)
        events.append(ev)
        data = [d for _, d in lines if d is not None]
        payloads.append(b"\n".join(data) if data else None)
    complete = b"".join(events)
    tail = b""
    if draw(st.booleans()):  # an incomplete event: some whole lines and maybe a partial one, no blank line
        lines = [sse_line(draw) for _ in range(1 + draw(st.integers(0, 2)))]
        tail = b"".join(line + draw(eols) for line, _ in lines[:-1]) + lines[-1][0]
        if draw(st.booleans()):
            tail += draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\n\r"]))
    return complete + tail, len(complete), events, payloads


@PROPS
@given(spec=sse_stream(), max_event=st.sampled_from([None, None, 8, 64]), data=st.data())
def test_prop_scanner_generated_streams(
    spec: tuple[bytes, int, list[bytes], list[bytes | None]], max_event: int | None, data: Any
) -> None:
    stream, end, events, payloads = spec
    pieces = split_at(stream, data.draw(cut_lists, label="cuts"))
    results = [scan(mod, pieces, max_event) for mod in MODS]
    assert all(r == results[0] for r in results)
    out, pending = results[0]
    if "too-large" in out:
        assert max_event is not None
        return
    assert b"".join(out) == stream[:end]
    assert pending == stream[end:]
    for piece in out:
        assert piece == b"" or piece.endswith((b"\n\n", b"\n\r\n"))
    for mod in MODS:
        assert mod.split_events(b"".join(out)) == events
        assert [mod.event_data(ev) for ev in events] == payloads
        assert mod.split_events(stream)[:len(events)] == events


SSE_BYTES = b"\n\n\n\r\r\r :::data data: event: x\xff"
SSE_TABLE = bytes(SSE_BYTES[i % len(SSE_BYTES)] for i in range(256))
sse_noise = st.one_of(st.binary(max_size=80), st.binary(max_size=80).map(lambda b: b.translate(SSE_TABLE)))


@PROPS
@given(stream=sse_noise, max_event=st.sampled_from([None, None, 0, 4, 16]), data=st.data())
def test_prop_scanner_arbitrary_bytes(stream: bytes, max_event: int | None, data: Any) -> None:
    pieces = split_at(stream, data.draw(cut_lists, label="cuts"))
    results = [scan(mod, pieces, max_event) for mod in MODS]
    assert all(r == results[0] for r in results)
    out, pending = results[0]
    if "too-large" in out:
        return
    fragmented = b"".join(out)
    assert fragmented + pending == stream
    whole, whole_pending = scan(MODS[0], [stream], max_event)
    if "too-large" in whole:
        return
    # what is released does not depend on the fragmentation (blank lines right after an event included)
    assert b"".join(whole) == fragmented
    assert whole_pending == pending


@PROPS
@given(data=sse_noise)
def test_prop_split_events_and_event_data_agree(data: bytes) -> None:
    results = []
    for mod in MODS:
        events = mod.split_events(data)
        assert all(type(ev) is bytes and ev for ev in events)
        results.append((events, [mod.event_data(ev) for ev in events], mod.event_data(data)))
    assert all(r == results[0] for r in results)
    assert results[0][0] == split_events_model(data)


def split_events_model(data: bytes) -> list[bytes]:
    """Lines end at LF; a blank line (LF or CRLF) ends a non-empty event; a leftover is the last event."""
    events, cur = [], b""
    for line in re.findall(rb"[^\n]*\n|[^\n]+\Z", data):
        if line in (b"\n", b"\r\n"):
            if cur:
                events.append(cur + line)
            cur = b""
        else:
            cur += line
    if cur:
        events.append(cur)
    return events
