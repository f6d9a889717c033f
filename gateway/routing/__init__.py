"""Routing and resilience: which deployment serves each attempt of a request, and what happens on failure.

- ``config``: the routing keys of a model (deployments, strategy, fallbacks, retry, breaker, health) and
  their semantic checks.
- ``router``: per-request plans of attempts over the strategies of ``gateway._core.route``.
- ``breaker``: the circuit breaker and cooldown of a deployment (a state table, sans-IO).
- ``retry``: retry decisions and full-jitter backoff.
- ``outcome``: how an attempt ended, in routing's terms; upstream retry hints.
- ``sync``: breaker state shared across workers (SQLite) and nodes (Redis).
- ``health``: active health checks.
"""

from gateway.routing.breaker import Breaker, Change, State
from gateway.routing.config import (
    BreakerConfig,
    DeploymentConfig,
    HealthCheckConfig,
    RetryConfig,
    RoutingConfig,
    RoutingProblem,
    routing_problems,
    single_deployment,
)
from gateway.routing.health import HealthChecker, Probe
from gateway.routing.outcome import (
    Outcome,
    is_context_length_error,
    outcome_of_exception,
    outcome_of_status,
    parse_retry_after,
)
from gateway.routing.retry import RetryDecision, RetryPolicy
from gateway.routing.router import (
    Attempt,
    Attempts,
    Deployment,
    NoDeploymentAvailable,
    RequestInfo,
    Router,
    Unavailable,
    build_routers,
    deployment_id,
)
from gateway.routing.sync import (
    BreakerEvent,
    BreakerSync,
    RedisSyncTransport,
    SqliteSyncTransport,
    SyncTransport,
)

__all__ = [
    "Attempt",
    "Attempts",
    "Breaker",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerSync",
    "Change",
    "Deployment",
    "DeploymentConfig",
    "HealthCheckConfig",
    "HealthChecker",
    "NoDeploymentAvailable",
    "Outcome",
    "Probe",
    "RedisSyncTransport",
    "RequestInfo",
    "RetryConfig",
    "RetryDecision",
    "RetryPolicy",
    "Router",
    "RoutingConfig",
    "RoutingProblem",
    "SqliteSyncTransport",
    "State",
    "SyncTransport",
    "Unavailable",
    "build_routers",
    "deployment_id",
    "is_context_length_error",
    "outcome_of_exception",
    "outcome_of_status",
    "parse_retry_after",
    "routing_problems",
    "single_deployment",
]
