"""AWS event-stream framing: the compiled ``_awsevent`` module, its pure-Python twin ``awsevent_py``, and
botocore's ``EventStreamBuffer`` (the reference) give the same messages; broken framing is refused.

The property tests encode generated messages (headers of every type, payloads of any size) with the
encoder below, written from the specification independently of both decoders, cut the stream at random
byte boundaries (down to 1-byte pieces) and demand the messages botocore finds, from both implementations.
"""

from __future__ import annotations

import os
import struct
import zlib
from types import ModuleType
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._core import awsevent_py
from gateway._core.errors import EventStreamError

try:
    from gateway._core import _awsevent
except ImportError:  # pragma: no cover - only when the extension is not built
    if os.environ.get("GATEWAY_REQUIRE_EXTENSIONS") == "1":
        raise
    _awsevent = None  # type: ignore[assignment]

needs_compiled = pytest.mark.skipif(_awsevent is None, reason="gateway._core._awsevent is not built")

IMPLS = [
    pytest.param(awsevent_py, id="twin"),
    pytest.param(_awsevent, id="compiled", marks=needs_compiled),
]
MODS = [m for m in (awsevent_py, _awsevent) if m is not None]

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


# ---- an encoder from the specification --------------------------------------------------------------

Header = tuple[str, int, Any]  # name, type, value

_FIXED = {2: "!b", 3: "!h", 4: "!i", 5: "!q", 8: "!q"}


def encode_header(name: str, kind: int, value: Any) -> bytes:
    raw = name.encode()
    out = struct.pack("!B", len(raw)) + raw + struct.pack("!B", kind)
    if kind in (0, 1):
        return out
    if kind in _FIXED:
        return out + struct.pack(_FIXED[kind], value)
    if kind in (6, 7):
        data = value if kind == 6 else value.encode()
        return out + struct.pack("!H", len(data)) + data
    return out + value  # 9: 16 bytes


def encode(headers: list[Header], payload: bytes) -> bytes:
    head = b"".join(encode_header(*h) for h in headers)
    total = 16 + len(head) + len(payload)
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    body = prelude + head + payload
    return body + struct.pack("!I", zlib.crc32(body))


def python_value(kind: int, value: Any) -> Any:
    return {0: True, 1: False}.get(kind, value)


# ---- helpers ---------------------------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def decode(mod: ModuleType, pieces: list[bytes]) -> list[tuple[dict[str, Any], bytes]]:
    decoder = mod.EventStreamDecoder()
    out = []
    for piece in pieces:
        decoder.feed(piece)
        out += [(m.headers, m.payload) for m in decoder]
    decoder.close()
    return out


def botocore(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(m.headers, m.payload) for m in buf]


BEDROCK = [(":event-type", 7, "contentBlockDelta"), (":content-type", 7, "application/json"),
           (":message-type", 7, "event")]
DELTA = b'{"contentBlockIndex":0,"delta":{"text":"hello"},"p":"abcd"}'


# ---- examples --------------------------------------------------------------------------------------


def test_a_bedrock_event(impl: ModuleType) -> None:
    raw = encode(BEDROCK, DELTA)
    (msg,) = decode(impl, [raw])
    assert msg == ({":event-type": "contentBlockDelta", ":content-type": "application/json",
                    ":message-type": "event"}, DELTA)
    assert [msg] == botocore(raw)


def test_every_header_type(impl: ModuleType) -> None:
    headers: list[Header] = [
        ("t", 0, None), ("f", 1, None), ("b", 2, -128), ("s", 3, -32768), ("i", 4, 2**31 - 1),
        ("l", 5, -(2**63)), ("a", 6, b"\x00\xff"), ("u", 7, "é€😀"), ("ts", 8, 1_700_000_000_000),
        ("id", 9, bytes(range(16))),
    ]
    raw = encode(headers, b"")
    (msg,) = decode(impl, [raw])
    assert msg == ({n: python_value(k, v) for n, k, v in headers}, b"")
    assert type(msg[0]["t"]) is bool and type(msg[0]["b"]) is int
    assert [msg] == botocore(raw)


