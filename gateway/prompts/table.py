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
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.prompts.config import PromptConfig
from gateway.prompts.render import CompiledVersion, TemplateProblem, compile_version

if TYPE_CHECKING:
    from gateway.store.models import StoredPrompt

__all__ = ["Prompt", "PromptSource", "PromptTable"]

log = logging.getLogger("gateway.prompts")


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

    def __init__(self, prompts: dict[str, PromptConfig], compiled: Sequence[Prompt] = ()) -> None:
        self.by_name = {name: Prompt(name, p) for name, p in prompts.items()}
        for p in compiled:
            self.by_name.setdefault(p.name, p)  # the config file's prompt wins over a published one
        self.by_path: dict[str, Prompt] = {}
        for p in self.by_name.values():
            if p.path is not None:
                self.by_path.setdefault(p.path, p)

    @classmethod
    def build(cls, config: Any) -> PromptTable | None:
        """The table of ``config.prompts``; None when there are none (# PERF: the engine checks that)."""
        prompts = getattr(config, "prompts", None)
        return cls(prompts) if prompts else None


class PromptSource:
    """The prompts a worker serves: the config file's (``Runtime.prompts``) and those published through the
    admin API (the store's snapshot, read by the key service with the keys: so a published change is in
    force on a worker exactly when its key table has the store version of that change, which is what the
    admin API waits for before it answers).

    # PERF: rebuilt only when the runtime or the store's prompt list is another object; a published
    prompt is compiled once per revision and worker.
    """

    __slots__ = ("_compiled", "_runtime", "_stored", "_table")

    def __init__(self) -> None:
        self._runtime: Any = None
        self._stored: Sequence[StoredPrompt] | None = None
        self._table: PromptTable | None = None
        self._compiled: dict[tuple[str, int, float], Prompt | None] = {}

    def table(self, config_table: PromptTable | None, runtime: Any, stored: Sequence[StoredPrompt]) -> \
            PromptTable | None:
        if runtime is self._runtime and stored is self._stored:
            return self._table
        self._runtime = runtime
        self._stored = stored
        if not stored:
            self._table = config_table
            return config_table
        compiled = [p for p in (self._compile(s) for s in stored) if p is not None]
        base = config_table.by_name if config_table is not None else {}
        table = PromptTable({}, [*base.values(), *compiled])
        self._table = table if table.by_name else None
        return self._table

    def _compile(self, stored: StoredPrompt) -> Prompt | None:
        ident = (stored.name, stored.revision, stored.updated_at)
        if ident in self._compiled:
            return self._compiled[ident]
        prompt: Prompt | None
        try:
            prompt = Prompt(stored.name, msgspec.convert(stored.spec, PromptConfig))
        except (msgspec.ValidationError, TemplateProblem, KeyError) as exc:
            log.error("published prompt %s (revision %d) cannot be served: %s", stored.name, stored.revision,
                      exc)
            prompt = None
        if len(self._compiled) > 4096:
            self._compiled.clear()
        self._compiled[ident] = prompt
        return prompt
