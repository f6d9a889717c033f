"""Pure-Python twin of ``gateway._core._recline``: a buffer of JSON lines written member by member.

Theory of operation. A call record is one JSON object per line (``gateway.observe.records``), some 20
members, written at the request rate. Building a ``CallRecord`` Struct per request only to encode it
costs about as much again as the encoding; ``LineWriter`` writes the members straight into one buffer
instead (``gateway.observe.rows.encode_rows`` decides which members a row has), and ``take`` hands an
iteration's lines over as one ``bytes``. The output is what ``msgspec.json`` writes for the same record,
member for member, except for two kinds of number written from their digits:

    method      | writes                                    | as
    ------------+-------------------------------------------+---------------------------------------------
    ``string``  | a ``str``                                 | itself in quotes when plain ASCII (no control
                |                                           | character, quote or backslash), else encoded
    ``integer`` | an ``int``                                | its digits
    ``millis``  | a duration in ms                          | cut to 3 decimals (``x * 1000 // 1 / 1000``),
                |                                           | as ``repr`` writes that value
    ``micros``  | a time in seconds                         | rounded to 6 decimals, as ``repr`` writes it
    ``number``  | a ``float``, or the text of a number      | msgspec's shortest form; the text as it is
    ``raw``     | bytes already JSON                        | as they are

Anything of another type than the method expects is written as msgspec encodes it; a float that is not
finite as ``null``.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["LineWriter"]

_encode = msgspec.json.encode
#: beyond this many thousandths or millionths a value is written by msgspec (see ``_recline.pyx``)
_BIG = 4_000_000_000_000_000
_PLAIN = frozenset(range(32, 127)) - {34, 92}


def _decimals(whole: int, frac: int, places: int) -> bytes:
    text = str(frac).rjust(places, "0").rstrip("0") or "0"
    return b"%d.%s" % (whole, text.encode())


def _is_decimal(s: str) -> bool:
    if not (0 < len(s) < 32 and s.isascii() and s[0].isdigit() and s[-1].isdigit()):
        return False
    if s[0] == "0" and len(s) > 1 and s[1] != ".":
        return False
    return s.count(".") <= 1 and s.replace(".", "").isdigit()


def _floor(x: float) -> float:
    """``math.floor`` as C's ``floor``: a float, and infinities and NaN as they are."""
    return float(math.floor(x)) if math.isfinite(x) else x


class LineWriter:
    """An output buffer of JSON lines, written member by member (see the module's table). ``mark`` and
    ``cut`` take back a line that could not be finished."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def raw(self, data: bytes) -> None:
        self._buf += data

    def string(self, key: bytes, value: object) -> None:
        buf = self._buf
        buf += key
        if type(value) is str and value.isascii() and all(ord(c) in _PLAIN for c in value):
            buf += b'"%s"' % value.encode()
        else:
            buf += _encode(value)

    def integer(self, key: bytes, value: object) -> None:
        buf = self._buf
        buf += key
        if type(value) is int and -(1 << 63) <= value < (1 << 63):
            buf += b"%d" % value
        else:
            buf += _encode(value)

    def millis(self, key: bytes, value: float) -> None:
        """``value`` cut (not rounded) to three decimals."""
        self._fixed(key, _floor(float(value) * 1000.0), 1000, 3)

    def micros(self, key: bytes, value: float) -> None:
        """``value`` rounded to six decimals."""
        self._fixed(key, _floor(float(value) * 1_000_000.0 + 0.5), 1_000_000, 6)

    def _fixed(self, key: bytes, k: float, scale: int, places: int) -> None:
        """``k / scale`` (``k`` a whole number) with ``places`` decimals; else as msgspec writes it."""
        buf = self._buf
        buf += key
        if math.isfinite(k) and 0 <= k < _BIG:
            v = int(k)
            buf += _decimals(v // scale, v % scale, places)
        else:
            buf += _encode(k / scale)

    def number(self, key: bytes, value: object) -> None:
        buf = self._buf
        buf += key
        if type(value) is str:
            if _is_decimal(value):
                buf += value.encode()
                return
            value = float(value)
        buf += _encode(value)

    def mark(self) -> int:
        return len(self._buf)

    def cut(self, at: int) -> None:
        if 0 <= at < len(self._buf):
            del self._buf[at:]

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf = bytearray()
        return out

    @property
    def size(self) -> int:
        return len(self._buf)
