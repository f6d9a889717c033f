"""Answer ids in the client's dialect: a translated answer keeps its upstream's id, re-prefixed.

Each API names its answers its own way (OpenAI chat ``chatcmpl-…``, Anthropic ``msg_…``, Responses
``resp_…``), and clients and their tooling expect that prefix (logs, dashboards and SDK helpers match on
it). A translated answer carries the id its upstream gave it (a Bedrock answer has none; the gateway
names it from the request id), so a dialect encoder rewrites it with ``answer_id``:

    upstream id            Messages (msg_)           chat (chatcmpl-)
    chatcmpl-AbC12         msg_AbC12                 chatcmpl-AbC12   (unchanged)
    msg_01XyZ              msg_01XyZ  (unchanged)    chatcmpl-01XyZ
    9f1c…-uuid (Cohere)    msg_9f1c…-uuid            chatcmpl-9f1c…-uuid
    ""                     msg_<24 random hex>       chatcmpl-<24 random hex>

The suffix is the upstream id without a known dialect prefix, so the same upstream answer always gets
the same id (a record's upstream id can be found from the client's, and back). Only an answer with no
id at all gets a random one. Pure: no I/O.
"""

from __future__ import annotations

import secrets
from typing import Final

__all__ = ["CHAT_PREFIX", "MESSAGES_PREFIX", "answer_id", "random_hex"]

CHAT_PREFIX: Final = "chatcmpl-"
MESSAGES_PREFIX: Final = "msg_"

#: the prefixes of the dialects' answer ids, stripped before the target's is put on
_KNOWN: Final = ("chatcmpl-", "msg_", "resp_", "cmpl-")


def answer_id(upstream_id: str, prefix: str) -> str:
    """``upstream_id`` as an id that starts with ``prefix`` (unchanged when it already does)."""
    # PERF: one startswith on the common case (an id already in the target's style)
    if upstream_id.startswith(prefix) and len(upstream_id) > len(prefix):
        return upstream_id
    suffix = upstream_id
    for known in _KNOWN:
        if suffix.startswith(known):
            suffix = suffix[len(known):]
            break
    return prefix + (suffix or random_hex(12))


class _RandomBytes:
    """Bytes from the OS's random source, read 4 KiB at a time. # PERF: a Responses answer takes three
    ids; a ``getrandom`` call for each cost more than the rest of making them."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._buf):
            self._buf = secrets.token_bytes(4096)
            pos = 0
        self._pos = pos + n
        return self._buf[pos:pos + n]


_random = _RandomBytes()


def random_hex(n: int) -> str:
    """``n`` random bytes (from the OS's source) as hex: the random part of an id."""
    return _random.take(n).hex()
