"""Types of the compiled guardrails prefilter; the twin ``scan_py`` documents the behaviour."""

from collections.abc import Iterable, Sequence
from typing import Any, final

__all__ = ["CARD", "DNI", "ESCAPE", "HAZARDS", "ID9", "IPV4", "IPV6", "NUMBER", "NUMBER_ANY", "PHONE",
           "UPPER", "Prefilter", "escape_table"]

NUMBER: int
ESCAPE: int
UPPER: int
IPV6: int
CARD: int
PHONE: int
ID9: int
DNI: int
IPV4: int
NUMBER_ANY: int
HAZARDS: frozenset[int]

@final
class Prefilter:
    @property
    def needles(self) -> tuple[tuple[bytes, int, bool, bytes], ...]: ...
    def __init__(
        self, needles: Iterable[tuple[Any, ...]] = ..., numeric: int = ..., phone_min: int = ...,
        upper: bool = ..., ipv6: bool = ..., escapes: bytes = ..., escape_non_ascii: bool = ...,
        vector: bool = ...
    ) -> None: ...
    def scan(self, data: bytes) -> int: ...

def escape_table(chars: Sequence[str] | str) -> bytes: ...
