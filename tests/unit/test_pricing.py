"""Model prices: the shipped table, name matching, cost arithmetic (cached tokens included), overrides."""

from __future__ import annotations

import datetime
import tomllib
from importlib import resources

import msgspec
import pytest

from gateway.limits import PriceConfig, PriceTable
from gateway.limits.pricing import candidate_names, load_shipped_prices, price_problems
from gateway.wire import Usage


class CachedDetails(msgspec.Struct, frozen=True):
    cached_tokens: int = 0


class UsageWithDetails(msgspec.Struct, frozen=True):
    """OpenAI's usage object with the prompt-cache details, as a provider sends it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: CachedDetails | None = None


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


# -- the shipped table


def test_shipped_file_has_source_and_date() -> None:
    prices, source, as_of = load_shipped_prices()
    assert "price" in source
    assert isinstance(as_of, datetime.date)
    assert len(prices) >= 30


def test_shipped_file_is_package_data() -> None:
    data = resources.files("gateway.limits").joinpath("prices.toml").read_text("utf-8")
    raw = tomllib.loads(data)
    assert set(raw) == {"source", "as_of", "models"}


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "claude-sonnet-4-5",
        "claude-sonnet-4",
        "claude-haiku-4-5",
        "claude-3-5-haiku",
        "claude-opus-4-1",
        "claude-opus-4-5",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "gemini-2.0-flash",
        "mistral-large-latest",
        "mistral-small-latest",
    ],
)
def test_common_models_are_priced(table: PriceTable, model: str) -> None:
    price = table.lookup(model)
    assert price is not None
    assert price.input > 0
    assert price.output >= 0
    assert price.cached_input is None or price.cached_input <= price.input


def test_every_shipped_price_is_sane() -> None:
    prices, _, _ = load_shipped_prices()
    for name, price in prices.items():
        assert 0 < price.input < 100, name
        assert 0 <= price.output < 500, name
        assert price.cached_input is None or 0 <= price.cached_input <= price.input, name
        if name.startswith(("text-embedding", "mistral-embed")):
            assert price.output == 0 and price.cached_input is None, name
        else:
            assert price.output >= price.input, name


def test_known_list_prices(table: PriceTable) -> None:
    assert table.lookup("gpt-4o") == PriceConfig(input=2.5, output=10.0, cached_input=1.25)
    assert table.lookup("gpt-4o-mini") == PriceConfig(input=0.15, output=0.6, cached_input=0.075)
    assert table.lookup("text-embedding-3-small") == PriceConfig(input=0.02)
    assert table.lookup("claude-sonnet-4") == PriceConfig(input=3.0, output=15.0, cached_input=0.3)


# -- name matching


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("GPT-4o-2024-11-20", "gpt-4o"),
        ("mistral-large-2411", "mistral-large-2411"),
    ],
)
def test_fallback_matching(table: PriceTable, model: str, expected: str) -> None:
    assert table.lookup(model) == table.lookup(expected)
    assert table.lookup(model) is not None
    assert model in table


def test_candidate_names_order() -> None:
    assert list(candidate_names("openai/gpt-4o-2024-08-06")) == [
        "openai/gpt-4o-2024-08-06",
        "gpt-4o-2024-08-06",
        "gpt-4o",
    ]
    assert list(candidate_names("gpt-4-0613")) == ["gpt-4-0613", "gpt-4"]
    assert list(candidate_names("o1")) == ["o1"]


def test_exact_match_wins_over_fallbacks() -> None:
    t = PriceTable({"gpt-4o": PriceConfig(input=1.0), "gpt-4o-2024-05-13": PriceConfig(input=5.0)})
    assert t.lookup("gpt-4o-2024-05-13") == PriceConfig(input=5.0)
    assert t.lookup("gpt-4o-2024-08-06") == PriceConfig(input=1.0)


def test_a_name_with_a_slash_matches_exactly(table: PriceTable) -> None:
    assert table.lookup("meta-llama/Llama-3.3-70B-Instruct-Turbo") == PriceConfig(input=0.88, output=0.88)


@pytest.mark.parametrize("model", ["mock-1", "gpt-4o-audio-preview", "my-finetune", "", "vendor/"])
def test_unknown_models_have_no_price(table: PriceTable, model: str) -> None:
    assert table.lookup(model) is None
    assert table.cost(model, Usage(prompt_tokens=10, completion_tokens=10, total_tokens=20)) is None
    assert model not in table


def test_memo_is_bounded() -> None:
    t = PriceTable({"gpt-4o": PriceConfig(input=1.0)})
    for i in range(5000):
        assert t.lookup(f"unknown-{i}") is None
    assert t.lookup("gpt-4o-2024-08-06") == PriceConfig(input=1.0)  # still answers past the memo's bound
    assert len(t._memo) <= 4096


# -- cost arithmetic


def test_cost_input_and_output(table: PriceTable) -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, total_tokens=1_500_000)
    assert table.cost("gpt-4o", usage) == pytest.approx(2.5 + 5.0)
    small = Usage(prompt_tokens=1200, completion_tokens=300, total_tokens=1500)
    assert table.cost("gpt-4o-mini", small) == pytest.approx((1200 * 0.15 + 300 * 0.6) / 1e6)


def test_cost_with_cached_prompt_tokens(table: PriceTable) -> None:
    usage = UsageWithDetails(
        prompt_tokens=10_000,
        completion_tokens=1_000,
        total_tokens=11_000,
        prompt_tokens_details=CachedDetails(cached_tokens=8_000),
    )
    expected = (2_000 * 2.5 + 8_000 * 1.25 + 1_000 * 10.0) / 1e6
    assert table.cost("gpt-4o", usage) == pytest.approx(expected)
    # the same through a dated name
    assert table.cost("gpt-4o-2024-08-06", usage) == pytest.approx(expected)


def test_cached_details_as_a_mapping_and_absent() -> None:
    t = PriceTable({"m": PriceConfig(input=2.0, output=4.0, cached_input=0.5)})

    class Loose:
        prompt_tokens = 100
        completion_tokens = 10
        prompt_tokens_details = {"cached_tokens": 60, "audio_tokens": 0}

    assert t.cost("m", Loose()) == pytest.approx((40 * 2.0 + 60 * 0.5 + 10 * 4.0) / 1e6)
    none = UsageWithDetails(prompt_tokens=100, completion_tokens=10, prompt_tokens_details=None)
    assert t.cost("m", none) == pytest.approx((100 * 2.0 + 10 * 4.0) / 1e6)


def test_cached_tokens_are_clamped_to_the_prompt() -> None:
    t = PriceTable({"m": PriceConfig(input=2.0, output=4.0, cached_input=0.5)})
    odd = UsageWithDetails(prompt_tokens=100, prompt_tokens_details=CachedDetails(cached_tokens=500))
    assert t.cost("m", odd) == pytest.approx(100 * 0.5 / 1e6)


def test_cached_tokens_without_a_cached_price_cost_the_input_price() -> None:
    t = PriceTable({"m": PriceConfig(input=2.0, output=4.0)})
    usage = UsageWithDetails(prompt_tokens=100, completion_tokens=0, prompt_tokens_details=CachedDetails(50))
    assert t.cost("m", usage) == pytest.approx(100 * 2.0 / 1e6)


def test_embedding_cost_is_input_only(table: PriceTable) -> None:
    usage = Usage(prompt_tokens=2_000_000, completion_tokens=0, total_tokens=2_000_000)
    assert table.cost("text-embedding-3-small", usage) == pytest.approx(0.04)
    assert table.cost("text-embedding-3-large", usage) == pytest.approx(0.26)


def test_zero_usage_costs_nothing(table: PriceTable) -> None:
    assert table.cost("gpt-4o", Usage()) == 0.0


# -- overrides from the configuration


def test_overrides_from_toml() -> None:
    text = """\
