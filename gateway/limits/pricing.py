"""What a call cost: model prices (US dollars per 1M tokens) and the arithmetic on a response's usage.

The gateway ships a price table (``prices.toml`` beside this module, with its ``source`` and ``as_of``
date); the configuration overrides or adds entries with ``[pricing."<model>"]`` tables, each replacing
the shipped entry of that name whole::

    [pricing."gpt-4o"]
    input = 2.50          # per 1M prompt tokens
    output = 10.00        # per 1M completion tokens (0 for embedding models)
    cached_input = 1.25   # per 1M prompt tokens read from the provider's cache; default: input

Model names are matched exactly first, then without a ``vendor/`` prefix (``openai/gpt-4o``,
``models/gemini-2.5-pro``), then without a dated or versioned suffix, removed repeatedly:
``-YYYY-MM-DD`` (``gpt-4o-2024-08-06``), ``-YYYYMMDD`` (``claude-sonnet-4-20250514``), ``-NNNN``
(``gpt-4-0613``, ``mistral-large-2407``), ``-NNN`` (``gemini-2.0-flash-001``) and ``-latest``. The
fallback steps compare lowercased names. A name that matches nothing has no price: ``cost`` says
``None`` rather than guess.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any, Protocol

import msgspec

__all__ = [
    "PriceConfig",
    "PriceTable",
    "UsageLike",
    "cached_tokens",
    "candidate_names",
    "load_shipped_prices",
    "price_of",
    "price_problems",
]


class PriceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[pricing."<model>"]``: US dollars per 1 million tokens."""

    input: float
    output: float = 0.0
    #: prompt tokens served from the provider's prompt cache; None = billed at ``input``
    cached_input: float | None = None


class _ShippedPrices(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    source: str
    as_of: datetime.date
    models: dict[str, PriceConfig]


class UsageLike(Protocol):
    """What ``cost`` reads of a usage: ``gateway.wire.Usage`` or anything shaped like OpenAI's ``usage``.

    ``prompt_tokens_details`` is optional (an object or a mapping with ``cached_tokens``): when present,
    its ``cached_tokens`` are billed at the cached-input price.
    """

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...


_PER_TOKEN = 1e-6

_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|\d{3}|latest)\Z")

# PERF: a lookup that went through the fallbacks is remembered; bounded, since clients choose the names
_MEMO_LIMIT = 4096


def candidate_names(model: str) -> Iterator[str]:
    """The names tried for ``model``, in order (see the module docstring): exact, then fallbacks."""
    yield model
    name = model.lower()
    if "/" in name:
        name = name.rsplit("/", 1)[1]
        yield name
    while True:
        stripped = _SUFFIX.sub("", name)
        if stripped == name or not stripped:
            return
        name = stripped
        yield name


def load_shipped_prices() -> tuple[dict[str, PriceConfig], str, datetime.date]:
    """The shipped table: (model -> price, source note, as-of date)."""
    raw = resources.files("gateway.limits").joinpath("prices.toml").read_bytes()
    shipped = msgspec.toml.decode(raw, type=_ShippedPrices)
    return dict(shipped.models), shipped.source, shipped.as_of


class PriceTable:
    """Model prices and the cost of a call. Its answers never change once built; share it freely."""

    __slots__ = ("_exact", "_folded", "_memo", "as_of", "source")

    def __init__(
        self, prices: Mapping[str, PriceConfig], *, source: str = "", as_of: datetime.date | None = None
    ) -> None:
        self._exact: dict[str, PriceConfig] = dict(prices)
        self._folded: dict[str, PriceConfig] = {}
        for name, price in self._exact.items():
            self._folded.setdefault(name.lower(), price)
        for name, price in self._exact.items():  # an exact lowercase name wins over a folded one
            if name == name.lower():
                self._folded[name] = price
        self._memo: dict[str, PriceConfig | None] = {}
        self.source = source
        self.as_of = as_of

    @classmethod
    def load(cls, overrides: Mapping[str, PriceConfig] | None = None) -> PriceTable:
        """The shipped table with ``overrides`` (the configuration's ``[pricing]``) on top."""
        prices, source, as_of = load_shipped_prices()
        if overrides:
            prices.update(overrides)
            source = f"{source}; overridden in the configuration: {', '.join(sorted(overrides))}"
        return cls(prices, source=source, as_of=as_of)

    def __len__(self) -> int:
        return len(self._exact)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.lookup(model) is not None

    def lookup(self, model: str) -> PriceConfig | None:
        """The price of ``model``: exact name first, then the fallbacks of ``candidate_names``."""
        price = self._exact.get(model)
        if price is not None:
            return price
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = None
        for name in candidate_names(model):
            found = self._folded.get(name)
            if found is not None:
                break
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[model] = found
        return found

    def cost(self, model: str, usage: UsageLike) -> float | None:
        """US dollars for ``usage`` on ``model``; None when the model has no price.

        Cached prompt tokens (``usage.prompt_tokens_details.cached_tokens``, when present) are billed at
        ``cached_input``, the other prompt tokens at ``input``, completion tokens at ``output``.
        Embedding responses carry only prompt tokens, so they cost ``input`` alone.
        """
        price = self.lookup(model)
        if price is None:
            return None
        return price_of(price, usage.prompt_tokens, usage.completion_tokens, cached_tokens(usage))


def price_of(price: PriceConfig, prompt_tokens: int, completion_tokens: int, cached: int = 0) -> float:
    """US dollars for the given token counts at ``price`` (``cached`` of the prompt tokens from cache)."""
    prompt = max(prompt_tokens, 0)
    cached = min(max(cached, 0), prompt)
    cached_price = price.input if price.cached_input is None else price.cached_input
    total = (prompt - cached) * price.input + cached * cached_price + max(completion_tokens, 0) * price.output
    return total * _PER_TOKEN


def cached_tokens(usage: object) -> int:
    """``usage.prompt_tokens_details.cached_tokens``, 0 when absent (an object or a mapping)."""
    details: Any = getattr(usage, "prompt_tokens_details", None)
    if details is None:
        return 0
    # PERF: an attribute first (the decoded usage Structs); the ABC check, slow, only for a mapping
    value = getattr(details, "cached_tokens", _ABSENT)
    if value is _ABSENT:
        value = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    if type(value) is int:
        return value
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_ABSENT: Any = object()


def price_problems(
    pricing: Mapping[str, PriceConfig], base: tuple[str | int, ...] = ("pricing",)
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Problems of the configuration's ``[pricing]`` tables, each as (key path, message)."""
    for model, price in pricing.items():
        path = (*base, model)
        if not model:
            yield path, "the model name must not be empty"
        for key in ("input", "output", "cached_input"):
            value: float | None = getattr(price, key)
            if value is not None and not (math.isfinite(value) and value >= 0):
                shown = str(int(value)) if math.isfinite(value) and value.is_integer() else repr(value)
                yield (
                    (*path, key),
                    f"must be a finite number of US dollars per 1M tokens, 0 or more, found {shown}",
                )
