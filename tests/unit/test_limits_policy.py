"""The [limits] schema: parsing from TOML, the semantic checks and their messages, the compiled form."""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import pytest

from gateway.limits import LimitsConfig, LimitSpec, PolicyConfig, compile_policy, policy_problems
from gateway.limits.policy import BudgetConfig, Path

MODELS = {"gpt-4o", "gpt-4o-mini", "mock-1"}

FULL = """\
default_policy = "standard"
default_max_tokens = 1024
apply = { gateway = "house", models = { "gpt-4o" = "pool" } }

[policies.standard]
requests_per_minute = 600
tokens_per_minute = 200000
tokens_kind = "input"
concurrent = 20
burst = 0.5
fail_mode = "fail_closed"
lease = 1

[policies.house]
requests_per_second = 100

[policies.pool]
requests_per_day = 10000
tokens_per_day = 5000000
lease = "auto"

[budgets.team]
usd_per_day = 50.0
usd_per_month = 1000
action = "downgrade"
downgrade_model = "gpt-4o-mini"
alert_webhook = "https://hooks.example.com/budget"
alert_at = 0.8
"""


def decode(text: str) -> LimitsConfig:
    return msgspec.toml.decode(text, type=LimitsConfig)


def problems(
    text: str, models: set[str] = MODELS, principals: Sequence[tuple[Path, str | None, str | None]] = ()
) -> list[tuple[Path, str]]:
    return [(p.path, p.message) for p in policy_problems(decode(text), models, principals=principals)]


# -- parsing


def test_full_example_parses_and_is_clean() -> None:
    limits = decode(FULL)
    assert limits.default_policy == "standard"
    assert limits.default_max_tokens == 1024
    assert limits.apply.gateway == "house"
    assert limits.apply.models == {"gpt-4o": "pool"}
    std = limits.policies["standard"]
    assert std.requests_per_minute == 600.0
    assert std.tokens_kind == "input"
    assert std.concurrent == 20
    assert std.fail_mode == "fail_closed"
    assert std.lease == 1
    assert limits.policies["pool"].lease == "auto"
    team = limits.budgets["team"]
    assert team.usd_per_month == 1000.0 and team.action == "downgrade" and team.alert_at == 0.8
    assert list(policy_problems(limits, MODELS)) == []


def test_defaults() -> None:
    limits = decode("")
    assert limits == LimitsConfig()
    assert limits.default_max_tokens == 4096
    p = PolicyConfig()
    assert (p.burst, p.fail_mode, p.lease, p.tokens_kind) == (1.0, "fail_open", "auto", "total")
    b = BudgetConfig()
    assert (b.action, b.alert_at) == ("block", 1.0)


