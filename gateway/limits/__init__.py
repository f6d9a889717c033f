"""Rate limits, token limits, budgets and cost: the parts outside the request path.

``policy``: the ``[limits]`` configuration (policies, budgets, where they apply), its checks, and the
compiled ``LimitSpec`` form the admission phase builds its buckets from. ``pricing``: model prices and
the cost of a call. ``tokens``: the admission estimate, offline tiktoken, and exact counts off the loop.
The request path: ``admit`` (the phase), ``shared`` (leases of rate limits), ``reserve`` (budget
reservations), ``budgets`` (spend in the store), over the sources ``shared_local`` and ``shared_redis``.
"""

from gateway.limits.policy import (
    ApplyConfig,
    BudgetConfig,
    LimitsConfig,
    LimitSpec,
    PolicyConfig,
    Problem,
    compile_policy,
    policy_problems,
)
from gateway.limits.pricing import PriceConfig, PriceTable, UsageLike, price_problems
from gateway.limits.tokens import (
    TiktokenDataError,
    TokenCounter,
    encoding_for_model,
    estimate_tokens,
    prepare_offline_tiktoken,
    tokens_of_kind,
)

__all__ = [
    "ApplyConfig",
    "BudgetConfig",
    "LimitSpec",
    "LimitsConfig",
    "PolicyConfig",
    "PriceConfig",
    "PriceTable",
    "Problem",
    "TiktokenDataError",
    "TokenCounter",
    "UsageLike",
    "compile_policy",
    "encoding_for_model",
    "estimate_tokens",
    "policy_problems",
    "prepare_offline_tiktoken",
    "price_problems",
    "tokens_of_kind",
]
