"""The routing keys of a model: their TOML shape, defaults, and the semantic checks' messages."""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import pytest

from gateway.routing.config import (
    DeploymentConfig,
    RoutingConfig,
    routing_problems,
    single_deployment,
)

TOML = """
[models.gpt-4o]
strategy = "split"
split = { "openai" = 90, "azure-east" = 10 }
fallbacks = ["claude-sonnet"]
fallback_on = ["429", "5xx", "timeout"]
deadline = 60.0

[[models.gpt-4o.deployments]]
provider = "openai"
upstream_model = "gpt-4o-2024-11-20"
name = "openai"
rpm = 10000
tpm = 2000000
context_window = 128000
first_byte_timeout = 20.0

[[models.gpt-4o.deployments]]
provider = "azure"
name = "azure-east"
region = "eastus"
tags = ["canary"]
cost = 4.5

[models.gpt-4o.retry]
max_attempts = 2
retry_on = ["connect", "timeout"]

[models.gpt-4o.breaker]
consecutive_failures = 3
open_for = 10.0

[models.gpt-4o.health]
path = "/chat/completions"
body = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}'
interval = 30.0

[models.claude-sonnet]
strategy = "consistent_hash"
hash_on = "header:x-session-id"
deployments = [{ provider = "anthropic" }]
"""


def parse(text: str = TOML) -> dict[str, RoutingConfig]:
    return msgspec.convert(tomllib.loads(text)["models"], dict[str, RoutingConfig])


def problems(models: dict[str, Any], providers: tuple[str, ...] | None = ("openai", "azure", "anthropic"),
             **kw: Any) -> list[tuple[str, str]]:
    cfgs = {n: msgspec.convert(m, RoutingConfig) for n, m in models.items()}
    return [(".".join(map(str, p.path)), p.message) for p in routing_problems(cfgs, providers, **kw)]


def one(**model: Any) -> dict[str, Any]:
    return {"m": {"deployments": [{"provider": "openai"}], **model}}


def test_toml_shape_and_defaults() -> None:
    models = parse()
    g = models["gpt-4o"]
    assert [d.display_name() for d in g.deployments] == ["openai", "azure-east"]
    assert g.deployments[0].first_byte_timeout == 20.0 and g.deployments[1].tags == ["canary"]
    assert g.retry.max_attempts == 2 and g.retry.max_backoff == 8.0
    assert g.breaker.consecutive_failures == 3 and g.breaker.half_open_probes == 1
    assert g.health is not None and g.health.unhealthy_threshold == 3
    c = models["claude-sonnet"]
    assert c.fallback_on == ["429", "5xx", "timeout", "context_length"] and c.health is None
    assert c.retry.retry_on == ["connect", "timeout", "429", "5xx"]
    assert list(routing_problems(models, {"openai", "azure", "anthropic"})) == []


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="wieght"):
        msgspec.convert({"deployments": [{"provider": "a", "wieght": 2}]}, RoutingConfig)


def test_embeds_as_the_base_of_a_model_struct() -> None:
    class Model(RoutingConfig, frozen=True):
        provider: str | None = None

    m = msgspec.convert({"provider": "x", "strategy": "cost", "deployments": [{"provider": "y"}]}, Model)
    assert m.provider == "x" and m.strategy == "cost" and m.deployments[0].provider == "y"


def test_display_names_and_single_deployment() -> None:
    assert DeploymentConfig(provider="p").display_name() == "p"
    assert DeploymentConfig(provider="p", upstream_model="m-1").display_name() == "p/m-1"
    assert single_deployment("p", "u").deployments == [DeploymentConfig(provider="p", upstream_model="u")]


def test_fallback_references_and_cycles() -> None:
    found = problems({
        "a": {"deployments": [{"provider": "openai"}], "fallbacks": ["b", "nope", "a", "b"]},
        "b": {"deployments": [{"provider": "openai"}], "fallbacks": ["c"]},
        "c": {"deployments": [{"provider": "openai"}], "fallbacks": ["a"]},
    })
    assert found == [
        ("models.a.fallbacks.1", 'no model named "nope" is defined'),
        ("models.a.fallbacks.2", 'a model cannot fall back to itself ("a")'),
        ("models.a.fallbacks.3", '"b" is also fallbacks[0]'),
        ("models.a.fallbacks.0", 'fallbacks form a cycle: "a" -> "b" -> "c" -> "a"'),
    ]


