"""The guardrails' prefilter: the compiled scanner and its twin agree, and it never hides a finding.

Property-style: generated texts rich in what the triggers look at (digits and separators, capitals, ``@``,
colons and hex, JSON escapes, non-ASCII digits and the characters whose case maps to ASCII, pieces of
needles) and texts with personal data planted at random places (the corpus of ``bench.guard_corpus``),
whole and cut into chunks.
"""

from __future__ import annotations

import json
import random
import re

import msgspec
import pytest

from bench.guard_corpus import DETECTORS, _case
from bench.guard_inproc import _PII, _TEXT, GUARD
from gateway._core import scan, scan_py
from gateway.guard.config import GuardPolicy
from gateway.guard.detectors import BUILTIN, Scanner
from gateway.guard.masking import Masker, Window
from gateway.guard.policy import Guard
from gateway.guard.triggers import (
    INTERNATIONAL_MIN,
    international_min,
    phone_min,
    prefilter_args,
    required_literal,
    unescape,
)

try:
    from gateway._core import _scan as compiled
except ImportError:  # pragma: no cover - a build without extensions
    compiled = None  # type: ignore[assignment]


def _guard(policy: dict[str, object]) -> Guard:
    return Guard([("p", msgspec.convert(policy, GuardPolicy))])


def _typical() -> Guard:
    import tomllib

    return _guard(tomllib.loads(GUARD)["guardrails"]["policies"]["typical"])


EVERYTHING = {
    "input": dict.fromkeys(BUILTIN, "mask"), "output": dict.fromkeys(BUILTIN, "mask"),
    "deny": {"words": ["project phoenix", "Straße", "ключ"], "patterns": ["(?i)internal[- ]only", "a|b"]},
    "custom": [{"name": "employee_id", "pattern": "EMP-\\d{6}"}, {"name": "ticket", "pattern": "[A-Z]{3}#\\d+"}],
}

PIECES = [
    "0", "1", "4", "9", "12", "2024", "-", ".", " ", "(", ")", "+", "/", ",", ":", "#", "@", "A", "Z", "DE",
    "GB", "x", "k", "e", "f", "::", "fe80", "\\", "\\u0040", "\\u0034", "\\u00e9", "\\u212a", "\\/", '\\"',
    "\\\\", "\\n", "\\uff14", "sk-", "AKIA", "ghp_", "xox", "-----BEGIN", "token", "token:", "secret=",
    "project phoenix", "PROJECT", "internal", "EMP-", "\u00e9", "\uff14", "\u0663", "\u004b", "\u0130", "\u017f", "\u6771", '"', "[", "{",
    '":', "1.2.3.4", "2024-03-15", "+1 415-555-0132", "4111 1111 1111 1111", "\udcff", "\udcc3",
]


def _random_bytes(rng: random.Random) -> bytes:
    text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
    data = text.encode("utf-8", "surrogateescape")
    if rng.random() < 0.2 and data:  # cut anywhere, even inside a character
        data = data[: rng.randint(0, len(data))]
    return data


def _scanners() -> list[Scanner]:
    out = []
    for g in (_typical(), _guard(EVERYTHING), _guard({"input": {"email": "mask"}}),
              _guard({"input": {"ipv6": "mask", "ipv4": "mask", "es_dni": "mask"}})):
        out += [g.input.scanner, g.output.scanner] if g.output else [g.input.scanner]
    return out


@pytest.mark.skipif(compiled is None, reason="built without extensions")
def test_compiled_and_twin_agree_on_generated_bytes() -> None:
    rng = random.Random(20)
    for sc in _scanners():
        needles, config, _ = prefilter_args(sc._others, sc._digit_dets)
        twin = scan_py.Prefilter(needles, **config)
        fast = compiled.Prefilter(needles, **config)
        assert fast.needles == twin.needles
        for _ in range(1500):
            data = _random_bytes(rng)
            assert fast.scan(data) == twin.scan(data), data


def _unfiltered(sc: Scanner, text: str) -> list[tuple[str, int, int]]:
    return [(f.detector.name, f.start, f.end) for f in sc._scan(text, -1)]


def _found(sc: Scanner, text: str) -> list[tuple[str, int, int]]:
    return [(f.detector.name, f.start, f.end) for f in sc.scan(text)]


