"""Recall and precision of the guardrail detectors on a generated corpus.

    python -m bench.guard_corpus                   # 4,000 strings, seed 1
    python -m bench.guard_corpus --strings 10000 --seed 7

Each string is ordinary filler text (words, and distractors that must stay clean: dates, times, order and
invoice numbers, amounts, versions, code) with one planted value of a known type (e-mail, payment card,
IBAN, phone number) at a random position, in a random format. Each string is checked twice, as the
gateway sees text (JSON-escaped):

- ``scan``: the whole text at once (a prompt, a whole answer): a planted value counts as found when a
  finding of its detector covers it; every other finding of that detector is a false positive;
- ``stream``: the text cut into 2 to 20 pieces at random places and fed through the stream window with
  the detector masking: found when the planted value no longer appears in what the window released and
  a placeholder of its type does.

Recall = found / planted; precision = true findings / all findings of the detector (scan).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field

import msgspec
import phonenumbers

from gateway.guard.config import GuardPolicy
from gateway.guard.detectors import IBAN_LENGTHS, luhn_valid
from gateway.guard.masking import Masker, Window
from gateway.guard.policy import Guard

__all__ = ["DETECTORS", "Score", "run"]

DETECTORS = ("email", "card", "iban", "phone")
_KINDS = {"email": "EMAIL", "card": "CARD", "iban": "IBAN", "phone": "PHONE"}

_WORDS = ("the quick brown fox jumps over lazy dog please review attached report meeting tomorrow about "
          "budget plan team will ship release notes customer asked refund status update deploy server "
          "function returns value list item config file path user account login page error retry").split()
_TLDS = ("com", "org", "net", "io", "de", "co.uk", "fr", "dev")


def _distractor(rng: random.Random) -> str:
    pick = rng.randrange(12)
    if pick == 0:
        return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if pick == 1:
        return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2000, 2030)}"
    if pick == 2:
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    if pick == 3:
        return f"order {rng.randint(10**5, 10**10)}"
    if pick == 4:
        return f"INV-{rng.randint(2000, 2030)}-{rng.randint(1, 9999):04d}"
    if pick == 5:
        return f"${rng.randint(1, 99)},{rng.randint(100, 999)}.{rng.randint(0, 99):02d}"
    if pick == 6:
        return f"v{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}"
    if pick == 7:
        return f"x = {rng.randint(0, 10**6)} * {rng.randint(2, 99)};"
    if pick == 8:
        return f"ticket #{rng.randint(100, 99999)}"
    if pick == 9:
        return f"{rng.randint(1, 100)}%"
    if pick == 10:
        return f"arr[{rng.randint(0, 999)}]"
    return f"line {rng.randint(1, 5000)}\n"


def _email(rng: random.Random) -> str:
    local = rng.choice(_WORDS) + rng.choice(("", ".", "_", "+", "-")) + rng.choice(_WORDS)
    if rng.random() < 0.3:
        local += str(rng.randint(1, 999))
    domain = rng.choice(_WORDS) + rng.choice(("", "-" + rng.choice(_WORDS)))
    return f"{local}@{domain}.{rng.choice(_TLDS)}"


_CARD_PREFIXES = (("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                  ("6011", 16), ("65", 16), ("3530", 16), ("36", 14))


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice(_CARD_PREFIXES)
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    check = next(str(d) for d in range(10) if luhn_valid(body + str(d)))
    digits = body + check
    style = rng.randrange(3)
    if style == 0:
        return digits
    sep = " " if style == 1 else "-"
    if length == 15:
        return sep.join((digits[:4], digits[4:10], digits[10:]))
    return sep.join(digits[i:i + 4] for i in range(0, length, 4))


_IBAN_COUNTRIES = ("DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE", "AT", "PL", "SE", "IE")


def _iban(rng: random.Random) -> str:
    country = rng.choice(_IBAN_COUNTRIES)
    length = IBAN_LENGTHS[country]
    letters = {"GB": 4, "NL": 4, "IE": 4}.get(country, 0)
    bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters))
    bban += "".join(str(rng.randrange(10)) for _ in range(length - 4 - letters))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    iban = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        return iban
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))


_PHONE_REGIONS = ("US", "GB", "DE", "FR")
_PHONE_TYPES = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE)
_FORMATS = (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL,
            phonenumbers.PhoneNumberFormat.E164)


def _phone(rng: random.Random) -> str:
    while True:
        region = rng.choice(_PHONE_REGIONS)
        example = phonenumbers.example_number_for_type(region, rng.choice(_PHONE_TYPES))
        if example is None:
            continue
        national = str(example.national_number)
        keep = max(3, len(national) - 4)
        national = national[:keep] + "".join(str(rng.randrange(10)) for _ in range(len(national) - keep))
        number = phonenumbers.parse("+" + str(example.country_code) + national, None)
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, rng.choice(_FORMATS))


_MAKERS = {"email": _email, "card": _card, "iban": _iban, "phone": _phone}


@dataclass
class Score:
    planted: int = 0
    found: int = 0
    false_positives: int = 0
    stream_found: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.planted if self.planted else 1.0

    @property
    def precision(self) -> float:
        true = self.found
        return true / (true + self.false_positives) if true + self.false_positives else 1.0

    @property
    def stream_recall(self) -> float:
        return self.stream_found / self.planted if self.planted else 1.0


@dataclass
class _Case:
    text: str
    kind: str
    value: str
    start: int = field(default=0)


def _case(rng: random.Random) -> _Case:
    kind = rng.choice(DETECTORS)
    value = _MAKERS[kind](rng)
    words: list[str] = []
    for _ in range(rng.randint(5, 40)):
        words.append(_distractor(rng) if rng.random() < 0.25 else rng.choice(_WORDS))
    at = rng.randint(0, len(words))
    before = " ".join(words[:at]) + (" " if at else "")
    after = (" " if at < len(words) else "") + " ".join(words[at:])
    escaped_before = json.dumps(before)[1:-1]
    text = escaped_before + value + json.dumps(after)[1:-1]
    return _Case(text, kind, value, len(escaped_before))


def _guard(detectors: tuple[str, ...] = DETECTORS) -> Guard:
    actions = dict.fromkeys(detectors, "mask")
    policy = msgspec.convert({"input": actions, "output": actions}, GuardPolicy)
    return Guard([("corpus", policy)])


def _chunks(rng: random.Random, text: str) -> list[str]:
    k = rng.randint(2, 20)
    cuts = sorted(rng.sample(range(1, len(text)), min(k - 1, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def run(strings: int = 4000, seed: int = 1, detectors: tuple[str, ...] = DETECTORS) -> dict[str, Score]:
    """The corpus' scores with a policy that masks ``detectors`` (the others' values are planted still,
    and count as missed)."""
    rng = random.Random(seed)
    guard = _guard(detectors)
    scores = {d: Score() for d in DETECTORS}
    for _ in range(strings):
        case = _case(rng)
        score = scores[case.kind]
        score.planted += 1
        end = case.start + len(case.value)
        for f in guard.input.scanner.scan(case.text):
            name = f.detector.name
            if name == case.kind and f.start <= case.start and f.end >= end:
                score.found += 1
            else:
                scores[name].false_positives += 1
        window = Window(guard.output, Masker(), "corpus")
        out = "".join(window.feed(piece) for piece in _chunks(rng, case.text)) + window.flush()
        if case.value not in out and f"<{_KINDS[case.kind]}_" in out:
            score.stream_found += 1
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strings", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    scores = run(args.strings, args.seed)
    print(f"{'detector':<10} {'planted':>8} {'recall':>8} {'precision':>10} {'stream recall':>14}")
    for name, s in scores.items():
        print(f"{name:<10} {s.planted:>8} {s.recall:>8.4f} {s.precision:>10.4f} {s.stream_recall:>14.4f}")


if __name__ == "__main__":
    main()