def test_many_messages_in_one_piece_and_byte_by_byte(impl: ModuleType) -> None:
    raw = b"".join(encode(BEDROCK, DELTA[:n]) for n in range(len(DELTA)))
    whole = decode(impl, [raw])
    assert whole == botocore(raw) and len(whole) == len(DELTA)
    assert decode(impl, [raw[i:i + 1] for i in range(len(raw))]) == whole


def test_nothing_until_the_message_is_complete(impl: ModuleType) -> None:
    raw = encode(BEDROCK, DELTA)
    decoder = impl.EventStreamDecoder()
    decoder.feed(raw[:-1])
    assert list(decoder) == [] and decoder.pending == len(raw) - 1
    decoder.feed(raw[-1:])
    assert [m.payload for m in decoder] == [DELTA] and decoder.pending == 0
    decoder.close()


# ---- broken framing ------------------------------------------------------------------------------


def refused(mod: ModuleType, data: bytes, **limits: int) -> str:
    decoder = mod.EventStreamDecoder(**limits)
    with pytest.raises(EventStreamError) as info:
        decoder.feed(data)
        list(decoder)
        decoder.close()
    # the decoder stays failed: the framing cannot be found again
    with pytest.raises(EventStreamError):
        decoder.feed(encode(BEDROCK, DELTA))
        list(decoder)
    return str(info.value)


def test_a_bad_prelude_checksum(impl: ModuleType) -> None:
    raw = bytearray(encode(BEDROCK, DELTA))
    raw[9] ^= 0x01
    assert "prelude checksum" in refused(impl, bytes(raw))


@pytest.mark.parametrize("at", [12, 30, -10, -1])
def test_a_bad_message_checksum(impl: ModuleType, at: int) -> None:
    raw = bytearray(encode(BEDROCK, DELTA))
    raw[at] ^= 0x40
    assert "message checksum" in refused(impl, bytes(raw))


def _prelude(total: int, head: int) -> bytes:
    p = struct.pack("!II", total, head)
    return p + struct.pack("!I", zlib.crc32(p))


def test_lengths_out_of_bounds_are_refused_from_the_prelude(impl: ModuleType) -> None:
    # refused as soon as the prelude arrives: nothing waits for (or buffers) the announced bytes
    assert "headers of" in refused(impl, _prelude(16 + 128 * 1024 + 1, 128 * 1024 + 1))
    assert "payload of" in refused(impl, _prelude(16 + 24 * 1024 * 1024 + 1, 0))
    assert "cannot hold" in refused(impl, _prelude(20, 8))
    assert "cannot hold" in refused(impl, _prelude(0, 0))
    assert "payload of" in refused(impl, encode([], b"x" * 11), max_payload_length=10)


def test_the_bounds_are_botocores(impl: ModuleType) -> None:
    from botocore import eventstream

    assert impl.MAX_HEADERS_LENGTH == eventstream._MAX_HEADERS_LENGTH
    assert impl.MAX_PAYLOAD_LENGTH == eventstream._MAX_PAYLOAD_LENGTH
    assert impl.PRELUDE_LENGTH == eventstream._PRELUDE_LENGTH


def _with_headers(head: bytes) -> bytes:
    prelude = _prelude(16 + len(head), len(head))
    body = prelude + head
    return body + struct.pack("!I", zlib.crc32(body))


@pytest.mark.parametrize(("head", "says"), [
    (b"\x01a\x0a", "unknown type 10"),
    (b"\x01a\xff", "unknown type 255"),
    (b"\x01a\x07\x00\x05abc", "overruns"),
    (b"\x01a\x04\x00\x00", "overruns"),
    (b"\x01a\x09" + bytes(15), "overruns"),
    (b"\x05ab", "overruns"),
    (b"\x01a\x00\x01a\x01", "twice"),
    (b"\x01\xff\x00", "UTF-8"),
    (b"\x01a\x07\x00\x02\xc3\x28", "UTF-8"),
])
def test_broken_headers(impl: ModuleType, head: bytes, says: str) -> None:
    assert says in refused(impl, _with_headers(head))