def test_prefilter_never_hides_a_finding_of_the_corpus() -> None:
    """Every finding the detectors make over the whole text is made behind the prefilter too."""
    rng = random.Random(7)
    guard = _guard({"input": dict.fromkeys(DETECTORS, "mask"), "output": dict.fromkeys(DETECTORS, "mask")})
    sc = guard.input.scanner
    planted = 0
    for _ in range(1500):
        case = _case(rng)
        want = _unfiltered(sc, case.text)
        assert _found(sc, case.text) == want, case.text
        planted += bool(want)
    assert planted > 1000


def test_prefilter_never_hides_a_finding_of_generated_text() -> None:
    rng = random.Random(11)
    for sc in _scanners():
        for _ in range(800):
            text = _random_bytes(rng).decode("utf-8", "surrogateescape")
            if sc.prefilter.scan(text.encode("utf-8", "surrogateescape")) & scan.ESCAPE:
                continue  # decoded first: compared in the escape tests
            assert _found(sc, text) == _unfiltered(sc, text), text


def test_ordinary_text_and_answers_have_no_candidate() -> None:
    g = _typical()
    request = json.dumps({"model": "m", "messages": [{"role": "user", "content": _TEXT}]}).encode()
    answer = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1795368548, "model": "mock-1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "three bullet points"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 6, "completion_tokens": 12, "total_tokens": 18,
                  "completion_tokens_details": {"reasoning_tokens": 0}}}).encode()
    assert g.input.scanner.prefilter.scan(request) == 0
    assert g.output.scanner.prefilter.scan(answer) == 0
    pii = json.dumps({"model": "m", "messages": [{"role": "user", "content": _PII}]}).encode()
    assert g.input.scanner.prefilter.scan(pii) != 0


@pytest.mark.parametrize(("text", "kind"), [
    ("mail alice.smith\\u0040example.com now", "email"),
    ("card \\u0034111 1111 1111 1111 ok", "card"),
    ("card 4111\\u00201111 1111 1111 ok", "card"),
    ("key sk\\u002dproj-abcdefghijklmnopqrstuvwxyz012345 ok", "api_key"),
    ("iban D\\u0045\\u00389 3704 0044 0532 0130 00 ok", "iban"),
])
def test_json_escapes_do_not_hide_a_finding(text: str, kind: str) -> None:
    sc = _guard({"input": dict.fromkeys(BUILTIN, "mask")}).input.scanner
    found = sc.scan(text)
    assert [f.detector.name for f in found] == [kind], found
    f = found[0]
    # the span covers the escaped text: masking it replaces the escapes too
    plain = unescape(text)
    assert plain is not None
    assert json.loads('"' + text[f.start:f.end] + '"') in plain[0]


def test_escaped_backslash_is_not_an_escape() -> None:
    assert unescape("a\\\\u0040b") is None
    plain = unescape("x\\u0040y\\/z\\u0022\\n")
    assert plain is not None and plain[0] == "x@y/z\\u0022\\n"
    assert plain[1][:3] == [0, 1, 7]


def test_escapes_of_characters_no_detector_reads_stay_on_the_fast_path() -> None:
    g = _guard({"input": {"email": "mask", "card": "block", "phone": "mask"}})
    body = b'{"content":"a \\u003cb\\u003e \\u0026 https:\\/\\/example.org caf\\u00e9 \\u4e2d"}'
    assert g.input.scanner.prefilter.scan(body) == 0
    # a secret's value may hold a "/": with API keys on, an escaped one is decoded first
    assert _typical().input.scanner.prefilter.scan(body) == scan.ESCAPE


def test_case_mapping_hazards_fire_folded_needles() -> None:
    sc = _typical().input.scanner
    # the Kelvin sign lowers to "k": "internal only" with it is still found by the deny list
    text = "about project phoenix"
    assert sc.prefilter.scan(text.encode()) != 0
    assert sc.prefilter.scan("a \u212a b".encode()) != 0
    assert sc.prefilter.scan(b"a k b") == 0


