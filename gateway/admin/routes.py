"""The admin API's operations, as one table: what the router dispatches and what the OpenAPI document
describes (``gateway.admin.openapi`` is generated from this table and the ``wire`` Structs).

Paths are templates; ``{name}`` is one path segment, percent-decoded (a model name with ``/`` is sent as
``%2F``). Each operation names its handler, an ``AdminApp`` method ``h_<handler>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.admin import wire
from gateway.admin.prompts import PromptList, PromptLive, PromptPublish, PromptView
from gateway.admin.usage import CSV_DESCRIPTION, UsageReport
from gateway.cache.admin import CachePurge, CachePurged, CacheStatsView
from gateway.store.models import Subscription

__all__ = ["ROUTES", "Operation", "QueryParam"]


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: str
    summary: str
    tag: str
    #: the Struct of the success response (None: a free-form JSON object)
    response: type | None
    status: int = 200
    body: type | None = None
    query: tuple[QueryParam, ...] = ()
    #: False: answered without a token
    auth: bool = True
    #: a tenant admin gets 403 operator_only
    operator_only: bool = False
    #: error statuses this operation may answer besides 400, 401 and 503 (common to all with auth)
    errors: tuple[int, ...] = ()
    #: a write: answered with ``x-gateway-change-version`` and ``x-gateway-applied``
    writes: bool = False
    #: the answer waits until every worker of the node has applied the write (False: a key's creation,
    #: in force at once because workers look a key id they do not know up in the store)
    waits: bool = False
    description: str = ""
    segments: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.path.strip("/").split("/")))

    @property
    def operation_id(self) -> str:
        return self.handler


_CURSOR = QueryParam("cursor", "the next_cursor of the previous page")
_LIMIT = QueryParam(
    "limit", "page size, 1 to 1000 (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}
)
_TENANT = QueryParam("tenant", "only this tenant's records (a tenant admin: its own tenant only)")
_REASON = QueryParam(
    "reason", "why: recorded in the audit log",
    {"type": "string", "maxLength": wire.MAX_REASON, "pattern": wire.ONE_LINE},
)
_FROM = QueryParam("from", "first UTC day, YYYY-MM-DD (default: 29 days before `to`)")
_TO = QueryParam("to", "last UTC day, YYYY-MM-DD (default: today)")
_KEY_STATE = QueryParam("state", "stored state", {"type": "string", "enum": ["active", "revoked"]})
_SUB_STATE = QueryParam(
    "state", "subscription state", {"type": "string", "enum": ["pending", "approved", "rejected", "revoked"]}
)

_DECIDE = "An operator's decision by the subscription table; recorded in the audit log with who, when, why."

ROUTES: tuple[Operation, ...] = (
    Operation("GET", "/admin/healthz", "health", "Liveness and store reachability", "meta", wire.Health,
              auth=False, errors=(503,)),
    Operation("GET", "/admin/openapi.json", "openapi", "This document", "meta", None, auth=False),
    Operation("GET", "/admin/v1/whoami", "whoami", "The caller's role and tenant", "meta", wire.WhoAmI),
    # tenants
    Operation("POST", "/admin/v1/tenants", "tenants_create", "Create a tenant", "tenants", wire.TenantView,
              status=201, body=wire.TenantCreate, operator_only=True, errors=(403, 409), writes=True,
              waits=True),
    Operation("GET", "/admin/v1/tenants", "tenants_list", "List tenants (store and config)", "tenants",
              wire.TenantList, query=(_CURSOR, _LIMIT)),
    Operation("GET", "/admin/v1/tenants/{tenant}", "tenants_get", "Get a tenant", "tenants", wire.TenantView,
              errors=(404,)),
    Operation("PATCH", "/admin/v1/tenants/{tenant}", "tenants_update", "Change a tenant", "tenants",
              wire.TenantView, body=wire.TenantPatch, operator_only=True, errors=(403, 404, 409), writes=True,
              waits=True),
    Operation("DELETE", "/admin/v1/tenants/{tenant}", "tenants_delete",
              "Delete a tenant (its keys must be revoked first)", "tenants", wire.Deleted, query=(_REASON,),
              operator_only=True, errors=(403, 404, 409), writes=True, waits=True),
    Operation("GET", "/admin/v1/tenants/{tenant}/usage", "tenants_usage", "A tenant's spend per day",
              "tenants", wire.Usage, query=(_FROM, _TO), errors=(404,)),
    # keys
    Operation("POST", "/admin/v1/keys", "keys_create", "Create a key: the full key is returned once", "keys",
              wire.CreatedKey, status=201, body=wire.KeyCreate, errors=(403, 404, 409), writes=True),
    Operation("GET", "/admin/v1/keys", "keys_list", "List keys (store and config)", "keys", wire.KeyList,
              query=(_TENANT, _KEY_STATE, _CURSOR, _LIMIT), errors=(403,)),
    Operation("GET", "/admin/v1/keys/{key_id}", "keys_get", "Get a key", "keys", wire.KeyView, errors=(404,)),
    Operation("PATCH", "/admin/v1/keys/{key_id}", "keys_update", "Change a key", "keys", wire.KeyView,
              body=wire.KeyPatch, errors=(404, 409), writes=True, waits=True),
    Operation("POST", "/admin/v1/keys/{key_id}/revoke", "keys_revoke", "Revoke a key for good", "keys",
              wire.KeyView, body=wire.ReasonBody, errors=(404, 409), writes=True, waits=True),
    Operation("POST", "/admin/v1/keys/{key_id}/rotate", "keys_rotate",
              "New secret; the old one works for grace_seconds more. The new full key is returned once",
              "keys", wire.CreatedKey, body=wire.RotateBody, errors=(404, 409), writes=True, waits=True),
    Operation("GET", "/admin/v1/keys/{key_id}/usage", "keys_usage", "A key's spend per day", "keys",
              wire.Usage, query=(_FROM, _TO), errors=(404,)),
    # subscriptions
    Operation("POST", "/admin/v1/subscriptions", "subscriptions_request",
              "Request access to a model marked approval = \"required\"", "subscriptions", Subscription,
              status=201, body=wire.SubscriptionCreate, errors=(403, 404, 409), writes=True, waits=True),
    Operation("GET", "/admin/v1/subscriptions", "subscriptions_list", "List subscriptions", "subscriptions",
              wire.SubscriptionList,
              query=(_TENANT, QueryParam("model", "only this model"), _SUB_STATE, _CURSOR, _LIMIT),
              errors=(403,)),
    Operation("GET", "/admin/v1/subscriptions/{tenant}/{model}", "subscriptions_get", "Get a subscription",
              "subscriptions", Subscription, errors=(404,)),
    Operation("POST", "/admin/v1/subscriptions/{tenant}/{model}/approve", "subscriptions_approve",
              "Approve (or grant without a request)", "subscriptions", Subscription, body=wire.ReasonBody,
              operator_only=True, errors=(403, 404, 409), description=_DECIDE,
              writes=True, waits=True),
    Operation("POST", "/admin/v1/subscriptions/{tenant}/{model}/reject", "subscriptions_reject",
              "Reject a pending request (reason required)", "subscriptions", Subscription,
              body=wire.ReasonBody, operator_only=True, errors=(403, 404, 409), description=_DECIDE,
              writes=True, waits=True),
    Operation("POST", "/admin/v1/subscriptions/{tenant}/{model}/revoke", "subscriptions_revoke",
              "Revoke an approved subscription (reason required)", "subscriptions", Subscription,
              body=wire.ReasonBody, operator_only=True, errors=(403, 404, 409), description=_DECIDE,
              writes=True, waits=True),
    # the response cache
    Operation("POST", "/admin/v1/cache/purge", "cache_purge",
              "Purge cached answers by tenant, API key or model", "cache", CachePurged, body=CachePurge,
              errors=(403, 404),
              description="The Redis tier is purged at once; this node's workers drop the matching entries "
                          "from their memory within memory_within_seconds. A tenant admin purges its own "
                          "tenant's entries only. docs/cache.md."),
    Operation("GET", "/admin/v1/cache/stats", "cache_stats", "This node's cache hits, misses and hit ratio",
              "cache", CacheStatsView, operator_only=True, errors=(403,)),
    # prompts (docs/prompts.md)
    Operation("GET", "/admin/v1/prompts", "prompts_list", "List prompts (config and published)", "prompts",
              PromptList),
    Operation("GET", "/admin/v1/prompts/{name}", "prompts_get", "Get a prompt", "prompts", PromptView,
              errors=(404,)),
    Operation("PUT", "/admin/v1/prompts/{name}", "prompts_publish",
              "Publish or replace a prompt (its revision counts up); in force on every worker when answered",
              "prompts", PromptView, body=PromptPublish, operator_only=True, errors=(403, 409), writes=True,
              waits=True),
    Operation("POST", "/admin/v1/prompts/{name}/live", "prompts_live",
              "Set the live version and drop any split: the rollback", "prompts", PromptView,
              body=PromptLive, operator_only=True, errors=(403, 404, 409), writes=True, waits=True),
    Operation("DELETE", "/admin/v1/prompts/{name}", "prompts_delete", "Withdraw a published prompt",
              "prompts", wire.Deleted, query=(_REASON,), operator_only=True, errors=(403, 404, 409),
              writes=True, waits=True),
    # usage analytics (docs/observability.md#usage-analytics)
    Operation("GET", "/admin/v1/usage", "usage_query",
              "Usage roll-ups: requests, errors, tokens, cost and latency per bucket and group", "usage",
              UsageReport, errors=(403,),
              query=(
                  QueryParam("from", "first bucket: unix seconds, YYYY-MM-DD or an ISO 8601 UTC time "
                                     "(default: 60 minutes, 24 hours or 30 days before `to`)"),
                  QueryParam("to", "last bucket, same forms (default: now)"),
                  QueryParam("granularity", "bucket size (default hour)",
                             {"type": "string", "enum": ["minute", "hour", "day"]}),
                  QueryParam("group_by", "comma-separated: key, tenant, model, provider (default: none, "
                                         "one row per bucket)",
                             {"type": "string", "pattern": "^((key|tenant|model|provider)(,|$))*$"}),
                  QueryParam("key", "only this key id"),
                  _TENANT,
                  QueryParam("model", "only this model (as the client named it)"),
                  QueryParam("provider", "only this provider"),
                  QueryParam("total", "true: one row per group for the whole range",
                             {"type": "string", "enum": ["true", "false"]}),
                  QueryParam("format", "json (default) or csv", {"type": "string", "enum": ["json", "csv"]}),
              ),
              description=CSV_DESCRIPTION),
    # audit
    Operation("GET", "/admin/v1/audit", "audit_list", "The audit log: who did what, when and why", "audit",
              wire.AuditList,
              query=(_TENANT, QueryParam("target", "a tenant id, key id or <tenant>/<model>"),
                     QueryParam("action", "e.g. key.revoke, subscription.approve"),
                     QueryParam("order", "newest first (desc, the default) or oldest first",
                                {"type": "string", "enum": ["asc", "desc"]}),
                     _CURSOR, _LIMIT),
              errors=(403,)),
)