def test_same_shape_through_convert() -> None:
    import tomllib

    assert msgspec.convert(tomllib.loads(FULL), LimitsConfig) == decode(FULL)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[policies.p]\nrequests_per_minit = 5\n",
            "Object contains unknown field `requests_per_minit` - at `$.policies[...]`",
        ),
        ('[policies.p]\nfail_mode = "open"\n', "Invalid enum value 'open' - at `$.policies[...].fail_mode`"),
        (
            '[policies.p]\ntokens_kind = "both"\n',
            "Invalid enum value 'both' - at `$.policies[...].tokens_kind`",
        ),
        ('[policies.p]\nlease = "exact"\n', "Invalid enum value 'exact' - at `$.policies[...].lease`"),
        ("[policies.p]\nlease = 1.5\n", "Expected `int | str`, got `float` - at `$.policies[...].lease`"),
        (
            '[policies.p]\nrequests_per_minute = "600"\n',
            "Expected `float | null`, got `str` - at `$.policies[...].requests_per_minute`",
        ),
        ('[budgets.b]\naction = "warn"\n', "Invalid enum value 'warn' - at `$.budgets[...].action`"),
        ('apply = { everything = "p" }\n', "Object contains unknown field `everything` - at `$.apply`"),
    ],
)
def test_schema_errors(text: str, message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        decode(text)
    assert str(info.value) == message


# -- semantic checks


def test_unknown_policy_names_everywhere() -> None:
    text = """\
default_policy = "standrd"
apply = { gateway = "nope", models = { "gpt-4o" = "standard", "gpt-5" = "standard" } }
[policies.standard]
requests_per_minute = 10
"""
    assert problems(text) == [
        (
            ("limits", "default_policy"),
            'no limit policy named "standrd" is defined; did you mean "standard"?',
        ),
        (("limits", "apply", "gateway"), 'no limit policy named "nope" is defined (defined: standard)'),
        (("limits", "apply", "models", "gpt-5"), 'no model named "gpt-5" is defined; did you mean "gpt-4o"?'),
    ]


def test_references_from_keys_and_tenants() -> None:
    text = "[policies.standard]\nrequests_per_minute = 10\n"
    principals: list[tuple[Path, str | None, str | None]] = [
        (("auth", "keys", 0), "standard", "team"),
        (("tenants", "acme"), "premium", None),
    ]
    assert problems(text, principals=principals) == [
        (
            ("auth", "keys", 0, "budget"),
            'no budget named "team" is defined (none is defined under [limits.budgets])',
        ),
        (
            ("tenants", "acme", "limit_policy"),
            'no limit policy named "premium" is defined (defined: standard)',
        ),
    ]


def test_no_policies_defined_message() -> None:
    assert problems('default_policy = "x"\n') == [
        (
            ("limits", "default_policy"),
            'no limit policy named "x" is defined (none is defined under [limits.policies])',
        )
    ]


def test_policy_value_problems() -> None:
    text = """\
[policies.bad]
requests_per_second = -5
requests_per_minute = 0
tokens_per_day = nan
concurrent = 0
lease = 0

[policies.empty]
burst = 2.0

[policies.noburst]
requests_per_minute = 10
burst = 0
"""
    assert problems(text) == [
        (("limits", "policies", "bad", "requests_per_second"), "must be a finite number above 0, found -5"),
        (("limits", "policies", "bad", "requests_per_minute"), "must be a finite number above 0, found 0"),
        (("limits", "policies", "bad", "tokens_per_day"), "must be a finite number above 0, found nan"),
        (("limits", "policies", "bad", "concurrent"), "must be 1 or more, found 0"),
        (("limits", "policies", "bad", "lease"), 'must be "auto" or 1 or more (1 = exact), found 0'),
        (
            ("limits", "policies", "empty"),
            "the policy sets no limit: give at least one of requests_per_second, requests_per_minute, "
            "requests_per_hour, requests_per_day, tokens_per_minute, tokens_per_day, concurrent",
        ),
        (("limits", "policies", "noburst", "burst"), "must be a finite multiplier above 0, found 0"),
    ]


def test_token_burst_below_default_max_tokens() -> None:
    text = "default_max_tokens = 4096\n[policies.tiny]\ntokens_per_minute = 8000\nburst = 0.25\n"
    assert problems(text) == [
        (
            ("limits", "policies", "tiny", "tokens_per_minute"),
            "tokens_per_minute x burst (2000) is below limits.default_max_tokens (4096): "
            "a request without max_tokens could never be admitted",
        )
    ]
    # an input-only token limit does not reserve the completion estimate
    assert problems(text.replace("burst = 0.25", 'burst = 0.25\ntokens_kind = "input"')) == []


def test_fixed_lease_larger_than_request_burst() -> None:
    text = "[policies.p]\nrequests_per_minute = 10\nlease = 50\n"
    assert problems(text) == [
        (
            ("limits", "policies", "p", "lease"),
            "a lease of 50 requests is more than requests_per_minute x burst (10) allows at once: "
            "no lease could ever be granted",
        )
    ]


def test_default_max_tokens_positive() -> None:
    assert problems("default_max_tokens = 0\n") == [
        (("limits", "default_max_tokens"), "must be 1 or more, found 0")
    ]


def test_budget_problems() -> None:
    text = """\
[budgets.none]
action = "alert"

[budgets.neg]
usd_per_day = -1
alert_at = 1.5

[budgets.down]
usd_per_day = 10
action = "downgrade"

[budgets.down2]
usd_per_day = 10
action = "downgrade"
downgrade_model = "gpt-4o-mimi"

[budgets.blocky]
usd_per_month = 10
downgrade_model = "gpt-4o-mini"
alert_webhook = "hooks.example.com/x"
alert_at = 0
"""
    assert problems(text) == [
        (("limits", "budgets", "none"), "the budget sets no limit: give usd_per_day, usd_per_month or both"),
        (
            ("limits", "budgets", "neg", "usd_per_day"),
            "must be a finite number of US dollars, 0 or more, found -1",
        ),
        (
            ("limits", "budgets", "neg", "alert_at"),
            "must be a fraction above 0 and at most 1 (0.8 = 80%), found 1.5",
        ),
        (
            ("limits", "budgets", "down", "downgrade_model"),
            'required with action = "downgrade": the model to serve instead',
        ),
        (
            ("limits", "budgets", "down2", "downgrade_model"),
            'no model named "gpt-4o-mimi" is defined; did you mean "gpt-4o-mini"?',
        ),
        (
            ("limits", "budgets", "blocky", "downgrade_model"),
            'is only used with action = "downgrade" (this budget\'s action is "block")',
        ),
        (("limits", "budgets", "blocky", "alert_webhook"), "must be an http:// or https:// URL with a host"),
        (
            ("limits", "budgets", "blocky", "alert_at"),
            "must be a fraction above 0 and at most 1 (0.8 = 80%), found 0",
        ),
    ]


def test_zero_budget_is_allowed() -> None:
    # a budget of $0 blocks (or downgrades) every priced call: a legitimate way to cut spend off
    assert problems("[budgets.frozen]\nusd_per_day = 0\n") == []


def test_base_path_is_configurable() -> None:
    limits = decode('default_policy = "x"\n')
    [problem] = policy_problems(limits, MODELS, base=())
    assert problem.path == ("default_policy",)


# -- compiled form


def test_compile_rates_and_bursts() -> None:
    policy = decode(FULL).policies["standard"]
    specs = compile_policy(policy, "standard")
    assert specs == [
        LimitSpec(
            policy="standard",
            dimension="requests",
            rate=10.0,
            burst=300.0,
            window="minute",
            limit=600.0,
            period=60.0,
            tokens_kind=None,
            lease=1,
            fail_mode="fail_closed",
        ),
        LimitSpec(
            policy="standard",
            dimension="tokens",
            rate=200000 / 60,
            burst=100000.0,
            window="minute",
            limit=200000.0,
            period=60.0,
            tokens_kind="input",
            lease=1,
            fail_mode="fail_closed",
        ),
        LimitSpec(
            policy="standard",
            dimension="concurrent",
            rate=0.0,
            burst=20.0,
            window="in_flight",
            limit=20.0,
            period=0.0,
            tokens_kind=None,
            lease=1,
            fail_mode="fail_closed",
        ),
    ]
    assert [s.name for s in specs] == ["requests_per_minute", "tokens_per_minute", "concurrent"]


def test_compile_every_window_in_order() -> None:
    policy = PolicyConfig(
        tokens_per_day=86400.0,
        requests_per_day=8640.0,
        requests_per_hour=360.0,
        requests_per_second=2.0,
        requests_per_minute=120.0,
        tokens_per_minute=6000.0,
    )
    specs = compile_policy(policy)
    assert [(s.dimension, s.window) for s in specs] == [
        ("requests", "second"),
        ("requests", "minute"),
        ("requests", "hour"),
        ("requests", "day"),
        ("tokens", "minute"),
        ("tokens", "day"),
    ]
    assert [s.period for s in specs] == [1.0, 60.0, 3600.0, 86400.0, 60.0, 86400.0]
    assert [s.rate for s in specs] == [2.0, 2.0, 0.1, 0.1, 100.0, 1.0]
    assert [s.burst for s in specs] == [2.0, 120.0, 360.0, 8640.0, 6000.0, 86400.0]
    assert all(s.lease is None and s.fail_mode == "fail_open" and s.policy == "" for s in specs)
    assert [s.tokens_kind for s in specs] == [None, None, None, None, "total", "total"]


def test_compile_request_burst_never_below_one() -> None:
    [spec] = compile_policy(PolicyConfig(requests_per_minute=6.0, burst=0.01))
    assert spec.burst == 1.0
    assert math.isclose(spec.rate, 0.1)


def test_compiled_spec_drives_a_bucket() -> None:
    from gateway._core.limit import Bucket

    [spec] = compile_policy(PolicyConfig(requests_per_minute=3.0))
    bucket = Bucket(spec.rate, spec.burst)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(20.0)