@pytest.mark.parametrize("pieces", [2, 3, 10])
def test_stream_window_catches_values_split_across_chunks(pieces: int) -> None:
    g = _guard({"output": {"card": "mask", "email": "mask"}})
    text = "pay 4111 1111 1111 1111 or mail alice\\u0040example.com, thanks"
    size = -(-len(text) // pieces)
    window = Window(g.output, Masker(), "t")
    out = "".join(window.feed(text[i:i + size]) for i in range(0, len(text), size)) + window.flush()
    assert "4111" not in out and "alice" not in out
    assert "<CARD_1>" in out and "<EMAIL_1>" in out


def test_required_literal() -> None:
    assert required_literal("EMP-\\d{6}") == ("EMP-", False)
    assert required_literal("(?i)internal[- ]only") == ("internal", True)
    assert required_literal("a|b") is None
    assert required_literal("[A-Z]{3}#\\d+") == ("#", False)
    assert required_literal("\\d+") is None


def test_phone_min_is_a_lower_bound() -> None:
    import phonenumbers

    low = phone_min(("US", "GB", "DE", "FR"))
    assert 1 <= low <= 7
    for number in ("+1 415-555-0132", "030 1234", "+44 20 7946 0958", "+683 4002"):
        region = "DE" if number.startswith("0") else None
        parsed = phonenumbers.parse(number, region)
        digits = len(str(parsed.country_code)) + len(str(parsed.national_number)) \
            if number.startswith("+") else len([c for c in number if c.isdigit()])
        assert digits >= low
    assert phone_min(("ZZ",)) == 1
    assert phone_min(("US",)) == INTERNATIONAL_MIN
    # the constant is a lower bound of the library's own figure
    assert international_min() >= INTERNATIONAL_MIN


def test_ipv4_after_a_dash_is_a_candidate() -> None:
    sc = _guard({"input": {"ipv4": "mask"}}).input.scanner
    assert [f.detector.name for f in sc.scan("host-10.0.0.1 is up")] == ["ipv4"]
    assert sc.prefilter.scan(b"version 2.4.1-10.2 and a 1.2.3") == 0


#: the stream window's tail as one regex (its definition; ``_tail_start`` splits it for speed)
_ONE_TAIL = re.compile(
    r"(?:[+(]?\d[\d ().\-/]*"
    r"|[A-Z]{2}\d{2}(?: ?[A-Za-z0-9])* ?|[A-Z]{2} ?(?:\d{2} ?)*"
    r"|-----BEGIN[ A-Z0-9]*-{0,5}"
    r"|(?:[^\s\\\"<]|\\u[0-9a-fA-F]{4}|\\/)*(?:<[A-Z0-9_]*|\\(?:u[0-9a-fA-F]{0,3})?)?"
    r"|\\(?:u[0-9a-fA-F]{0,3})?|\\u003[cC][A-Z0-9_]*)\Z")


def test_window_tail_is_the_one_regex() -> None:
    from gateway.guard.masking import _tail_start

    rng = random.Random(3)
    pieces = ["a", "Z", "DE", "12", " ", "\\", "\\u00", "\\u0040", "<EM", "<", "-", "-----BEGIN", "+", "(",
              "x@y", '\\"', "\t", "\u2003", "\u00e9", "/", ".", "GB82"]
    for _ in range(20000):
        buf = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        lo = rng.randint(0, len(buf))
        m = _ONE_TAIL.search(buf, lo)
        assert _tail_start(buf, lo) == (m.start() if m is not None else len(buf)), (buf, lo)


@pytest.mark.parametrize("text", [
    "line\\n4111 1111 1111 1111 ok", "line\\tDE89 3704 0044 0532 0130 00", "x\\r+1 415 555 0132",
    "a\\n(415) 555-0132 b", ")\\n1.2.3.4(", "list\\n123-45-6789\\n", "pem\\n-----BEGIN PRIVATE KEY-----",
    "nino\\fAB 12 34 56 C", "mail\\nalice@example.com",
])
def test_a_value_right_after_a_line_break_escape_is_not_hidden(text: str) -> None:
    """The byte before such a value is the escape's letter (``\\n``): the prefilter, compiled and twin, looks
    at it as after a space, as the detectors do."""
    everything = _guard(EVERYTHING).input.scanner
    assert _found(everything, text) == _unfiltered(everything, text) != [], text
    data = text.encode()
    needles, config, _ = prefilter_args(everything._others, everything._digit_dets)
    twin = scan_py.Prefilter(needles, **config).scan(data)
    assert twin == everything.prefilter.scan(data)
    if compiled is not None:
        assert compiled.Prefilter(needles, **config).scan(data) == twin
