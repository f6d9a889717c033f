"""Built-in detectors of personal data and secrets, and the scanner that runs a set of them over text.

Theory of operation. Text is scanned as it travels: JSON-escaped (the inside of JSON strings, the bytes
of a request or answer body decoded as UTF-8), never decoded and re-encoded. A finding is a span of
that text; replacing it with a placeholder keeps the JSON valid (placeholders hold no quote and no
backslash), and restoring the original span puts back exactly the bytes the client sent.

Each detector is a candidate regex plus, for most, a validator (Luhn, mod-97, ``phonenumbers``,
``ipaddress``, entropy), so that the regex can be generous and the validator strict:

    detector      | type (placeholder) | candidate                         | validated by
    --------------+--------------------+-----------------------------------+------------------------------
    email         | EMAIL              | local@domain.tld                  | -
    phone         | PHONE              | digit runs with + ( ) - . spaces  | phonenumbers (regions given)
    card          | CARD               | 13-19 digits, spaces or dashes    | Luhn, and a card network IIN
    iban          | IBAN               | CC99 then 11-30 letters/digits    | the country's length, mod-97
    us_ssn ...    | US_SSN ...         | the format of each national id    | the format's own rules
    ipv4, ipv6    | IPV4, IPV6         | dotted quads, colon groups        | ipaddress
    api_key       | API_KEY            | known prefixes (sk-, AKIA, ghp_)  | length and entropy
                  |                    | or key=value after a secret word  |
    private_key   | PRIVATE_KEY        | a PEM BEGIN ... PRIVATE KEY line  | -
    custom        | the name, upper    | the configured regex              | -

Cost (the scan runs on every guarded request and answer): the scanner's prefilter
(``gateway.guard.triggers``, compiled in ``gateway._core._scan``) reads the bytes once and answers which
detectors' triggers are present (``@`` for e-mail, a number that a numeric detector could begin, two
capitals and a digit for IBAN, the key prefixes, the deny words, ...); only those detectors run, and text
without any trigger costs about a nanosecond a byte. Candidate regexes begin with the class of their
first character (the lookbehind that keeps them off the middle of a word comes after it), so that the
regex engine skips to candidates in C.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

from gateway._core.scan import ESCAPE as _ESCAPE_BIT
from gateway._core.scan import NUMBER as _NUMBER_BIT

__all__ = [
    "BUILTIN",
    "NATIONAL_IDS",
    "Detector",
    "Finding",
    "Scanner",
    "custom_detector",
    "deny_detector",
    "iban_valid",
    "luhn_valid",
]


class Finding:
    """One detected span of the scanned text."""

    __slots__ = ("detector", "end", "start")

    def __init__(self, detector: Detector, start: int, end: int) -> None:
        self.detector = detector
        self.start = start
        self.end = end

    def __repr__(self) -> str:
        return f"Finding({self.detector.name}, {self.start}, {self.end})"


#: a validator: (the text, the candidate's start, its end) -> the validated end (-1: not a finding)
Validator = Callable[[str, int, int], int]


class Detector:
    """A named candidate regex with an optional validator; ``kind`` names its placeholders."""

    __slots__ = ("digits", "finder", "kind", "lower", "max_len", "min_digits", "name",
                 "needle_after", "needles", "pattern", "sources", "trigger", "validate")

    def __init__(self, name: str, pattern: str, *, kind: str | None = None, validate: Validator | None = None,
                 needles: Sequence[str] | None = None, digits: bool = False, max_len: int = 128,
                 flags: int = 0) -> None:
        self.name = name
        self.kind = kind or name.upper()
        self.pattern = re.compile(pattern, flags)
        self.validate = validate
        #: run only when one of these substrings is in the text (None: always)
        self.needles = tuple(needles) if needles is not None else None
        #: a numeric detector: runs in the combined digit scan, only on text with a digit
        self.digits = digits
        #: the longest text a finding can span (a stream holds back no more than this)
        self.max_len = max_len
        #: the needles are lower case, looked for in the lower-cased text
        self.lower = False
        #: finds the candidates itself (text -> (start, end) pairs), instead of ``pattern.finditer``
        self.finder: Callable[[str], Iterable[tuple[int, int]]] | None = None
        #: a built-in trigger of the prefilter instead of needles: "upper" (two capitals then a digit),
        #: "ipv6" (two colons in a run of hex digits) (``gateway.guard.triggers``)
        self.trigger: str | None = None
        #: a phone detector: the fewest digits of a valid number
        self.min_digits = 1
        #: what was configured (a custom regex, a deny list): its characters matter when escaped
        self.sources = ""
        #: the characters that may follow a needle ("": any)
        self.needle_after = ""


# -- validators -------------------------------------------------------------------------------------------

def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_network(d: str) -> bool:
    """The number's first digits belong to a card network, with a length that network issues."""
    n = len(d)
    if d[0] == "4":
        return n in (13, 16, 19)
    two = int(d[:2])
    four = int(d[:4])
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    if d.startswith("6011") or two == 65 or 644 <= int(d[:3]) <= 649 or two == 62:
        return 16 <= n <= 19
    if 3528 <= four <= 3589:
        return 16 <= n <= 19
    if two in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19
    return False


