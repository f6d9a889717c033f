"""The compiled prefilter's shortcuts against its twin, which looks at every position.

The compiled scan looks for each needle at its anchor (its rarest three bytes, ``_anchor_of``), skips 16
positions at a time where the vector skip's buckets flag no pair (or eight, their pairs in one word,
without SSSE3: ``vector=False`` here), and
asks for a number only after a byte some enabled numeric detector accepts. Each must give the twin's
mask on any input: long quiet runs with a trigger at every offset (the skip's blocks and its last 17
bytes), needles in any case cut anywhere, policies with more anchors than buckets (merged buckets).
"""

from __future__ import annotations

import random

import msgspec
import pytest

from gateway._core import scan_py
from gateway.guard.config import GuardPolicy
from gateway.guard.detectors import BUILTIN, Scanner
from gateway.guard.policy import Guard
from gateway.guard.triggers import prefilter_args

try:
    from gateway._core import _scan as compiled
except ImportError:  # pragma: no cover - a build without extensions
    compiled = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(compiled is None, reason="built without extensions")

#: more deny words than the vector skip has buckets, anchored at every kind of offset
WORDS = ["project phoenix", "internal only", "confidential draft", "jellyfish", "quartz", "zebra crossing",
         "hush money", "black box", "vortex", "kiwi", "yak shaving", "mojo", "fjord", "glyph", "sphinx",
         "wombat", "xylophone", "ukulele", "banjo", "oboe", "tuba", "flute", "piano", "cello", "viola", "harp"]

POLICIES: list[dict[str, object]] = [
    {"input": {"email": "mask", "phone": "mask", "iban": "mask", "card": "block", "api_key": "block"},
     "output": {"email": "mask", "card": "block", "api_key": "block"},
     "deny": {"words": WORDS[:3], "action": "block"}},
    {"input": dict.fromkeys(BUILTIN, "mask"), "deny": {"words": WORDS, "patterns": ["(?i)top[- ]secret"]},
     "custom": [{"name": "employee_id", "pattern": "EMP-\\d{6}"}, {"name": "ticket", "pattern": "[A-Z]{3}#\\d+"}]},
    {"input": {"card": "block"}},
    {"input": {"email": "mask"}, "deny": {"words": ["a\\b", "caf\u00e9 noir"]}},
]

PIECES = [
    "the ", "and ", "to ", "in ", "con", "sec", "tok", "token", "tokens", "token:", "secret=", "password",
    "passwd ", "apikey", "api_key", "api-key", "sk-", "AKIA", "ghp_", "gho_", "github_pat_", "xox", "AIza",
    "hf_", "glpat-", "-----BEGIN", "@", " ", ".", "-", ":", ",", '"', "{", "}", "[", "]", "\\", "\\\\",
    "\\u0040", "\\/", "0", "1", "4", "12", "2024", "4111 1111 1111 1111", "+1 415-555-0132", "DE89 3704",
    "GB", "IN 2", "1.2.3.4", "fe80::1", "EMP-", "ABC#", "\u00e9", "\u212a", "\u0663", "\u6771",
    "\udcff", "TOP SECRET", "top-secret",
]


def _scanners() -> list[Scanner]:
    out = []
    for p in POLICIES:
        g = Guard([("p", msgspec.convert(p, GuardPolicy))])
        out += [s for s in (g.in_scanner, g.out_scanner) if s is not None]
    return out


def _pair(sc: Scanner, vector: bool) -> tuple[object, object]:
    needles, config, _ = prefilter_args(sc._others, sc._digit_dets)
    return compiled.Prefilter(needles, **config, vector=vector), scan_py.Prefilter(needles, **config)


def _cased(rng: random.Random, text: str) -> str:
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def _text(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 60)):
        r = rng.random()
        if r < 0.15:
            parts.append(_cased(rng, rng.choice(WORDS)))
        elif r < 0.25:
            word = rng.choice(WORDS)
            cut = rng.randint(1, len(word))
            parts.append(word[:cut] if rng.random() < 0.5 else word[cut - 1:])
        else:
            parts.append(rng.choice(PIECES))
    data = "".join(parts).encode("utf-8", "surrogateescape")
    if rng.random() < 0.2 and data:
        data = data[: rng.randint(0, len(data))]
    return data


@pytest.mark.parametrize("vector", [True, False], ids=["vector", "word"])
@pytest.mark.parametrize("seed", range(3))
def test_compiled_and_twin_agree_with_anchors_and_merged_buckets(seed: int, vector: bool) -> None:
    rng = random.Random(seed)
    for sc in _scanners():
        fast, twin = _pair(sc, vector)
        for _ in range(800):
            data = _text(rng)
            assert fast.scan(data) == twin.scan(data), data  # type: ignore[attr-defined]


@pytest.mark.parametrize("vector", [True, False], ids=["vector", "word"])
def test_a_trigger_at_every_offset_of_a_quiet_run(vector: bool) -> None:
    """Every offset of a 100-byte quiet run, so every place in the skip's 16- and 8-byte blocks and in
    its last bytes, holds each kind of trigger once (with the vector skip, and with the word-at-a-time
    skip of a CPU without SSSE3)."""
    quiet = b"we will meet there when the work is done and then we will all go home for the weekend now ok"
    triggers = [b"project phoenix", b"PROJECT PHOENIX", b"jellyfish", b"x@y", b" 4111 1111 1111 1111", b"\\u0040",
                b"sk-abcdefghij", b"AKIA", b"token:", b" +1 415-555-0132", b" DE89 3704", b"\xc3\xa9", b"EMP-1"]
    for sc in _scanners():
        fast, twin = _pair(sc, vector)
        for trigger in triggers:
            for cut in range(len(quiet) + 1):
                data = quiet[:cut] + trigger + quiet[cut:]
                assert fast.scan(data) == twin.scan(data), data  # type: ignore[attr-defined]
                tail = quiet[:cut] + trigger
                assert fast.scan(tail) == twin.scan(tail), tail  # type: ignore[attr-defined]


def test_anchor_is_inside_the_needle_and_avoids_common_pairs() -> None:
    anchor_of = compiled._anchor_of  # type: ignore[attr-defined]
    for needle, folded in [(b"project phoenix", True), (b"token", True), (b"AKIA", False), (b"@", False),
                           (b"sk-", False), (b"a\\bcd", True), (b"caf\xc3\xa9 noir", True)]:
        k = anchor_of(needle, folded)
        assert 0 <= k <= max(len(needle) - 3, 0)
    assert anchor_of(b"project phoenix", True) != 0  # "pr" begins too many words
    assert anchor_of(b"a\\bcd", True) == 0  # a backslash: where the twin looks
    assert anchor_of(b"caf\xc3\xa9 noir", True) == 0  # a non-ASCII byte: the same
