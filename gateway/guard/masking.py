"""Acting on findings: masking with typed placeholders, restoring them, and the stream window.

Placeholders are ``<KIND_N>`` (``<EMAIL_1>``, ``<CARD_2>``), numbered per kind and per request; one value
gets one placeholder wherever it occurs. The request's ``Masker`` keeps both directions of the mapping,
so placeholders the provider repeats in its answer are put back (``restore``) before the client sees
it: the provider never sees the value, the user still does. A provider that escapes ``<`` and ``>`` in
JSON (``\\u003c``) is understood too.

The stream window (``Window``), one per choice of a streamed answer. Theory of operation:

    feed(text):  buffer = held + text
                 findings = scan(buffer)
                 cut = where a match could still be growing: the start of the buffer's tail that could
                       begin a finding (a run of non-space characters, a run of digits and separators,
                       an unfinished placeholder or escape), or of a finding that reaches the end or
                       crosses the cut; never more than ``max_len`` characters back
                 act on the findings before ``cut`` (block raises; mask replaces), restore placeholders
                 release buffer[:cut] at once, hold buffer[cut:]
    flush():     the stream's end: act on everything held and release it

So a value split across any number of chunks is whole in the buffer before it is released, and what is
held back is only the unfinished word or number at the end: time to first token grows by at most that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from gateway.guard.detectors import Finding
from gateway.guard.policy import Side

__all__ = ["Masker", "Window", "apply"]

log = logging.getLogger("gateway.guard")

_PLACEHOLDER = re.compile(r"(?:<|\\u003[cC])([A-Z][A-Z0-9_]{0,40}_\d{1,6})(?:>|\\u003[eE])")
#: the tail of a buffer that could still become (part of) a finding or a placeholder: what may hold spaces
#: (``_TAIL_SPACED``), or a word (``_TAIL_WORD``: no whitespace in it, so it is looked for in the last
#: word only). # PERF: one regex of all of them, searched from the window's start, cost ~6 us a chunk
_TAIL_SPACED = re.compile(
    r"(?:[+(]?\d[\d ().\-/]*"  # a number, perhaps with separators (card, phone, id, address)
    r"|[A-Z]{2}\d{2}(?: ?[A-Za-z0-9])* ?|[A-Z]{2} ?(?:\d ?)*"  # an IBAN, a NINO
    r"|-----BEGIN[ A-Z0-9]*-{0,5})\Z"  # a PEM header
)
_TAIL_WORD = re.compile(
    # a word (an e-mail, a key; escapes of its characters inside it), perhaps an unfinished placeholder or
    # escape
    r"(?:(?:[^\s\\\"<]|\\u[0-9a-fA-F]{4}|\\/)*(?:<[A-Z0-9_]*|\\(?:u[0-9a-fA-F]{0,3})?)?"
    r"|\\(?:u[0-9a-fA-F]{0,3})?|\\u003[cC][A-Z0-9_]*)\Z"  # an unfinished escape or escaped placeholder
)


#: what a word-like tail holds when no detector finds anything inside a word: what a shaped finding can
#: begin with before ``_TAIL_SPACED`` knows it (an IBAN's or NINO's first capitals, a phone's ``+`` or
#: ``(``, a PEM header's first dashes and letters), an unfinished placeholder or escape
_TAIL_MARK = re.compile(
    r"(?:[A-Z]{1,2}\d?|[+(]|-{1,5}(?:B(?:E(?:G(?:I(?:N)?)?)?)?)?"
    r"|<[A-Z0-9_]*|\\(?:u[0-9a-fA-F]{0,3})?|\\u003[cC][A-Z0-9_]*"
    # a run with an escape in it (the scan decodes \u0034, \u0020): held as a word
    r"|(?=\S*\\)(?:[^\s\\\"<]|\\u[0-9a-fA-F]{4}|\\/)*(?:<[A-Z0-9_]*|\\(?:u[0-9a-fA-F]{0,3})?)?)\Z"
)


def _tail_start(buf: str, lo: int, words: bool = True) -> int:
    """Where the tail of ``buf`` that could still grow into a finding begins (not before ``lo``);
    ``words``: an unfinished word could (else only a number, an IBAN, a PEM header, a placeholder or an
    escape)."""
    n = len(buf)
    m = _TAIL_SPACED.search(buf, lo)
    start = m.start() if m is not None else n
    if n and not buf[-1].isspace():
        word = n - len(buf.rsplit(None, 1)[-1])  # a word-like tail holds no whitespace
        m = (_TAIL_WORD if words else _TAIL_MARK).search(buf, max(lo, word))
        if m is not None and m.start() < start:
            start = m.start()
    return start


def _phrase_start(buf: str, n: int, hold: int, phrases: tuple[str, ...]) -> int:
    """Where the tail of ``buf`` (``n`` characters) that a deny phrase could begin with begins (``n``:
    nowhere): the earliest start of a word among the last ``hold`` characters from which the rest of
    ``buf`` is the beginning of a phrase. With an escape in or next to the tail (the phrase is looked
    for decoded then: up to six times as long), or a lower case of another length, six times ``hold``."""
    lo = max(0, n - hold)
    tail = buf[lo:].lower()
    if "\\" in buf[max(0, lo - 6):n] or len(tail) != n - lo:
        return max(0, n - 6 * hold)
    for k in range(len(tail)):
        at = lo + k
        if at and buf[at - 1].isalnum():  # not a word's start
            continue
        rest = tail[k:]
        if any(w.startswith(rest) for w in phrases):
            return at
    return n


class Masker:
    """One request's placeholders, both ways."""

    __slots__ = ("counts", "originals", "placeholders", "withheld")

    def __init__(self) -> None:
        self.placeholders: dict[str, str] = {}  # original (as it appears in the JSON text) -> placeholder
        self.originals: dict[str, str] = {}  # placeholder name (EMAIL_1) -> original
        #: values masked in the answer: their placeholders are never restored
        self.withheld: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def placeholder(self, kind: str, value: str, restorable: bool = True) -> str:
        known = self.placeholders if restorable else self.withheld
        ph = known.get(value)
        if ph is None:
            n = self.counts[kind] = self.counts.get(kind, 0) + 1
            name = f"{kind}_{n}"
            ph = known[value] = f"<{name}>"
            if restorable:
                self.originals[name] = value
        return ph

    def restore(self, text: str) -> str:
        if not self.originals or "_" not in text:
            return text
        originals = self.originals
        return _PLACEHOLDER.sub(lambda m: originals.get(m.group(1), m.group(0)), text)