def _group_ends(text: str, start: int, end: int, limit: int = 5) -> list[int]:
    """The candidate's end, then the ends of its shorter forms that drop whole trailing groups (a greedy
    candidate may have run on into the next number: "4111 1111 1111 1111 57%")."""
    ends = [end]
    i = end - 1
    while i > start and len(ends) < limit:
        if not text[i].isalnum() and text[i - 1].isalnum():
            ends.append(i)
        i -= 1
    return ends


def _card(text: str, start: int, end: int) -> int:
    for stop in _group_ends(text, start, end):
        digits = "".join(c for c in text[start:stop] if c.isdigit())
        if 13 <= len(digits) <= 19 and _card_network(digits) and luhn_valid(digits):
            return stop
    return -1


#: IBAN length by country (ISO 13616 registry)
IBAN_LENGTHS: Final = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(compact: str) -> bool:
    """An IBAN without spaces: its country's length and the mod-97 check (ISO 7064)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _iban(text: str, start: int, end: int) -> int:
    """The IBAN at ``start``: its country's length of letters and digits (spaces between groups skipped);
    the candidate may run on into the next word."""
    length = IBAN_LENGTHS.get(text[start:start + 2])
    if length is None:
        return -1
    chars: list[str] = []
    i = start
    while i < end and len(chars) < length:
        c = text[i]
        if c != " ":
            chars.append(c)
        i += 1
    if len(chars) != length or not iban_valid("".join(chars).upper()):
        return -1
    if i < len(text) and text[i].isalnum():  # the IBAN must end at a boundary
        return -1
    return i


def _ip(version: int) -> Validator:
    def check(text: str, start: int, end: int) -> int:
        try:
            addr = ipaddress.ip_address(text[start:end])
        except ValueError:
            return -1
        return end if addr.version == version else -1
    return check


def _entropy(s: str) -> float:
    counts: dict[str, int] = {}
    for c in s:
        counts[c] = counts.get(c, 0) + 1
    n = len(s)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


def _keyish(min_entropy: float) -> Validator:
    def check(text: str, start: int, end: int) -> int:
        return end if _entropy(text[start:end]) >= min_entropy else -1
    return check


def _secret_value(text: str, start: int, end: int) -> int:
    """``password = VALUE``: a finding only when the value looks random (entropy, mixed classes)."""
    m = _SECRET_VALUE.search(text, start, end)
    if m is None:
        return -1
    value = m.group(1)
    classes = sum(1 for test in (str.isdigit, str.isupper, str.islower) if any(test(c) for c in value))
    return end if classes >= 2 and _entropy(value) >= 3.3 else -1


_SECRET_VALUE = re.compile(r"[:=]\s*(?:\\?[\"'])?([A-Za-z0-9_\-+/=.]{16,})")


def _es_dni(text: str, start: int, end: int) -> int:
    raw = text[start:end].replace("-", "").replace(" ", "")
    return end if "TRWAGMYFPDXBNJZSQVHLCKE"[int(raw[:8]) % 23] == raw[8].upper() else -1


def _ca_sin(text: str, start: int, end: int) -> int:
    digits = "".join(c for c in text[start:end] if c.isdigit())
    return end if digits[0] not in "08" and luhn_valid(digits) else -1


# -- phone numbers ---------------------------------------------------------------------------------------

#: a date inside a phone candidate: never a phone number
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|^\d{4}[-/.]\d{1,2}$")


#: phone candidates whose verdict a validator remembers (then it forgets them all and starts again)
PHONE_MEMO = 4096


def phone_validator(regions: Sequence[str]) -> Validator:
    """Validates phone candidates with ``phonenumbers``' own matcher (which also knows dates and times):
    numbers with a ``+`` (or 00) by their own country code, others as numbers of each region in
    ``regions`` in turn. A finding must begin where the candidate does (a later start is tried as a
    candidate of its own); a bare run of digits not starting with 0 is an order number, not a phone.

    # PERF: the matcher costs tens of µs per candidate, and a chat sends its history again with every
    turn, so the same numbers come back request after request: the verdict of each candidate's text is
    remembered (up to ``PHONE_MEMO`` texts; it depends on that text alone)."""
    import phonenumbers

    matcher = phonenumbers.PhoneNumberMatcher
    valid = phonenumbers.Leniency.VALID
    tries = tuple(regions) or ("US",)
    memo: dict[str, int] = {}

    def verdict(cand_text: str) -> int:
        """Where the phone number that ``cand_text`` begins with ends in it; -1 if it begins with none."""
        for stop in _group_ends(cand_text, 0, len(cand_text), 4):
            cand = cand_text[:stop].rstrip(" .-(")
            if _DATE.search(cand) is not None or (cand.isdigit() and cand[0] != "0"):
                continue
            shift = 0
            if cand.startswith("00"):
                cand = "+" + cand[2:]
                shift = 1
            for region in tries:
                for m in matcher(cand, region, leniency=valid):
                    if m.start == 0 and m.end >= len(cand) - 1:
                        return m.end + shift
                    break
        return -1

    def check(text: str, start: int, end: int) -> int:
        if end < len(text) and text[end] == ":":  # a time: 2024-01-15 10:30
            return -1
        cand_text = text[start:end]
        found = memo.get(cand_text)
        if found is None:
            found = verdict(cand_text)
            if len(memo) >= PHONE_MEMO:
                memo.clear()
            memo[cand_text] = found
        return start + found if found >= 0 else -1

    return check


# -- the built-in detectors ------------------------------------------------------------------------------

_EMAIL = (r"(?<![\w.+%-])[A-Za-z0-9][\w.+%-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![\w-])")
_CARD = r"\d(?<![\w.,:#-]\d)[\d -]{11,22}\d(?![\w])"
_PHONE = r"[+(\d](?<![\w+/.,:#-][+(\d])[\d .\-()]{5,18}\d(?![\w/])"
_IPV4 = (r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
         r"(?![\w]|\.\d)")
_IPV6 = r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:|:)(?::?[0-9A-Fa-f]{1,4}|:){2,14}(?![\w:])"
_IBAN = r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Za-z0-9]){11,34}"
_PEM = (r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"(?:(?:[A-Za-z0-9+/=:\s,-]|\\n|\\r){0,16384}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----)?")

#: known key prefixes: (regex, literal needles); each regex begins with its first character, then the
#: lookbehind that keeps it off the middle of a word (``_key_regex``)
_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{20,}", ("sk-",)),
    (r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{20,}", ("sk-",)),
    (r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])", ("AKIA", "ASIA", "ABIA", "ACCA")),
    (r"gh[pousr]_[A-Za-z0-9]{36,255}", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    (r"github_pat_[A-Za-z0-9_]{22,255}", ("github_pat_",)),
    (r"xox[abposr]-[A-Za-z0-9-]{10,250}", ("xox",)),
    (r"AIza[0-9A-Za-z_-]{35}", ("AIza",)),
    (r"[sr]k_(?:live|test)_[0-9A-Za-z]{16,}", ("k_live_", "k_test_")),
    (r"glpat-[0-9A-Za-z_-]{20,}", ("glpat-",)),
    (r"hf_[A-Za-z]{34}", ("hf_",)),
)


def _key_regex(rx: str) -> str:
    """``rx`` not inside a word: the lookbehind after its literal prefix (or its first class), so that the
    regex engine skips to the prefix in C. # PERF: a leading lookbehind costs a try at every position of
    the text."""
    m = _LITERAL_PREFIX.match(rx)
    assert m is not None
    first = m.group()
    return f"{first}(?<![\\w-]{first}){rx[len(first):]}"


_LITERAL_PREFIX = re.compile(r"\[\w+\]|[\w-]+")


#: where a ``secret = value`` candidate may begin (lower case; each a prefix of the regex's words)
_SECRET_WORDS = ("api", "secret", "token", "passw")
#: the prefilter's needles of a ``secret = value`` candidate: each word of the regex, followed by a
#: quote, a backslash before one, ``:``, ``=``, or the first byte of whitespace (ASCII, or the lead byte
#: of a Unicode space), so that "total_tokens" in every answer is not one
_SECRET_NEEDLES = ("apikey", "api_key", "api-key", "secret", "token", "password", "passwd")
_SECRET_AFTER = "\\\"':= \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\udcc2\udce1\udce2\udce3"


def _key_detectors() -> list[Detector]:
    out = [
        Detector("api_key", _key_regex(rx), kind="API_KEY", validate=_keyish(3.0), needles=needles,
                 max_len=260)
        for rx, needles in _KEYS
    ]
    secret = Detector(
        "api_key",
        r"(?i:api[_-]?key|secret|token|password|passwd)(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?"
        r"[A-Za-z0-9_\-+/=.]{16,200}",
        kind="API_KEY", validate=_secret_value, needles=_SECRET_NEEDLES, max_len=240,
    )
    secret.needle_after = _SECRET_AFTER
    secret.lower = True
    secret.finder = _at_words(secret.pattern, _SECRET_WORDS)
    out.append(secret)
    return out


#: national id formats by name (``national_ids`` in a policy): (regex, validator)
NATIONAL_IDS: Final[dict[str, tuple[str, Validator | None]]] = {
    "us_ssn": (r"(?<![\w-])(?!000|666|9\d\d)\d{3}[- ](?!00)\d{2}[- ](?!0000)\d{4}(?![\w-])", None),
    "uk_nino": (r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?"
                r"\d{2} ?[A-D](?![A-Za-z0-9])", None),
    "ca_sin": (r"(?<![\w-])\d{3}[- ]\d{3}[- ]\d{3}(?![\w-])", _ca_sin),
    "es_dni": (r"(?<![\w-])\d{8}-?[A-HJ-NP-TV-Za-hj-np-tv-z](?![\w-])", _es_dni),
}


#: the last text lower-cased and its lower case: the scanner's needles, the secret words and the deny list
#: of one scan share one ``lower()`` (one event loop per worker: one scan at a time)
_last_lower: tuple[str, str] = ("", "")


def lowered(text: str) -> str:
    global _last_lower
    last = _last_lower
    if last[0] is text:
        return last[1]
    low = text.lower()
    if len(low) != len(text):  # a character whose lower case is longer ("İ"): keep it, keep the offsets
        low = "".join(c if len(lc := c.lower()) != 1 else lc for c in text)
    _last_lower = (text, low)
    return low


_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+%-")


def _email_finder(pattern: re.Pattern[str]) -> Callable[[str], Iterable[tuple[int, int]]]:
    """E-mail candidates around each ``@`` only (# PERF: the regex from every word start costs ~10x)."""
    def find(text: str) -> Iterator[tuple[int, int]]:
        at = text.find("@")
        done = 0
        while at >= 0:
            s = at
            while s > done and at - s < 64 and text[s - 1] in _LOCAL:
                s -= 1
            while s < at and not text[s].isalnum():
                s += 1
            m = pattern.match(text, s)
            if m is not None:
                done = m.end()
                yield m.span()
            at = text.find("@", max(at + 1, done))
    return find


def _at_words(pattern: re.Pattern[str], words: Sequence[str]) -> Callable[[str], Iterable[tuple[int, int]]]:
    """Candidates of ``pattern`` tried only where one of ``words`` begins (any case). # PERF: a regex
    that begins with a case-insensitive alternation costs a try at every position of the text."""
    def find(text: str) -> Iterator[tuple[int, int]]:
        low = lowered(text)
        starts = []
        for w in words:
            i = low.find(w)
            while i >= 0:
                starts.append(i)
                i = low.find(w, i + 1)
        done = 0
        for i in sorted(starts):
            if i < done:
                continue
            m = pattern.match(text, i)
            if m is not None:
                done = m.end()
                yield m.span()
    return find


def _deny_finder(words: Sequence[str],
                 rxs: Sequence[re.Pattern[str]]) -> Callable[[str], Iterable[tuple[int, int]]]:
    """Deny-list words by substring search in the lower-cased text, whole words only; regexes as they
    are."""
    words_low = tuple(w.lower() for w in words)

    def find(text: str) -> Iterator[tuple[int, int]]:
        low = lowered(text)
        for w in words_low:
            i = low.find(w)
            while i >= 0:
                j = i + len(w)
                if (i == 0 or not low[i - 1].isalnum()) and (j >= len(low) or not low[j].isalnum()):
                    yield i, j
                i = low.find(w, i + 1)
        for rx in rxs:  # each alone: a pattern may begin with its own flags, "(?i)..."
            for m in rx.finditer(text):
                yield m.span()
    return find


def deny_detector(words: Sequence[str], patterns: Sequence[str]) -> Detector:
    """The deny list as a detector (type DENIED)."""
    from gateway.guard.triggers import deny_needles

    longest = max((len(w) for w in words), default=64)
    d = Detector("deny", r"(?!)", kind="DENIED", max_len=max(longest, 64),
                 needles=deny_needles(words, patterns))
    d.finder = _deny_finder(words, [re.compile(p) for p in patterns])
    d.sources = "".join((*words, *patterns))
    d.lower = True
    return d


def custom_detector(name: str, pattern: str, max_len: int) -> Detector:
    """A configured regex (type: the name, upper case), run where its required literal is (any case)."""
    from gateway.guard.triggers import custom_needles

    d = Detector(name, pattern, kind=name.upper(), max_len=max_len, needles=custom_needles(pattern))
    d.lower = True
    d.sources = pattern
    return d


def builtin(name: str, *, phone_regions: Sequence[str] = ("US", "GB", "DE", "FR")) -> list[Detector]:
    """The detector(s) of a built-in name."""
    if name == "email":
        d = Detector("email", _EMAIL, needles=("@",), max_len=254)
        d.finder = _email_finder(d.pattern)
        return [d]
    if name == "phone":
        from gateway.guard.triggers import phone_min

        d = Detector("phone", _PHONE, validate=phone_validator(phone_regions), digits=True, max_len=32)
        d.min_digits = phone_min(tuple(phone_regions) or ("US",))
        return [d]
    if name == "card":
        return [Detector("card", _CARD, validate=_card, digits=True, max_len=40)]
    if name == "iban":
        d = Detector("iban", _IBAN, validate=_iban, max_len=48)
        d.trigger = "upper"
        return [d]
    if name == "ipv4":
        return [Detector("ipv4", _IPV4, validate=_ip(4), digits=True, max_len=15)]
    if name == "ipv6":
        d = Detector("ipv6", _IPV6, validate=_ip(6), max_len=45)
        d.trigger = "ipv6"
        return [d]
    if name == "api_key":
        return _key_detectors()
    if name == "private_key":
        return [Detector("private_key", _PEM, needles=("-----BEGIN",), max_len=40)]
    if name in NATIONAL_IDS:
        rx, validate = NATIONAL_IDS[name]
        digits = name != "uk_nino"
        d = Detector(name, rx, validate=validate, digits=digits, needles=None, max_len=20)
        if not digits:
            d.trigger = "upper"
        return [d]
    raise KeyError(name)


#: the names ``builtin`` knows
BUILTIN: Final = ("email", "phone", "card", "iban", "ipv4", "ipv6", "api_key", "private_key", *NATIONAL_IDS)

#: numeric detectors tried in this order at one candidate position (the strictest validators first)
_DIGIT_ORDER = ("card", "us_ssn", "ca_sin", "es_dni", "ipv4", "phone")
#: where a numeric candidate may begin: not inside a word, then five or more characters of a number and a
#: digit (every numeric detector's candidate is at least that: a superset, so no candidate is lost;
#: "48213 " or "2.4.1 " are passed over in C)
_NUMBER_START = re.compile(r"[+(\d](?<!\w[+(\d])[\d .()/-]{5,}\d")
#: the same for ASCII text. # PERF: ``\d`` as the first class costs a Unicode category lookup at every
#: character of the text; ``0-9`` is a range test (3.5x faster over a typical prompt)
_NUMBER_START_ASCII = re.compile(r"[+(0-9](?<!\w[+(\d])[\d .()/-]{5,}\d")
#: how far a JSON number value is skipped (the old fixed-width prefilter's length)
_NUMBER_SKIP = 6


#: a JSON escape that stands for whitespace (``\\n``, ``\\t``, ...) or an escaped backslash, paired from the
#: left (``_blank_escapes``)
_SHORT_ESCAPE = re.compile(r"\\[ntrbf\\]")
_WS_ESCAPES = {"\\n": "\n\n", "\\t": "\t\t", "\\r": "\r\r", "\\f": "\f\f", "\\b": "\b\b", "\\\\": "\\\\"}


def _blank_escapes(text: str) -> str:
    """``text`` with each escape of a whitespace character written as two of that character (the same
    length, so the findings' offsets are the text's): a value or a word right after a line break is seen
    where it starts, and a line break still ends a number, as in the decoded text."""
    if "\\\\" in text:  # escaped backslashes: paired from the left ("\\\\n" is a backslash and an n)
        return _SHORT_ESCAPE.sub(lambda m: _WS_ESCAPES[m.group()], text)
    for esc, ws in _WS_ESCAPES.items():
        if esc in text:
            text = text.replace(esc, ws)
    return text


def _escape_start(text: str, start: int) -> int:
    """A span must not begin inside a JSON escape (``\\n`` before a word, ``\\u00e9``): past it."""
    n = 0
    i = start - 1
    while i >= 0 and text[i] == "\\":
        n += 1
        i -= 1
    if n & 1:  # text[start] is an escaped character
        return start + (5 if text[start] == "u" else 1)
    return start


def _is_json_number(text: str, start: int) -> bool:
    """The candidate is a JSON number value (``"created": 1733...``), not text inside a string."""
    i = start - 1
    while i >= 0 and text[i] == " ":
        i -= 1
    if i < 0:
        return False
    c = text[i]
    if c == ":":
        return i > 0 and text[i - 1] == '"'
    return c in "[,"


class Scanner:
    """A compiled set of detectors: ``scan(text)`` returns the findings, in order, not overlapping.

    # PERF: the prefilter (``gateway.guard.triggers``, compiled in ``gateway._core._scan``) reads the
    bytes once and answers which detectors' triggers are present; only those run. Ordinary text has
    none, and costs about a nanosecond a byte (``prefilter.scan(body)`` on the raw body: 0 means nothing
    to find, the body is not even decoded)."""

    __slots__ = ("_bits", "_digit_dets", "_digit_rx", "_others", "always", "detectors", "max_len",
                 "prefilter")

    def __init__(self, detectors: Iterable[Detector]) -> None:
        from gateway.guard.triggers import prefilter

        self.detectors = tuple(detectors)
        digit = sorted((d for d in self.detectors if d.digits),
                       key=lambda d: _DIGIT_ORDER.index(d.name) if d.name in _DIGIT_ORDER else -1)
        self._digit_dets = tuple(digit)
        # PERF: the numeric detectors share one pass: a prefilter finds where a number of six or more
        # characters begins (led by its first character's class, so the regex engine skips to it in C;
        # an alternation of the detectors' own regexes cost more than twice as much), then each
        # detector's regex is tried there
        self._digit_rx = _NUMBER_START if digit else None
        self._others = tuple(d for d in self.detectors if not d.digits)
        pre, bits = prefilter(self._others, self._digit_dets)
        #: the compiled prefilter: ``prefilter.scan(data: bytes) -> int``, the mask of triggers present
        self.prefilter: Any = pre
        #: each of ``_others``' trigger bit (0: it always runs)
        self._bits = bits
        #: some detector runs whatever the prefilter says (a custom regex without a literal)
        self.always = any(b == 0 for b in bits)
        self.max_len = max((d.max_len for d in self.detectors), default=0)

    def scan(self, text: str, mask: int | None = None) -> list[Finding]:
        """The findings in ``text``; ``mask``: the prefilter's answer for its bytes, when known."""
        if mask is None:
            mask = self.prefilter.scan(text.encode("utf-8", "surrogateescape"))
        if not mask and not self.always:
            return []
        if mask & _ESCAPE_BIT:
            return self._scan_unescaped(text)
        return self._scan(text, mask)

    def _scan(self, text: str, mask: int) -> list[Finding]:
        if "\\" in text:  # "\n4111 ...": the n of the escape is no letter before the value
            text = _blank_escapes(text)
        found: list[Finding] = []
        for d, bit in zip(self._others, self._bits, strict=True):
            if not bit or mask & bit:
                self._run(d, text, found)
        if self._digit_rx is not None and mask & _NUMBER_BIT:
            self._digits(text, found)
        if len(found) > 1:
            found.sort(key=lambda f: (f.start, -f.end))
            kept = [found[0]]
            for f in found[1:]:
                if f.start >= kept[-1].end:
                    kept.append(f)
            return kept
        return found

    def _scan_unescaped(self, text: str) -> list[Finding]:
        """A text with escaped characters that matter (``\\u0040``): scanned with them decoded, by every
        detector; the findings span the escaped text."""
        from gateway.guard.triggers import unescape

        decoded = unescape(text)
        if decoded is None:
            return self._scan(text, -1)
        plain, where = decoded
        out = []
        for f in self._scan(plain, -1):
            out.append(Finding(f.detector, where[f.start], where[f.end]))
        return out

    @staticmethod
    def _run(d: Detector, text: str, found: list[Finding]) -> None:
        validate = d.validate
        spans = d.finder(text) if d.finder is not None else (m.span() for m in d.pattern.finditer(text))
        for start, end in spans:
            if validate is not None:
                end = validate(text, start, end)
                if end < 0:
                    continue
            start = _escape_start(text, start)
            if start < end:
                found.append(Finding(d, start, end))

    def _digits(self, text: str, found: list[Finding]) -> None:
        rx = _NUMBER_START_ASCII if text.isascii() else self._digit_rx
        assert rx is not None
        dets = self._digit_dets
        pos = 0
        n = len(text)
        while pos < n:
            m = rx.search(text, pos)
            if m is None:
                return
            start = m.start()
            if _is_json_number(text, start):
                pos = start + _NUMBER_SKIP
                continue
            hit = None
            for d in dets:
                dm = d.pattern.match(text, start)
                if dm is None:
                    continue
                end = dm.end() if d.validate is None else d.validate(text, start, dm.end())
                if end > start:
                    hit = Finding(d, start, end)
                    break
            if hit is not None:
                found.append(hit)
                pos = hit.end
            else:  # a later start inside the candidate may still be a finding of its own
                pos = start + 1
