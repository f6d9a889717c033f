"""The prompts of one runtime snapshot: compiled versions, the custom paths, the choice of a version.

Choosing a version of a split (``split_on``):

    split_on  | the caller's key               | no key (auth off)
    ----------+--------------------------------+------------------------------------------------
    "key"     | hash(prompt, key id): stable,  | hash(prompt, x-request-id) when the header is
              | a key stays on its version     | given, else a random draw per request
    "request" | hash(prompt, x-request-id) when the header is given, else a random draw

The hash is blake2b over the prompt name and the id, read as a point in [0, 100); each version owns a
range of the width of its share, in the order of the config's ``split`` table. Changing the shares moves
only the callers whose point falls in a changed range. With no ``split`` every call gets ``live``.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any

from gateway.prompts.render import CompiledVersion, compile_version

if TYPE_CHECKING:
    from gateway.prompts.config import PromptConfig

__all__ = ["Prompt", "PromptTable"]


class Prompt:
    """One prompt, compiled."""

    __slots__ = ("approval", "config", "description", "live", "name", "path", "scope", "split",
                 "split_on", "versions")

    def __init__(self, name: str, config: PromptConfig) -> None:
        self.name = name
        self.config = config
        #: the entry a key's ``models`` list needs (and the subscription's model name)
        self.scope = f"prompt:{name}"
        self.description = config.description
        self.path = config.path
        self.approval = config.approval == "required"
        self.split_on = config.split_on
        # PERF: templates and schema validators compiled once per version, here, not per request
        self.versions = {v: compile_version(name, v, vc) for v, vc in config.versions.items()}
        self.live = self.versions[config.live]
        split: list[tuple[float, CompiledVersion]] = []
        edge = 0.0
        for v, share in config.split.items():
            if share > 0:
                edge += share
                split.append((edge, self.versions[v]))
        #: (upper edge of the range, version) in order; empty: ``live`` only
        self.split = tuple(split)

    def choose(self, key_id: str | None, request_id: bytes | None) -> CompiledVersion:
        split = self.split
        if not split:
            return self.live
        ident: str | None = key_id if self.split_on == "key" and key_id is not None else None
        if ident is None and request_id is not None:
            ident = "r:" + request_id.decode("latin-1")
        if ident is None:
            point = random.random() * 100.0
        else:
            digest = hashlib.blake2b(f"{self.name}\0{ident}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64 * 100.0
        for edge, version in split:
            if point < edge:
                return version
        return split[-1][1]


class PromptTable:
    """Every prompt of a config, by name and by custom path."""

    __slots__ = ("by_name", "by_path")

    def __init__(self, prompts: dict[str, PromptConfig]) -> None:
        self.by_name = {name: Prompt(name, p) for name, p in prompts.items()}
        self.by_path = {p.path: p for p in self.by_name.values() if p.path is not None}

    @classmethod
    def build(cls, config: Any) -> PromptTable | None:
        """The table of ``config.prompts``; None when there are none (# PERF: the engine checks that)."""
        prompts = getattr(config, "prompts", None)
        return cls(prompts) if prompts else None
