"""Pure-Python twin of ``gateway._core._canon``: a JSON object in the response cache's canonical form.

The canonical form is the one ``gateway.cache.keys`` documents (its module docstring is the contract):
the body decoded, the top-level fields that do not change the answer left out, and encoded again with
object keys sorted at every depth and numbers in one form (an integral number an integer, any other the
shortest form that reads back as the same double, as msgspec writes it); strings compared decoded and
written as msgspec writes them. Two bodies have the same canonical form exactly when they ask the same.

This twin is the reference: it is the definition (msgspec's decoder with a float hook, then its sorted
encoder), and the compiled module must give the same bytes for every body (the tests compare both on
generated bodies). The compiled module writes the canonical form in one pass over the bytes and falls
back to this function for what it does not handle itself (keys written with escapes, repeated keys,
numbers with more than 15 significant digits or beyond 2**53, nesting past 200 levels, bodies that are
not JSON objects).

Sans-IO: bytes in, bytes out. ``canonical`` answers None when the body is not a JSON object (the caller
says why, ``gateway.cache.keys.request_form``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal
from typing import Any, Final

import msgspec

__all__ = ["Canonicaliser", "KeyHash", "canonical_json"]


def _number(text: str) -> Any:
    """A JSON number that is not a plain integer (``1.5``, ``1e3``, ``-0.0``) in its one canonical form."""
    f = float(text)
    if math.isfinite(f):
        if f.is_integer():
            return int(f)
        return f
    # beyond a double's range: the exact decimal value, written one way, tagged so it is never a string
    try:
        return "\x00num:" + format(Decimal(text).normalize(_WIDE), "E")
    except ArithmeticError:  # an exponent past even Decimal's widest range: the number as written
        return "\x00num:" + text


#: Decimal's default context (28 digits, half-even) with the widest exponent range: ``1e9999999999`` is
#: normalised instead of raising Overflow (which escaped as a 500)
_WIDE: Final = Context(prec=28, rounding=ROUND_HALF_EVEN, Emax=MAX_EMAX, Emin=MIN_EMIN)


# PERF: built once; the hook runs only for numbers written with a fraction or an exponent
#: a body decoded with its numbers in canonical form (raises msgspec.DecodeError)
decode_canonical: Final = msgspec.json.Decoder(float_hook=_number).decode
#: a decoded body written with its object keys sorted at every depth
encode_canonical: Final = msgspec.json.Encoder(order="sorted").encode


def canonical_json(body: bytes, ignored: Iterable[str] = ()) -> bytes | None:
    """``body`` in canonical form without its top-level fields ``ignored``; None when it is not a JSON
    object."""
    try:
        obj = decode_canonical(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    for name in ignored:
        obj.pop(name, None)
    return encode_canonical(obj)


class Canonicaliser:
    """The canonical form of one dialect's requests: the top-level fields it leaves out, fixed once (at
    import, not per request)."""

    __slots__ = ("ignored",)

    def __init__(self, ignored: Iterable[str] = ()) -> None:
        self.ignored: tuple[str, ...] = tuple(ignored)

    def canonical(self, body: bytes) -> bytes | None:
        """``body`` in canonical form without the ignored fields; None when it is not a JSON object."""
        return canonical_json(body, self.ignored)


class KeyHash:
    """A cache key's hash with its head already read: 32 bytes of BLAKE2b over the head (given once),
    then per request the dialect's header part (``extra``) and the canonical body. The compiled module
    runs BLAKE2b itself, on the bytes its walk wrote (no canonical bytes object, no hashlib calls)."""

    __slots__ = ("_hash", "form", "head")

    def __init__(self, head: bytes, form: Canonicaliser) -> None:
        self.head = head
        self.form = form
        self._hash = hashlib.blake2b(head, digest_size=32)

    def digest(self, extra: bytes, canon: bytes) -> bytes:
        """The key of a canonical body ``canon`` (already written)."""
        h = self._hash.copy()
        h.update(extra)
        h.update(canon)
        return h.digest()

    def key(self, extra: bytes, body: bytes) -> bytes | None:
        """The key of a request body, through ``form``'s canonical form; None when it is not a JSON
        object."""
        canon = self.form.canonical(body)
        return None if canon is None else self.digest(extra, canon)