@pytest.mark.parametrize("keep", [1, 11, 12, 40, -1])
def test_a_message_cut_at_the_end(impl: ModuleType, keep: int) -> None:
    raw = encode(BEDROCK, DELTA) * 2
    cut = raw[:len(raw) // 2 + keep]
    assert "ended inside a message" in refused(impl, cut)


# ---- property tests ------------------------------------------------------------------------------

names = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)
values: st.SearchStrategy[tuple[int, Any]] = st.one_of(
    st.tuples(st.just(0), st.none()),
    st.tuples(st.just(1), st.none()),
    st.tuples(st.just(2), st.integers(-(2**7), 2**7 - 1)),
    st.tuples(st.just(3), st.integers(-(2**15), 2**15 - 1)),
    st.tuples(st.just(4), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(5), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(6), st.binary(max_size=300)),
    st.tuples(st.just(7), st.text(max_size=100)),
    st.tuples(st.just(8), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(9), st.binary(min_size=16, max_size=16)),
)
headers_strategy = st.dictionaries(names, values, max_size=12).map(
    lambda d: [(n, k, v) for n, (k, v) in d.items()])
messages = st.lists(st.tuples(headers_strategy, st.binary(max_size=2000)), min_size=1, max_size=6)


@PROPS
@given(msgs=messages, cuts=st.lists(st.integers(0, 20000), max_size=30), data=st.data())
def test_same_messages_as_botocore_however_the_stream_is_cut(
    msgs: list[tuple[list[Header], bytes]], cuts: list[int], data: st.DataObject
) -> None:
    raw = b"".join(encode(h, p) for h, p in msgs)
    expected = [({n: python_value(k, v) for n, k, v in h}, p) for h, p in msgs]
    assert botocore(raw) == expected
    pieces = split_at(raw, cuts)
    if data.draw(st.booleans()):
        pieces = [raw[i:i + 1] for i in range(len(raw))]
    for mod in MODS:
        assert decode(mod, pieces) == expected


@PROPS
@given(msgs=messages, flip=st.integers(0), bit=st.integers(0, 7), cuts=st.lists(st.integers(0, 20000)))
def test_a_flipped_bit_is_always_refused(
    msgs: list[tuple[list[Header], bytes]], flip: int, bit: int, cuts: list[int]
) -> None:
    raw = bytearray(b"".join(encode(h, p) for h, p in msgs))
    raw[flip % len(raw)] ^= 1 << bit
    outcomes = []
    for mod in MODS:
        decoder = mod.EventStreamDecoder()
        try:
            for piece in split_at(bytes(raw), cuts):
                decoder.feed(piece)
                list(decoder)
            decoder.close()
        except EventStreamError:
            outcomes.append("refused")
        else:
            outcomes.append("accepted")
    # a CRC-32 catches every single-bit error; a bit of a length is caught by the prelude CRC
    assert outcomes == ["refused"] * len(MODS)


def test_remembered_strings_never_stand_for_other_bytes(impl: ModuleType) -> None:
    # the compiled decoder reuses the str objects of strings it has seen in the stream: values that
    # share a length or a prefix, more distinct values than it remembers, long and non-ASCII ones
    values = ["abc", "abd", "abc", "é", "x" * 64, "x" * 63 + "y", "x" * 65, *(f"v{i:02}" for i in range(40)), "abd"]
    raw = b"".join(encode([(":event-type", 7, v), (v, 7, v[::-1])], b"") for v in values)
    assert [m[0] for m in decode(impl, [raw])] == [{":event-type": v, v: v[::-1]} for v in values]
