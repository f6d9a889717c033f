"""The triggers of a scanner's detectors, compiled into one prefilter (``gateway._core.scan``).

A ``Scanner`` (``gateway.guard.detectors``) asks its prefilter first, over the raw bytes: the answer is a
mask of the triggers present, and only the detectors whose trigger fired run (none at all for ordinary
text, which is then not even decoded). What each detector's trigger is, and why it is a necessary
condition of any of its findings:

    detector         | trigger                              | why nothing is missed
    -----------------+--------------------------------------+------------------------------------------
    email            | needle ``@``                         | the regex has a literal ``@``
    api_key prefixes | needles ``sk-``, ``AKIA`` ... ``hf_``| each regex begins with that literal
    api_key secret   | folded needles ``api`` ... ``passw`` | its words begin so, any case
    private_key      | needle ``-----BEGIN``                | the regex begins with it
    deny             | folded needles: each word (its       | a word is found in the lower-cased text;
                     | longest ASCII run when it has other  | a regex only where its literal is
                     | letters), each regex's required      |
                     | literal (none: always runs)          |
    custom           | the regex's required literal (folded)| a literal outside any group or repeat is
                     | or none: always runs                 | in every match
    card, phone,     | NUMBER (``gateway._core.scan_py``)   | the start, digit count and shape each
    ids, ipv4        |                                      | regex and validator require
    iban, uk_nino    | UPPER                                | two capitals, then a digit
    ipv6             | IPV6                                 | an address has two colons
    every detector   | ESCAPE: a JSON escape of a character | the text is scanned with those escapes
                     | that matters (``\\u0040`` for ``@``)  | decoded, the findings mapped back

Folded needles also fire on the few non-ASCII characters whose case mapping reaches ASCII (the Kelvin
sign lowers to ``k``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway._core import scan as _scan

if TYPE_CHECKING:
    from gateway.guard.detectors import Detector

__all__ = [
    "BUILTIN_BITS",
    "INTERNATIONAL_MIN",
    "custom_needles",
    "deny_needles",
    "international_min",
    "phone_min",
    "prefilter",
    "prefilter_args",
    "required_literal",
    "unescape",
]

#: the mask bits of the built-in triggers; a needle's bit is ``1 << (FIRST_NEEDLE_BIT + its detector)``
BUILTIN_BITS = _scan.NUMBER | _scan.ESCAPE | _scan.UPPER | _scan.IPV6
FIRST_NEEDLE_BIT = 4
_MAX_BIT = 63

#: the numeric detectors' flags, by name
_NUMERIC = {"card": _scan.CARD, "phone": _scan.PHONE, "us_ssn": _scan.ID9, "ca_sin": _scan.ID9,
            "es_dni": _scan.DNI, "ipv4": _scan.IPV4}
#: escaped ASCII characters that matter to no built-in detector but the ones named (Go escapes ``<>&``,
#: PHP escapes ``/``: a prompt with them stays on the fast path)
_QUIET = {'"': (), "\\": (), "<": (), ">": (), "&": (), "'": ("api_key",), "/": ("api_key", "private_key")}


def required_literal(pattern: str) -> tuple[str, bool] | None:
    """The longest literal every match of ``pattern`` contains, and whether the match ignores case; None
    when there is none (an alternation at the top, or only classes and groups)."""
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
        literal = re._constants.LITERAL  # type: ignore[attr-defined]
        ignorecase = bool(parsed.state.flags & re.IGNORECASE)
    except (re.error, AttributeError):
        return None
    best = ""
    run: list[str] = []
    for op, arg in [*parsed.data, (None, None)]:
        if op is literal:
            run.append(chr(arg))
            continue
        if len(run) > len(best):
            best = "".join(run)
        run = []
    return (best, ignorecase) if best else None


def _ascii_run(word: str) -> str:
    """The longest run of ASCII characters in ``word`` (lower case): what case folding keeps as is."""
    runs = re.findall(r"[\x00-\x7f]+", word.lower())
    return max(runs, key=len, default="")


#: at most the fewest digits of a valid number written with its country code, any country (the code's
#: digits and its shortest national number: 6 with ``phonenumbers`` 8.13; one less for a margin).
#: ``tests/unit/test_guard_scan.py`` computes it from the library's metadata and checks this bound.
#: # PERF: a constant, not the computation: that loads every region's metadata (0.1 s, 8 MB a worker)
INTERNATIONAL_MIN = 5


@functools.lru_cache(maxsize=64)
def phone_min(regions: tuple[str, ...]) -> int:
    """The fewest digits of a number ``phonenumbers`` finds valid: with a country code (any country:
    ``INTERNATIONAL_MIN``), or national in one of ``regions``."""
    import phonenumbers

    best = INTERNATIONAL_MIN
    for region in regions:
        low = _shortest(phonenumbers.PhoneMetadata.metadata_for_region(region))
        if low is None:
            return 1  # a region the library does not know: be safe
        best = min(best, low)
    return best


def international_min() -> int:
    """The fewest digits of a valid number with its country code, from every region's metadata (slow)."""
    import phonenumbers
    from phonenumbers import PhoneMetadata

    best = 99
    for region in phonenumbers.SUPPORTED_REGIONS:
        low = _shortest(PhoneMetadata.metadata_for_region(region))
        if low is not None:
            best = min(best, len(str(phonenumbers.country_code_for_region(region))) + low)
    for cc in phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS:
        low = _shortest(PhoneMetadata.metadata_for_nongeo_region(cc))
        if low is not None:
            best = min(best, len(str(cc)) + low)
    return best