def apply(text: str, findings: Sequence[Finding], side: Side, masker: Masker, request_id: str,
          where: str) -> str:
    """Act on ``findings`` in ``text``: raise the block of the first blocking detector, log what is to
    be logged, and return the text with masked findings replaced (in a prompt by placeholders that the
    answer gets back restored; in an answer by placeholders that stay)."""
    restorable = where == "prompt"
    action, which = side.strictest(findings)
    if action == "block":
        assert which is not None
        name = which.detector.name
        log.warning("guardrail block: request %s, detector %s in the %s", request_id, name, where)
        raise side.errors[name]
    out: list[str] = []
    pos = 0
    actions = side.actions
    for f in findings:
        a = actions[f.detector.name]
        if a == "mask":
            out.append(text[pos:f.start])
            out.append(masker.placeholder(f.detector.kind, text[f.start:f.end], restorable))
            pos = f.end
        elif a == "log":
            log.info("guardrail finding: request %s, detector %s in the %s", request_id, f.detector.name,
                     where)
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _whole_placeholder(buf: str, cut: int) -> int:
    """Move ``cut`` back so that it does not split a placeholder (``<EMAIL_1>``, ``\\u003cEMAIL_1``)."""
    lo = max(0, cut - 56)
    i = max(buf.rfind("<", lo, cut), buf.rfind("\\u003c", lo, cut), buf.rfind("\\u003C", lo, cut))
    if i < 0:
        return cut
    m = _OPEN_PLACEHOLDER.match(buf, i)
    return i if m is not None and m.end() >= cut else cut


_OPEN_PLACEHOLDER = re.compile(r"(?:<|\\u003[cC])[A-Z0-9_]*")


def _safe_cut(buf: str, cut: int) -> int:
    """Move ``cut`` back so that it does not split a JSON escape (``\\n``, ``\\u00e9``)."""
    lo = max(0, cut - 6)
    i = buf.rfind("\\", lo, cut)
    while i >= 0:
        n = 0
        j = i
        while j >= 0 and buf[j] == "\\":
            n += 1
            j -= 1
        if n & 1:  # buf[i] starts an escape
            length = 6 if i + 1 < len(buf) and buf[i + 1] == "u" else 2
            if i + length > cut:
                return i
            return cut
        i = buf.rfind("\\", lo, j + 1) if j >= lo else -1
    return cut


class Window:
    """The sliding window over one choice's streamed text (see the module's theory of operation)."""

    __slots__ = ("buf", "masker", "max_hold", "request_id", "side", "words")

    def __init__(self, side: Side | None, masker: Masker, request_id: str) -> None:
        self.side = side
        self.masker = masker
        self.request_id = request_id
        self.buf = ""
        hold = 48  # the longest placeholder
        if side is not None:
            hold = max(hold, side.scanner.max_len, side.phrase_hold)
        self.max_hold = hold
        self.words = side is None or side.word_hold

    def feed(self, text: str) -> str:
        buf = self.buf + text if self.buf else text
        n = len(buf)
        side = self.side
        findings = side.scanner.scan(buf) if side is not None else []
        lo = max(0, n - self.max_hold)
        cut = _tail_start(buf, lo, self.words)
        if side is not None and side.phrases:
            cut = min(cut, _phrase_start(buf, n, side.phrase_hold - 1, side.phrases))
        for f in reversed(findings):
            # a finding that reaches the end may still grow; one across the cut is released whole
            if f.start < cut and (f.end >= n or f.end > cut):
                cut = f.start
        cut = _safe_cut(buf, _whole_placeholder(buf, cut))
        self.buf = buf[cut:]
        if cut == 0:
            return ""
        out = buf[:cut]
        done = [f for f in findings if f.end <= cut]
        if done and side is not None:
            out = apply(out, done, side, self.masker, self.request_id, "answer")
        return self.masker.restore(out)

    def flush(self) -> str:
        buf = self.buf
        self.buf = ""
        if not buf:
            return ""
        side = self.side
        if side is not None:
            findings = side.scanner.scan(buf)
            if findings:
                buf = apply(buf, findings, side, self.masker, self.request_id, "answer")
        return self.masker.restore(buf)
