"""Pure-Python twin of ``gateway._core._jsoncheck``: what the JSON decoders cannot be trusted to refuse.

msgspec decodes nested arrays and objects by recursion, so a body nested a thousand levels deep raises
``RecursionError`` instead of a decode error; and it keeps the last of repeated keys without a word, so
``{"model": "cheap", "model": "dear"}`` is checked on one name while the upstream, which gets the bytes
as they are, may read the other. ``check_json`` looks at the bytes once, before any decoder does, and
answers both questions. It is not a validator: JSON it does not refuse may still be invalid, which the
decoder then says.

Theory of operation, one pass over the bytes:

    byte        | where                                   | action
    ------------+-----------------------------------------+----------------------------------------------
    ``{`` ``[`` | anywhere outside a string               | one level deeper; past ``max_depth``: refuse
    ``}`` ``]`` | anywhere outside a string               | one level up
    ``,``       | directly in the top-level object, or in | a key comes next
                | a watched object under it               |
    ``"``       | where a key comes next                  | read the key; a watched key seen before in
                |                                         | this object: refuse
    ``"``       | elsewhere                               | skip the string (escaped quotes included)
    other       |                                         | nothing

A key written with escapes (``"mod\\u0065l"``) is decoded before it is compared, as the decoder would.
A string that never ends stops the scan: there is nothing more to refuse, the decoder refuses the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

__all__ = ["TOO_DEEP", "KeyWatch", "check_json"]

#: ``check_json``'s answer for arrays and objects nested deeper than allowed
TOO_DEEP = -1

_STRUCTURE = re.compile(rb'[{}\[\],"]')


class KeyWatch:
    """The keys that may appear only once: keys of the top-level object, and, for some of them (``nested``),
    keys of the object that is their value. ``paths`` names them all, top-level keys first, as dotted
    paths; ``check_json`` answers with a 1-based index into it."""

    __slots__ = ("_inner", "_nested", "_top", "paths")

    def __init__(self, keys: Iterable[str] = (), nested: Mapping[str, Iterable[str]] | None = None) -> None:
        self.paths, self._top, self._nested, self._inner = watch_tables(keys, nested)

    def check(self, data: bytes, max_depth: int) -> int:
        """``check_json(data, max_depth, self)`` (the compiled engine calls it at C level)."""
        return check_json(data, max_depth, self)


_Tables = tuple[tuple[str, ...], tuple[bytes, ...], tuple[tuple[int, tuple[bytes, ...]] | None, ...], bool]


def watch_tables(keys: Iterable[str], nested: Mapping[str, Iterable[str]] | None) -> _Tables:
    """What a ``KeyWatch`` holds (both implementations build it here): its paths; the top-level keys as
    bytes; per top-level key, the index of its first inner path and its inner keys as bytes, or None;
    whether any key has inner keys."""
    top = list(keys)
    nested = nested or {}
    for name in nested:
        if name not in top:
            top.append(name)
    inner_of = [list(nested.get(name, ())) for name in top]
    paths = list(top)
    starts = []
    for name, inner in zip(top, inner_of, strict=True):
        starts.append(len(paths))
        paths.extend(f"{name}.{k}" for k in inner)
    if len(paths) > 64:
        raise ValueError("a KeyWatch holds at most 64 keys")
    tables = tuple(
        (start, tuple(k.encode() for k in inner)) if inner else None
        for start, inner in zip(starts, inner_of, strict=True)
    )
    return tuple(paths), tuple(name.encode() for name in top), tables, bool(nested)


def _string_end(data: bytes, start: int) -> int:
    """Index of the quote that ends the string opened at ``start`` (-1: it never ends)."""
    pos = start + 1
    while True:
        q = data.find(b'"', pos)
        if q < 0:
            return -1
        k = q - 1
        while k > start and data[k] == 0x5C:  # backslash
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q
        pos = q + 1


def _key_index(raw: bytes, names: tuple[bytes, ...]) -> int:
    """Index of the key ``raw`` (a string's bytes without the quotes) in ``names``, or -1."""
    if b"\\" in raw:
        try:
            raw = json.loads(b'"' + raw + b'"').encode("utf-8", "surrogatepass")
        except ValueError:
            return -1
    try:
        return names.index(raw)
    except ValueError:
        return -1


def check_json(data: bytes, max_depth: int, watch: KeyWatch | None = None) -> int:
    """0: nothing to refuse; ``TOO_DEEP``: arrays and objects nested deeper than ``max_depth``; n > 0: the
    key ``watch.paths[n - 1]`` appears twice in its object."""
    top: tuple[bytes, ...] = watch._top if watch is not None else ()
    nested = watch._nested if watch is not None else ()
    watch_inner = watch is not None and watch._inner
    depth = 0
    top_object = False  # the value at depth 1 is an object
    key_next = False  # directly in the top-level object, a key comes next
    seen = 0  # bits: top-level keys seen
    current = -1  # the last top-level key read (its index in ``top``), -1: not watched
    inner: tuple[int, tuple[bytes, ...]] | None = None  # the watched object at depth 2, if in one
    inner_next = False
    inner_seen = 0
    pos = 0
    search = _STRUCTURE.search
    while True:
        m = search(data, pos)
        if m is None:
            return 0
        i = m.start()
        c = data[i]
        pos = i + 1
        if c == 0x22:  # '"'
            end = _string_end(data, i)
            if end < 0:
                return 0
            pos = end + 1
            if depth == 1 and key_next:
                key_next = False
                current = _key_index(data[i + 1:end], top) if top else -1
                if current >= 0:
                    if seen >> current & 1:
                        return current + 1
                    seen |= 1 << current
            elif depth == 2 and inner_next and inner is not None:
                inner_next = False
                k = _key_index(data[i + 1:end], inner[1])
                if k >= 0:
                    if inner_seen >> k & 1:
                        return inner[0] + k + 1
                    inner_seen |= 1 << k
        elif c == 0x7B or c == 0x5B:  # '{' '['
            depth += 1
            if depth > max_depth:
                return TOO_DEEP
            if depth == 1:
                top_object = c == 0x7B
                key_next = top_object
                seen = 0
                current = -1
            elif depth == 2:
                inner = None
                if c == 0x7B and top_object and watch_inner and current >= 0:
                    inner = nested[current]
                    inner_next = True
                    inner_seen = 0
        elif c == 0x2C:  # ','
            if depth == 1:
                key_next = top_object
            elif depth == 2 and inner is not None:
                inner_next = True
        elif depth > 0:  # '}' ']'
            depth -= 1