def _shortest(md: object) -> int | None:
    """The shortest national number of a region's metadata (None: no metadata)."""
    if md is None:
        return None
    lengths = [n for name in ("general_desc", "fixed_line", "mobile", "toll_free", "premium_rate",
                              "shared_cost", "personal_number", "voip", "pager", "uan", "voicemail")
               for desc in (getattr(md, name, None),) if desc is not None
               for n in (desc.possible_length or ()) if n > 0]
    return min(lengths) if lengths else None


def prefilter(others: Sequence[Detector], numeric: Sequence[Detector]) -> tuple[object, tuple[int, ...]]:
    """The prefilter of a scanner, and the bit of each of ``others`` (0: it always runs)."""
    needles, config, bits = prefilter_args(others, numeric)
    return _scan.Prefilter(needles, **config), bits


def prefilter_args(others: Sequence[Detector], numeric: Sequence[Detector]
                   ) -> tuple[list[tuple[bytes, int, bool, bytes]], dict[str, Any], tuple[int, ...]]:
    """What ``prefilter`` builds the prefilter of: its needles, its other arguments, and the bits."""
    needles: list[tuple[bytes, int, bool, bytes]] = []
    bits: list[int] = []
    upper = ipv6 = False
    quiet = dict(_QUIET)
    non_ascii = False
    names = {d.name for d in (*others, *numeric)}
    for i, d in enumerate(others):
        if d.trigger == "upper":
            bits.append(_scan.UPPER)
            upper = True
            continue
        if d.trigger == "ipv6":
            bits.append(_scan.IPV6)
            ipv6 = True
            continue
        if d.needles is None:
            bits.append(0)
        else:
            bit = 1 << min(FIRST_NEEDLE_BIT + i, _MAX_BIT)
            bits.append(bit)
            after = d.needle_after.encode("utf-8", "surrogateescape")
            needles.extend((n.encode("utf-8", "surrogateescape"), bit, d.lower, after) for n in d.needles)
        if d.sources:
            non_ascii = non_ascii or not d.sources.isascii()
            for ch in d.sources:
                quiet.pop(ch, None)
    flags = 0
    low = 99
    for d in numeric:
        flag = _NUMERIC.get(d.name, _scan.NUMBER_ANY)
        flags |= flag
        if flag == _scan.PHONE:
            low = min(low, d.min_digits)
    escapes = bytearray(128)
    for c in range(32, 127):
        ch = chr(c)
        if ch not in quiet or any(n in names for n in quiet[ch]):
            escapes[c] = 1
    config = {"numeric": flags, "phone_min": low if low < 99 else 1, "upper": upper, "ipv6": ipv6,
              "escapes": bytes(escapes), "escape_non_ascii": non_ascii}
    return needles, config, tuple(bits)


def deny_needles(words: Sequence[str], patterns: Sequence[str]) -> tuple[str, ...] | None:
    """The folded needles of a deny list (None: a regex without a literal, the list always runs)."""
    out: list[str] = []
    for w in words:
        run = _ascii_run(w)
        if not run:
            return None
        out.append(run)
    for p in patterns:
        lit = required_literal(p)
        if lit is None:
            return None
        run = _ascii_run(lit[0])
        if not run:
            return None
        out.append(run)
    return tuple(out)


def custom_needles(pattern: str) -> tuple[str, ...] | None:
    """The folded needle of a custom detector's regex (None: it always runs)."""
    lit = required_literal(pattern)
    if lit is None:
        return None
    run = _ascii_run(lit[0])
    return (run,) if run else None


_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(/)|.)", re.S)


def unescape(text: str) -> tuple[str, list[int]] | None:
    """``text`` with the JSON escapes of printable characters decoded (``\\u0040`` -> ``@``, ``\\/`` ->
    ``/``; quotes, backslashes, control characters and surrogates stay escaped), and where each character
    of it (and its end) came from in ``text``; None when there is nothing to decode."""
    pieces: list[str] = []
    where: list[int] = []
    pos = 0
    for m in _ESCAPE.finditer(text):
        hexa, slash = m.group(1), m.group(2)
        if hexa is not None:
            cp = int(hexa, 16)
            if cp < 0x20 or cp in (0x22, 0x5C, 0x7F) or 0xD800 <= cp <= 0xDFFF:
                continue
            ch = chr(cp)
        elif slash is not None:
            ch = "/"
        else:
            continue
        start = m.start()
        pieces.append(text[pos:start])
        where.extend(range(pos, start))
        pieces.append(ch)
        where.append(start)
        pos = m.end()
    if not pieces:
        return None
    pieces.append(text[pos:])
    where.extend(range(pos, len(text) + 1))
    return "".join(pieces), where