def test_split_checks() -> None:
    deployments = [{"provider": "openai"}, {"provider": "azure"}]
    assert problems({"m": {"deployments": deployments, "strategy": "split",
                           "split": {"openai": 70, "azure": 20}}}) == [
        ("models.m.split", "percentages must sum to 100, found 90"),
    ]
    assert problems({"m": {"deployments": deployments, "strategy": "split",
                           "split": {"openai": 90, "azur": 10}}}) == [
        ("models.m.split.azur", 'no deployment named "azur" in this model; did you mean "azure"?'),
    ]
    assert problems({"m": {"deployments": deployments, "strategy": "split"}})[0][1].startswith(
        'strategy = "split" needs percentages'
    )
    assert problems(one(split={"openai": 100})) == [("models.m.split", 'is only used with strategy = "split"')]


def test_deployment_checks() -> None:
    found = problems({"m": {"deployments": [
        {"provider": "opnai", "weight": 0, "rpm": 0, "first_byte_timeout": 30.0, "total_timeout": 10.0},
        {"provider": "openai", "upstream_model": ""},
        {"provider": "openai", "cost": -1.0},
    ]}})
    assert found == [
        ("models.m.deployments.0.provider", 'no provider named "opnai" is defined; did you mean "openai"?'),
        ("models.m.deployments.0.weight", "must be between 1 and 1000000, found 0"),
        ("models.m.deployments.0.first_byte_timeout", "must not exceed total_timeout (10), found 30"),
        ("models.m.deployments.0.rpm", "must be 1 or more, found 0"),
        ("models.m.deployments.1.upstream_model", "must not be empty (leave it out to send the model name)"),
        ("models.m.deployments.2.cost", "must be a finite number of 0 or more, found -1"),
        ("models.m.deployments.2.provider", 'deployment "openai" is also deployments[1]; give each a distinct name'),
    ]
    assert ("models.m.deployments", "must list at least one deployment") in problems({"m": {}})
    assert problems(one(), providers=None) == []


def test_cost_strategy_needs_prices() -> None:
    assert problems(one(strategy="cost")) == [(
        "models.m.deployments.0.cost",
        'required by strategy = "cost": the pricing table has no price for "m" at provider "openai"',
    )]
    assert problems(one(strategy="cost"), priced=lambda provider, model: True) == []


def test_hash_on_checks() -> None:
    assert problems(one(strategy="consistent_hash", hash_on="header:x-session-id")) == []
    assert problems(one(strategy="consistent_hash", hash_on="cookie")) == [
        ("models.m.hash_on", 'must be "user", "key_id" or "header:<name>", found "cookie"')
    ]
    assert problems(one(strategy="consistent_hash", hash_on="header:bad name")) == [
        ("models.m.hash_on", '"bad name" is not a valid HTTP header name')
    ]
    assert problems(one(hash_on="key_id")) == [("models.m.hash_on", 'is only used with strategy = "consistent_hash"')]
    heavy = {"m": {"strategy": "consistent_hash", "deployments": [
        {"provider": "openai", "weight": 7000}, {"provider": "azure", "weight": 1}]}}
    assert "weights are relative" in problems(heavy)[0][1]


def test_retry_breaker_health_checks() -> None:
    found = problems(one(
        deadline=0,
        retry={"max_attempts": 0, "base_backoff": 9.0, "max_backoff": 8.0, "retry_on": ["5xx", "5xx"]},
        breaker={"error_ratio": 1.5, "open_for": 0, "half_open_probes": 0},
        health={"path": "models", "body": "{nope", "interval": 5.0, "timeout": 10.0, "healthy_threshold": 0},
        fallback_on=["429", "429"],
    ))
    paths = [p for p, _ in found]
    assert paths == [
        "models.m.fallback_on.1", "models.m.deadline", "models.m.retry.max_attempts", "models.m.retry.base_backoff",
        "models.m.retry.retry_on.1", "models.m.breaker.half_open_probes", "models.m.breaker.error_ratio",
        "models.m.breaker.open_for", "models.m.health.path", "models.m.health.body", "models.m.health.timeout",
        "models.m.health.healthy_threshold",
    ]
    assert dict(found)["models.m.retry.base_backoff"] == "must not exceed max_backoff (8), found 9"
    assert dict(found)["models.m.health.timeout"] == "must not exceed interval (5), found 10"