[pricing."gpt-4o"]
input = 2.0
output = 8.0

[pricing."my-finetune"]
input = 3.0
output = 12.0
cached_input = 1.5

[pricing."local-embed"]
input = 0.0
"""
    overrides = msgspec.toml.decode(text, type=dict[str, dict[str, PriceConfig]])["pricing"]
    table = PriceTable.load(overrides)
    # an override replaces the shipped entry whole: no cached_input given, so cached tokens cost input
    assert table.lookup("gpt-4o") == PriceConfig(input=2.0, output=8.0)
    assert table.lookup("gpt-4o-2024-08-06") == PriceConfig(input=2.0, output=8.0)
    assert table.cost("my-finetune", Usage(prompt_tokens=1000, completion_tokens=1000)) == pytest.approx(
        0.015
    )
    assert table.cost("local-embed", Usage(prompt_tokens=1000)) == 0.0
    assert table.lookup("gpt-4o-mini") == PriceConfig(input=0.15, output=0.6, cached_input=0.075)  # untouched
    assert "overridden in the configuration: gpt-4o, local-embed, my-finetune" in table.source


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("output = 1.0\n", "Object missing required field `input`"),
        ("input = 1.0\ncache = 0.5\n", "Object contains unknown field `cache`"),
        ('input = "1.0"\n', "Expected `float`, got `str` - at `$.input`"),
    ],
)
def test_price_config_errors(text: str, message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.toml.decode(text, type=PriceConfig)
    assert str(info.value) == message


def test_price_problems() -> None:
    text = """\
[ok]
input = 1.0

[neg]
input = -1.0
output = inf
cached_input = -0.5
"""
    pricing = msgspec.toml.decode(text, type=dict[str, PriceConfig])
    assert list(price_problems(pricing)) == [
        (
            ("pricing", "neg", "input"),
            "must be a finite number of US dollars per 1M tokens, 0 or more, found -1",
        ),
        (
            ("pricing", "neg", "output"),
            "must be a finite number of US dollars per 1M tokens, 0 or more, found inf",
        ),
        (
            ("pricing", "neg", "cached_input"),
            "must be a finite number of US dollars per 1M tokens, 0 or more, found -0.5",
        ),
    ]
