"""``AdminApp``: the admin API, an ``App`` served by the native listener on its own socket.

Theory of operation, per request:

    step        | does                                                   | may answer
    ------------+--------------------------------------------------------+---------------------------------
    route       | match method and path in ``routes.ROUTES``            | 404 route_not_found, 405
    authenticate| bearer token -> operator or tenant admin               | 401 missing_token / invalid_token
    authorise   | operator-only operations                               | 403 operator_only
    decode      | query parameters (known names only), JSON body         | 400
    handle      | ``h_<handler>``: scope to the caller's tenant, call    | 403 tenant_forbidden, 404, 409,
                | the store with ``actor`` and ``reason`` (the store     | 503 store_unavailable
                | writes the audit entry in the same transaction)        |
    in force    | a write: wait until every worker of the node applies   | (the write's answer, with
                | it (``[admin] apply_timeout`` at most)                 | x-gateway-applied)

Tenant isolation, one rule: an object *addressed by id* (a key, a tenant, a subscription in the path)
that belongs to another tenant answers 404 with the same body as a missing one, so a tenant admin
cannot learn what exists elsewhere; a *parameter naming another tenant* (``?tenant=``, a body's
``tenant``) answers 403 ``tenant_forbidden`` whether or not that tenant exists. Lists and the audit log
are always narrowed to the caller's tenant.

Records of the config file (``[tenants.*]``, ``[auth] keys``) are merged into reads with
``"source": "config"``; every write to them answers 409 ``static_tenant`` / ``static_key``.

A created or rotated key's secret appears in exactly one place: the body of that response. It is never
logged, never put in an audit entry, never kept: the store gets its digest (HMAC-SHA256 under the
``[auth] pepper`` when one is set, else SHA-256).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from gateway._core.jsoncheck import TOO_DEEP, check_json
from gateway.admin import errors as E
from gateway.admin import wire
from gateway.admin.auth import Principal, TokenChecker
from gateway.admin.errors import AdminError, from_store
from gateway.admin.openapi import document_bytes
from gateway.admin.prompts import PromptAdmin
from gateway.admin.routes import ROUTES, Operation
from gateway.admin.usage import UsageAdmin, UsageText
from gateway.admin.views import (
    StaticRecords,
    key_view,
    merge_pages,
    static_key_view,
    static_tenant_view,
    tenant_view,
)
from gateway.aio import within
from gateway.app import Request, Responder
from gateway.auth import keyformat
from gateway.auth.applied import wait_applied
from gateway.config import Config, resolve_secret
from gateway.store import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    ApiKey,
    Conflict,
    Decision,
    NotFound,
    Store,
    StoreError,
    Subscription,
)
from gateway.store.models import check_day
from gateway.wire import MAX_JSON_DEPTH

__all__ = ["AdminApp"]

log = logging.getLogger("gateway.admin")

T = TypeVar("T")

#: endpoint names a key may be limited to (the same list the config loader accepts for static keys)
KEY_ENDPOINTS = ("*", "chat", "completions", "embeddings", "messages", "models", "responses")
#: longest range a usage query may span
MAX_USAGE_DAYS = 366
DEFAULT_USAGE_DAYS = 30
#: how long a store call may take before the admin API answers 503 (a wedged Redis must not hang clients)
STORE_TIMEOUT = 10.0

#: where msgspec puts a failed value: `` - at `$.field[0]` ``; a dict's key: `` - at `key` in `$.field` ``
_WHERE = re.compile(r" - at `(?:key` in `)?\$\.?([^`]*)`$")

_JSON_HEADERS = [("content-type", "application/json"), ("cache-control", "no-store")]
_encode = msgspec.json.Encoder().encode


class Call:
    """One routed, authenticated request, as the handlers see it."""

    __slots__ = ("body", "params", "principal", "query")

    def __init__(self, principal: Principal, params: dict[str, str], query: dict[str, str], body: bytes):
        self.principal = principal
        self.params = params
        self.query = query
        self.body = body


Result = tuple[int, Any]


def _not_found(kind: str, ident: str) -> AdminError:
    """The one answer for "missing" and "another tenant's": the two must be indistinguishable."""
    return AdminError(404, "not_found", f"no {kind} {ident}")


def _decode(body: bytes, tp: type[T]) -> T:
    if not body.strip():
        body = b"{}"
    if check_json(body, MAX_JSON_DEPTH) == TOO_DEEP:  # the decoder recurses: refuse before it does
        raise AdminError(400, E.INVALID_JSON,
                         f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        return msgspec.json.decode(body, type=tp)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = None
        where = _WHERE.search(message)
        if where is not None:
            message, param = message[:where.start()], where.group(1) or None
            field = (param or "").partition("[")[0].partition(".")[0]
            if field in wire.LIMITS and ("length" in message or "regex" in message):
                message = wire.LIMITS[field]  # msgspec's words would show the regex
        raise AdminError(400, "invalid_argument", message, param=param) from None
    except msgspec.DecodeError:
        raise AdminError(400, E.INVALID_JSON, "the request body is not valid JSON") from None


def _check_endpoints(endpoints: list[str]) -> None:
    for ep in endpoints:
        if ep not in KEY_ENDPOINTS:
            raise AdminError(
                400, "invalid_argument", f"an endpoint is one of {', '.join(KEY_ENDPOINTS)}",
                param="allowed_endpoints",
            )


def _check_residency(regions: object, tags: object) -> None:
    """``allowed_regions`` (a list, null or unset) and ``required_tags`` (a list or unset) of a body."""
    if isinstance(regions, list):
        if not regions:
            raise AdminError(
                400, "invalid_argument",
                "allowed_regions must list at least one region (null: any region)", param="allowed_regions",
            )
        if not all(regions):
            raise AdminError(400, "invalid_argument", "a region must not be empty", param="allowed_regions")
    if isinstance(tags, list) and not all(tags):
        raise AdminError(400, "invalid_argument", "a tag must not be empty", param="required_tags")


def _check_time(value: float | None, param: str) -> None:
    if value is not None and not math.isfinite(value):
        raise AdminError(
            400, "invalid_argument", f"{param} must be a finite number of Unix seconds", param=param
        )


def _check_reason(reason: str | None) -> None:
    """A reason given as a query parameter: the same bounds as in a body (``wire.Reason``)."""
    if reason is not None and (len(reason) > wire.MAX_REASON or not re.match(wire.ONE_LINE, reason)):
        raise AdminError(400, "invalid_argument", wire.LIMITS["reason"], param="reason")


class AdminApp(PromptAdmin, UsageAdmin):
    """The admin API (see the module docstring). One instance per admin process.

    ``store``: an open store (tests); or ``open_store``: how to open one at startup. When opening fails,
    the app keeps answering (503 ``store_unavailable`` on the API, ``degraded`` on healthz) and retries
    in the background. ``node_dir``: the node's directory, where the workers of this node publish how far
    their key tables are (``gateway.auth.applied``); a write is answered once every one holds it.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        open_store: Callable[[], Awaitable[Store]] | None = None,
        clock: Callable[[], float] = time.time,
        node_dir: str | None = None,
    ) -> None:
        self.draining = False
        self._store = store
        self._opener = open_store
        self._owns_store = store is None
        self._store_error = "the store has not been opened yet"
        self._retry: asyncio.Task[None] | None = None
        self._clock = clock
        #: the node's directory, where its workers publish the change version their key tables hold (None:
        #: no workers to wait for)
        self._node_dir = node_dir
        self._routes: dict[tuple[str, ...], dict[str, Operation]] = {}
        for op in ROUTES:
            self._routes.setdefault(op.segments, {})[op.method] = op
        self.reload(config)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def reload(self, config: Config) -> None:
        """Take the credentials, static records, models and defaults of ``config`` (the store stays)."""
        pepper = resolve_secret(config.auth.pepper).encode() if config.auth.pepper else b""
        self._digester = keyformat.Digester(pepper)
        self._tokens = TokenChecker(config.admin, pepper)
        self._static = StaticRecords(config)
        self._approval = {name: m.approval for name, m in config.models.items()}
        self._approval.update({f"prompt:{name}": p.approval for name, p in config.prompts.items()})
        self._rotation_grace = config.auth.rotation_grace
        self.config = config

    @property
    def store(self) -> Store | None:
        return self._store

    async def startup(self) -> None:
        if self._store is None and self._opener is not None:
            if not await self._try_open(first=True):
                self._retry = asyncio.get_running_loop().create_task(self._keep_opening())

    async def _try_open(self, first: bool = False) -> bool:
        assert self._opener is not None
        try:
            self._store = await within(self._opener(), STORE_TIMEOUT)
        except (StoreError, OSError, TimeoutError) as exc:
            self._store_error = f"the store could not be opened: {str(exc) or exc.__class__.__name__}"
            # the first failure is an error; the retries (every 30 s at most) only say so at debug level
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "admin API: %s; answering 503 until it can be opened (retrying)", self._store_error,
            )
            return False
        log.info("admin API: store opened")
        return True

    async def _keep_opening(self) -> None:
        delay = 1.0
        while self._store is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
            await self._try_open()

    async def shutdown(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._store is not None and self._owns_store:
            await self._store.close()

    def _require_store(self) -> Store:
        if self._store is None:
            raise AdminError(503, "store_unavailable", self._store_error)
        return self._store

    # -- the request cycle ---------------------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder) -> None:
        headers: list[tuple[str, str]] = []
        content = _JSON_HEADERS
        actor = "-"
        try:
            op, call = self._route(request)
            actor = call.principal.actor
            if op.operator_only and not call.principal.is_operator:
                raise AdminError(403, E.OPERATOR_ONLY, "only the operator may do this")
            call.query = self._query(request.query, op)
            status, result = await within(getattr(self, "h_" + op.handler)(call), STORE_TIMEOUT)
            content = _JSON_HEADERS
            if isinstance(result, UsageText):  # a CSV export
                content = [("content-type", result.content_type), ("cache-control", "no-store")]
                result = result.body
            body = result if isinstance(result, bytes) else _encode(result)
            if op.writes:
                headers = await self._in_force(op)
        except AdminError as exc:
            status, body, headers = exc.status, self._error_body(exc), exc.headers
        except StoreError as exc:
            err = from_store(exc)
            status, body = err.status, self._error_body(err)
        except TimeoutError:
            status = 503
            body = self._error_body(AdminError(503, "store_unavailable", "the store did not answer in time"))
        except Exception:
            log.exception("admin API: unhandled error in %s %s", request.method, request.path)
            status = 500
            body = self._error_body(AdminError(500, "internal_error", "internal error"))
        if request.method != "GET" or status >= 500:
            # key ids and tenant ids only: a secret is never in a path, and bodies are not logged
            log.info("admin API: %s %s %s -> %d", actor, request.method, request.path, status)
        if status >= 300:
            content = _JSON_HEADERS
        responder.send(status, [*content, *headers], body)

    async def _in_force(self, op: Operation) -> list[tuple[str, str]]:
        """After a write: the store's change version that holds it, and whether every worker of this node
        applies it now (``x-gateway-applied: node``), waiting up to ``[admin] apply_timeout`` for the
        workers' key tables (``gateway.auth.applied``); ``pending; late=N`` when some did not in time (they
        will with their next notice from the store), ``unknown`` when the store did not say its version."""
        try:
            version = await within(self._require_store().change_version(), STORE_TIMEOUT)
        except (StoreError, AdminError, OSError, TimeoutError) as exc:
            log.warning("admin API: could not read the store's change version after a write: %s", exc)
            return [("x-gateway-applied", "unknown")]
        headers = [("x-gateway-change-version", str(version))]
        directory = self._node_dir
        if not op.waits or directory is None:
            return [*headers, ("x-gateway-applied", "node")]
        try:
            late = await wait_applied(directory, version, self.config.admin.apply_timeout)
        except OSError as exc:
            log.warning("admin API: cannot read the workers' applied versions in %s: %s", directory, exc)
            return [*headers, ("x-gateway-applied", "unknown")]
        if late:
            log.warning(
                "admin API: change %d not applied by %d worker(s) (pid %s) within %gs; they apply it with "
                "their next notice from the store", version, len(late), ", ".join(map(str, late)),
                self.config.admin.apply_timeout,
            )
            return [*headers, ("x-gateway-applied", f"pending; late={len(late)}")]
        return [*headers, ("x-gateway-applied", "node")]

    @staticmethod
    def _error_body(exc: AdminError) -> bytes:
        return _encode(wire.ErrorBody(error=wire.ErrorDetail(
            message=exc.message, type=exc.type, code=exc.code, param=exc.param
        )))

    def _route(self, request: Request) -> tuple[Operation, Call]:
        raw = request.path.strip("/").split("/")
        segments = [urllib.parse.unquote(s) for s in raw]
        methods: dict[str, Operation] | None = None
        params: dict[str, str] = {}
        for template, by_method in self._routes.items():
            if len(template) != len(segments):
                continue
            found: dict[str, str] = {}
            for t, s in zip(template, segments, strict=True):
                if t.startswith("{"):
                    if not s:
                        break
                    found[t[1:-1]] = s
                elif t != s:
                    break
            else:
                methods, params = by_method, found
                break
        if methods is None:
            raise AdminError(404, E.ROUTE_NOT_FOUND, f"no admin API endpoint at {request.path}")
        method = "GET" if request.method == "HEAD" else request.method
        op = methods.get(method)
        if op is None:
            allow = ", ".join(sorted(methods))
            raise AdminError(405, E.METHOD_NOT_ALLOWED, f"use {allow}", headers=[("allow", allow)])
        if op.auth:
            principal = self._tokens.check(request.header(b"authorization"))
        else:
            principal = Principal("-", None)
        return op, Call(principal, params, {}, request.body)

    @staticmethod
    def _query(raw: str, op: Operation) -> dict[str, str]:
        allowed = {q.name for q in op.query}
        out: dict[str, str] = {}
        try:
            pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=False)
        except ValueError:
            raise AdminError(400, "invalid_argument", "malformed query string") from None
        for name, value in pairs:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise AdminError(
                    400, "invalid_argument", f"unknown query parameter {name!r} (known: {known})", param=name
                )
            if value:
                out[name] = value
        return out

    # -- shared helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _page_args(call: Call) -> tuple[str | None, int]:
        raw = call.query.get("limit")
        limit = DEFAULT_PAGE_SIZE
        if raw is not None:
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
                message = f"limit must be an integer from 1 to {MAX_PAGE_SIZE}"
                raise AdminError(400, "invalid_argument", message, param="limit")
            limit = int(raw)
        return call.query.get("cursor"), limit

    @staticmethod
    def _scope(principal: Principal, requested: str | None, param: str = "tenant") -> str | None:
        """The tenant to act on or filter by: a tenant admin's own; 403 when it names another."""
        if principal.tenant is None:
            return requested
        if requested is not None and requested != principal.tenant:
            raise AdminError(
                403, E.TENANT_FORBIDDEN, f"this token manages tenant {principal.tenant} only", param=param
            )
        return principal.tenant

    @staticmethod
    def _one_of(call: Call, name: str, allowed: tuple[str, ...]) -> Any:
        value = call.query.get(name)
        if value is not None and value not in allowed:
            raise AdminError(400, "invalid_argument", f"{name} is one of {', '.join(allowed)}", param=name)
        return value

    def _static_tenant_refusal(self, tenant: str) -> AdminError:
        message = f"tenant {tenant} is declared in the config file ([tenants.{tenant}]): change it there"
        return AdminError(409, E.STATIC_TENANT, message)

    async def _mirror_config_tenant(self, tenant: str, actor: str) -> bool:
        """A tenant declared only in the config file gets a store record (a copy of its TOML table) the
        first time a key or subscription is made for it through this API: keys and subscriptions live in
        the store, which refers to its own tenants. The config file stays the source of the tenant's
        settings (the data plane lets the TOML table win). Returns False for a tenant unknown to both."""
        if not await self._config_only(tenant):
            return False
        static = self._static.tenants[tenant]
        try:
            await self._require_store().create_tenant(
                tenant, name=static.name or tenant, allowed_models=static.models,
                limit_policy=static.limit_policy, budget=static.budget, labels=static.labels,
                allowed_regions=static.regions, required_tags=static.required_tags, actor=actor,
                reason=f"mirrored from [tenants.{tenant}] of the config file",
            )
        except Conflict:
            pass  # made by a concurrent request
        return True

    async def _config_only(self, tenant: str) -> bool:
        """True when ``tenant`` is a config tenant that the store does not know."""
        if tenant not in self._static.tenants:
            return False
        try:
            await self._require_store().get_tenant(tenant)
        except NotFound:
            return True
        return False

    # -- meta ----------------------------------------------------------------------------------------------

    async def h_health(self, call: Call) -> Result:
        store = self._store
        if store is None:
            return 503, wire.Health(status="degraded", store="unavailable")
        try:
            await within(store.change_version(), 2.0)
        except (StoreError, OSError, TimeoutError):
            return 503, wire.Health(status="degraded", store="unavailable")
        return 200, wire.Health(status="ok", store="ok")

    async def h_openapi(self, call: Call) -> Result:
        return 200, document_bytes()

    async def h_whoami(self, call: Call) -> Result:
        p = call.principal
        return 200, wire.WhoAmI(
            actor=p.actor, role="operator" if p.is_operator else "tenant_admin", tenant=p.tenant
        )

    # -- the response cache ----------------------------------------------------------------------------------

    async def h_cache_purge(self, call: Call) -> Result:
        from gateway.cache.admin import CachePurge, purge

        order = _decode(call.body, CachePurge)
        if order.tenant is not None:
            self._scope(call.principal, order.tenant)  # a tenant admin: 403 for another tenant
        return 200, await purge(self.config, self._node_dir, call.principal, order)

    async def h_cache_stats(self, call: Call) -> Result:
        from gateway.cache.admin import node_stats

        return 200, node_stats(self._node_dir, self.config.cache.enabled)

    # -- tenants ---------------------------------------------------------------------------------------------

    async def _tenant_view(self, tenant_id: str) -> wire.TenantView:
        static = self._static.tenants.get(tenant_id)
        if static is not None:
            return static_tenant_view(tenant_id, static)
        try:
            return tenant_view(await self._require_store().get_tenant(tenant_id))
        except NotFound:
            raise _not_found("tenant", tenant_id) from None

    async def h_tenants_create(self, call: Call) -> Result:
        b = _decode(call.body, wire.TenantCreate)
        if b.id in self._static.tenants:
            raise self._static_tenant_refusal(b.id)
        _check_residency(b.allowed_regions, b.required_tags)
        t = await self._require_store().create_tenant(
            b.id, name=b.name, allowed_models=b.allowed_models, limit_policy=b.limit_policy, budget=b.budget,
            labels=b.labels, allowed_regions=b.allowed_regions, required_tags=b.required_tags,
            actor=call.principal.actor, reason=b.reason,
        )
        return 201, tenant_view(t)

    async def h_tenants_list(self, call: Call) -> Result:
        cursor, limit = self._page_args(call)
        own = call.principal.tenant
        store = self._require_store()
        if own is not None:  # a tenant admin's list holds its own tenant, if it exists
            try:
                view = await self._tenant_view(own)
            except AdminError:
                return 200, wire.TenantList(data=[], next_cursor=None)
            return 200, wire.TenantList(data=[] if cursor is not None else [view], next_cursor=None)
        items, next_cursor = await merge_pages(
            lambda c, n: store.list_tenants(cursor=c, limit=n), tenant_view, self._static.tenant_views(),
            cursor, limit,
        )
        return 200, wire.TenantList(data=items, next_cursor=next_cursor)

    async def h_tenants_get(self, call: Call) -> Result:
        tenant = call.params["tenant"]
        if not call.principal.may_see(tenant):
            raise _not_found("tenant", tenant)
        return 200, await self._tenant_view(tenant)

    async def h_tenants_update(self, call: Call) -> Result:
        tenant = call.params["tenant"]
        if tenant in self._static.tenants:
            raise self._static_tenant_refusal(tenant)
        patch = _decode(call.body, wire.TenantPatch)
        update = patch.update()
        if not update.changed_fields():
            raise AdminError(400, E.EMPTY_UPDATE, "nothing to change: give at least one field")
        _check_residency(update.allowed_regions, update.required_tags)
        try:
            t = await self._require_store().update_tenant(
                tenant, update, actor=call.principal.actor, reason=patch.reason
            )
        except NotFound:
            raise _not_found("tenant", tenant) from None
        return 200, tenant_view(t)

    async def h_tenants_delete(self, call: Call) -> Result:
        tenant = call.params["tenant"]
        if tenant in self._static.tenants:
            raise self._static_tenant_refusal(tenant)
        reason = call.query.get("reason")
        _check_reason(reason)
        try:
            await self._require_store().delete_tenant(tenant, actor=call.principal.actor, reason=reason)
        except NotFound:
            raise _not_found("tenant", tenant) from None
        return 200, wire.Deleted(id=tenant, deleted=True)

    async def h_tenants_usage(self, call: Call) -> Result:
        tenant = call.params["tenant"]
        if not call.principal.may_see(tenant):
            raise _not_found("tenant", tenant)
        await self._tenant_view(tenant)
        return 200, await self._usage(call, "tenant", tenant)

    async def _usage(self, call: Call, scope: str, ident: str) -> wire.Usage:
        today = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC).date()
        last = self._day(call, "to", today)
        first = self._day(call, "from", last - datetime.timedelta(days=DEFAULT_USAGE_DAYS - 1))
        if first > last:
            raise AdminError(400, "invalid_argument", "from must not be after to", param="from")
        if (last - first).days >= MAX_USAGE_DAYS:
            message = f"a range spans at most {MAX_USAGE_DAYS} days"
            raise AdminError(400, "invalid_argument", message, param="from")
        days = await self._require_store().spend_by_day(
            "key" if scope == "key" else "tenant", ident, first.isoformat(), last.isoformat()
        )
        return wire.Usage(
            scope="key" if scope == "key" else "tenant", id=ident, first_day=first.isoformat(),
            last_day=last.isoformat(), days=days, total_usd=math.fsum(days.values()),
        )

    @staticmethod
    def _day(call: Call, name: str, default: datetime.date) -> datetime.date:
        raw = call.query.get(name)
        if raw is None:
            return default
        try:
            if not check_day(raw):
                raise ValueError
            return datetime.date.fromisoformat(raw)
        except ValueError:
            message = f"{name} must be a day, YYYY-MM-DD"
            raise AdminError(400, "invalid_argument", message, param=name) from None

    # -- keys ------------------------------------------------------------------------------------------------

    async def _key(self, call: Call) -> tuple[wire.KeyView, ApiKey | None]:
        """The key in the path, as a view, and its store record (None for a static key). 404 when it
        does not exist or belongs to another tenant."""
        key_id = call.params["key_id"]
        now = self._clock()
        static = self._static.keys.get(key_id)
        if static is not None:
            view, record = static_key_view(static, now), None
        else:
            try:
                record = await self._require_store().get_key(key_id)
            except NotFound:
                raise _not_found("key", key_id) from None
            view = key_view(record, now)
        if not call.principal.may_see(view.tenant):
            raise _not_found("key", key_id)
        return view, record

    def _static_key_refusal(self, key_id: str) -> AdminError:
        return AdminError(
            409, E.STATIC_KEY, f"key {key_id} is declared in the config file ([auth] keys): change it there"
        )

    async def h_keys_create(self, call: Call) -> Result:
        b = _decode(call.body, wire.KeyCreate)
        tenant = self._scope(call.principal, b.tenant)
        if tenant is None:
            raise AdminError(400, "invalid_argument", "tenant is required", param="tenant")
        _check_endpoints(b.allowed_endpoints)
        _check_time(b.expires_at, "expires_at")
        if b.expires_at is not None and b.expires_at <= self._clock():
            raise AdminError(
                400, "invalid_argument", "expires_at is in the past: the key would be expired at creation",
                param="expires_at",
            )
        _check_residency(b.allowed_regions, b.required_tags)
        store = self._require_store()
        full, key_id, secret = keyformat.generate()
        while key_id in self._static.keys:  # never shadow a static key (60 random bits: not in practice)
            full, key_id, secret = keyformat.generate()
        for attempt in (1, 2):
            try:
                key = await store.create_key(
                    key_id=key_id, tenant=tenant, name=b.name, digest=self._digester.digest(secret),
                    allowed_models=b.allowed_models, allowed_endpoints=b.allowed_endpoints,
                    expires_at=b.expires_at, limit_policy=b.limit_policy, budget=b.budget, labels=b.labels,
                    allowed_regions=b.allowed_regions, required_tags=b.required_tags,
                    actor=call.principal.actor, reason=b.reason,
                )
                break
            except NotFound:
                if attempt == 2 or not await self._mirror_config_tenant(tenant, call.principal.actor):
                    raise _not_found("tenant", tenant) from None
        return 201, wire.CreatedKey(api_key=full, key=key_view(key, self._clock()))

    async def h_keys_list(self, call: Call) -> Result:
        cursor, limit = self._page_args(call)
        tenant = self._scope(call.principal, call.query.get("tenant"))
        state = self._one_of(call, "state", ("active", "revoked"))
        store = self._require_store()
        now = self._clock()
        items, next_cursor = await merge_pages(
            lambda c, n: store.list_keys(tenant=tenant, state=state, cursor=c, limit=n),
            lambda k: key_view(k, now), self._static.key_views(now, tenant, state), cursor, limit,
        )
        return 200, wire.KeyList(data=items, next_cursor=next_cursor)

    async def h_keys_get(self, call: Call) -> Result:
        view, _ = await self._key(call)
        return 200, view

    async def h_keys_update(self, call: Call) -> Result:
        view, record = await self._key(call)
        if record is None:
            raise self._static_key_refusal(view.id)
        patch = _decode(call.body, wire.KeyPatch)
        update = patch.update()
        if not update.changed_fields():
            raise AdminError(400, E.EMPTY_UPDATE, "nothing to change: give at least one field")
        if isinstance(update.allowed_endpoints, list):
            _check_endpoints(update.allowed_endpoints)
        if isinstance(update.expires_at, float):
            _check_time(update.expires_at, "expires_at")
        _check_residency(update.allowed_regions, update.required_tags)
        key = await self._require_store().update_key(
            view.id, update, actor=call.principal.actor, reason=patch.reason
        )
        return 200, key_view(key, self._clock())

    async def h_keys_revoke(self, call: Call) -> Result:
        view, record = await self._key(call)
        if record is None:
            raise self._static_key_refusal(view.id)
        b = _decode(call.body, wire.ReasonBody)
        key = await self._require_store().revoke_key(view.id, actor=call.principal.actor, reason=b.reason)
        return 200, key_view(key, self._clock())

    async def h_keys_rotate(self, call: Call) -> Result:
        view, record = await self._key(call)
        if record is None:
            raise self._static_key_refusal(view.id)
        b = _decode(call.body, wire.RotateBody)
        grace = self._rotation_grace if b.grace_seconds is None else b.grace_seconds
        if not (math.isfinite(grace) and grace >= 0):
            message = "grace_seconds must be 0 or more"
            raise AdminError(400, "invalid_argument", message, param="grace_seconds")
        secret = keyformat.generate_secret()
        key = await self._require_store().rotate_key(
            view.id, self._digester.digest(secret), grace_seconds=grace, actor=call.principal.actor,
            reason=b.reason,
        )
        full = keyformat.format_key(view.id, secret)
        return 200, wire.CreatedKey(api_key=full, key=key_view(key, self._clock()))

    async def h_keys_usage(self, call: Call) -> Result:
        view, _ = await self._key(call)
        return 200, await self._usage(call, "key", view.id)

    # -- subscriptions -----------------------------------------------------------------------------------

    async def _check_model(self, model: str) -> None:
        approval = self._approval.get(model) or await self.prompt_approval(model)
        if approval is None:
            raise AdminError(400, E.UNKNOWN_MODEL, f"no model {model} in the config", param="model")
        if approval != "required":
            raise AdminError(
                409, E.APPROVAL_NOT_REQUIRED,
                f'model {model} is not marked approval = "required": every tenant may use it', param="model",
            )

    async def h_subscriptions_request(self, call: Call) -> Result:
        b = _decode(call.body, wire.SubscriptionCreate)
        tenant = self._scope(call.principal, b.tenant)
        if tenant is None:
            raise AdminError(400, "invalid_argument", "tenant is required", param="tenant")
        await self._check_model(b.model)
        for attempt in (1, 2):
            try:
                sub = await self._require_store().request_subscription(
                    tenant, b.model, actor=call.principal.actor, reason=b.reason
                )
                break
            except NotFound:
                if attempt == 2 or not await self._mirror_config_tenant(tenant, call.principal.actor):
                    raise _not_found("tenant", tenant) from None
        return 201, sub

    async def h_subscriptions_list(self, call: Call) -> Result:
        cursor, limit = self._page_args(call)
        tenant = self._scope(call.principal, call.query.get("tenant"))
        state = self._one_of(call, "state", ("pending", "approved", "rejected", "revoked"))
        page = await self._require_store().list_subscriptions(
            tenant=tenant, model=call.query.get("model"), state=state, cursor=cursor, limit=limit
        )
        return 200, wire.SubscriptionList(data=page.items, next_cursor=page.next_cursor)

    async def h_subscriptions_get(self, call: Call) -> Result:
        tenant, model = call.params["tenant"], call.params["model"]
        if not call.principal.may_see(tenant):
            raise _not_found("subscription", f"{tenant}/{model}")
        try:
            return 200, await self._require_store().get_subscription(tenant, model)
        except NotFound:
            raise _not_found("subscription", f"{tenant}/{model}") from None

    async def _decide(self, call: Call, decision: Decision) -> Result:
        tenant, model = call.params["tenant"], call.params["model"]
        b = _decode(call.body, wire.ReasonBody)
        if decision != "approve" and not (b.reason and b.reason.strip()):
            raise AdminError(400, "invalid_argument", f"a reason is required to {decision}", param="reason")
        if decision == "approve":
            await self._check_model(model)
        store = self._require_store()
        for attempt in (1, 2):
            try:
                sub: Subscription = await store.decide_subscription(
                    tenant, model, decision, actor=call.principal.actor, reason=b.reason
                )
                break
            except NotFound:
                if attempt == 2 or not await self._mirror_config_tenant(tenant, call.principal.actor):
                    raise
        return 200, sub

    async def h_subscriptions_approve(self, call: Call) -> Result:
        return await self._decide(call, "approve")

    async def h_subscriptions_reject(self, call: Call) -> Result:
        return await self._decide(call, "reject")

    async def h_subscriptions_revoke(self, call: Call) -> Result:
        return await self._decide(call, "revoke")

    # -- audit -----------------------------------------------------------------------------------------------

    async def h_audit_list(self, call: Call) -> Result:
        cursor, limit = self._page_args(call)
        tenant = self._scope(call.principal, call.query.get("tenant"))
        order = self._one_of(call, "order", ("asc", "desc")) or "desc"
        page = await self._require_store().list_audit(
            tenant=tenant, target=call.query.get("target"), action=call.query.get("action"),
            newest_first=order == "desc", cursor=cursor, limit=limit,
        )
        return 200, wire.AuditList(data=page.items, next_cursor=page.next_cursor)
