"""Types of the compiled JSON body checks; the twin ``jsoncheck_py`` documents the behaviour."""

from collections.abc import Iterable, Mapping

__all__ = ["TOO_DEEP", "KeyWatch", "check_json"]

TOO_DEEP: int

class KeyWatch:
    @property
    def paths(self) -> tuple[str, ...]: ...
    def __init__(
        self, keys: Iterable[str] = ..., nested: Mapping[str, Iterable[str]] | None = ...
    ) -> None: ...
    def check(self, data: bytes, max_depth: int) -> int: ...

def check_json(data: bytes, max_depth: int, watch: KeyWatch | None = None) -> int: ...
