"""The ``access`` phase: who is calling, and may they call this model on this endpoint.

A key is taken from ``Authorization: Bearer <key>`` or ``x-api-key: <key>``. Every refusal has its own
OpenAI-style ``code``, so clients and operators can tell them apart:

    status | code                    | when
    -------+-------------------------+--------------------------------------------------------------
    401    | missing_api_key         | no Authorization or x-api-key header
    401    | malformed_api_key       | not of the form gw-<id>-<secret> (or not a Bearer credential)
    401    | invalid_api_key         | unknown key id, or wrong secret
    401    | api_key_expired         | past the key's expires_at, or a rotated-out secret past its grace
    401    | api_key_revoked         | the key was revoked
    403    | endpoint_not_allowed    | the key may not call this endpoint
    403    | model_not_allowed       | the key or its tenant may not call this model
    403    | subscription_required   | the model needs an approved subscription; the tenant has none
    403    | subscription_pending    | requested, not yet approved
    403    | subscription_rejected   | rejected (or revoked) by an operator
    403    | region_not_allowed      | the key's (or its tenant's) data residency allows no deployment of
           |                         | the model (``regions``, ``required_tags``; docs/routing.md)

No message repeats the presented key; call records carry the key id, never the key.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from gateway import errors
from gateway.auth.keyformat import MalformedKey
from gateway.auth.service import KeyService
from gateway.auth.table import KeyEntry, KeyTable
from gateway.errors import GatewayError
from gateway.phases import Phase
from gateway.routing.router import RegionNotAllowed

if TYPE_CHECKING:
    from gateway.context import Context

__all__ = ["AccessPhase", "check_residency"]

_now = time.time
_INF = float("inf")


#: the answer to a wrong secret (returned shared from ``authenticate``, raised as new instances elsewhere)
_INCORRECT_KEY = errors.Unauthorized("Incorrect API key provided.", code="invalid_api_key")


class _UnknownKeyId(Exception):
    """A well-formed key whose id is not in this worker's table (yet): ask the store before refusing."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id


class AccessPhase(Phase):
    """Two steps: ``authenticate`` (the engine runs it before the body is parsed, so an unknown caller
    learns nothing about its request) and ``on_request`` (after parsing: endpoint, model, subscription)."""

    name = "access"

    def __init__(self, service: KeyService, approval_required: frozenset[str]) -> None:
        self.service = service
        #: models that need an approved subscription
        self.approval = approval_required

    def authenticate(self, ctx: Context) -> Awaitable[KeyEntry] | GatewayError | None:
        """Who is calling, and may they call ``ctx.endpoint``: sets ``ctx.key`` or raises a 401/403.
        Returns an awaitable only when the key id is not in this worker's table, so the store must be
        asked (a key made a moment ago); returns the 401 (shared: answer with it, change nothing in it)
        for an Authorization header whose wrong secret this table has refused before."""
        # PERF: the common case, an Authorization header seen before with a key that does not expire,
        # is one dict lookup of the header's bytes and a few attribute reads (~0.6 us here)
        authorization = ctx.request.header(b"authorization")
        hit = self.service.table._verified.get(authorization) if authorization is not None else None
        if hit is None or hit[1] != _INF or hit[0].revoked or hit[0].expires_at != _INF:
            if hit is None and authorization is not None and authorization in self.service.table._refused:
                return _INCORRECT_KEY  # PERF: the header of a wrong secret seen before: nothing raised
            try:
                self._authenticate(ctx, authorization, False)
            except _UnknownKeyId as exc:
                return self._fetch_then_authenticate(ctx, authorization, exc.key_id)
            return None
        key = ctx.key = hit[0]
        self.service.used.add(key.id)
        if not key.endpoints_all and ctx.endpoint not in key.endpoints:
            self._refuse_endpoint(key, ctx.endpoint)
        return None

    async def _fetch_then_authenticate(
        self, ctx: Context, authorization: bytes | None, key_id: str
    ) -> KeyEntry:
        if not await self.service.fetch(key_id):
            try:  # the store could not answer: a key it added meanwhile passes, an unknown one is not refused
                return self._authenticate(ctx, authorization, False)
            except _UnknownKeyId:
                raise errors.ServiceUnavailable(
                    f"The API key {key_id} could not be checked: the key store is unavailable. "
                    "Retry shortly.",
                    code="key_store_unavailable",
                ) from None
        return self._authenticate(ctx, authorization, True)

    def on_request(self, ctx: Context) -> None:
        key: KeyEntry = ctx.key
        model = ctx.fields.model
        if ctx.prompt is not None:  # a prompt's own model: the prompt's scope and subscription were checked
            pass
        elif not key.unrestricted and (
            not key.models.allows(model) or not key.tenant.models.allows(model)
        ):
            raise errors.PermissionDenied(
                f"The API key {key.id} may not use the model `{model}`.",
                param="model", code="model_not_allowed",
            )
        if self.approval and model in self.approval and ctx.prompt is None:
            self._check_subscription(key, model)
        residency = key.residency
        if residency is not None:
            entry = ctx.runtime.models.get(model)
            router = entry.router if entry is not None else None
            if router is not None:
                # PERF: the router's memo read here; ``Router.allowed`` fills it on the first request
                mask = router._allowed.get(residency)
                if mask is None:
                    mask = router.allowed(residency)
                if not mask:
                    raise RegionNotAllowed(model, residency, key.id)

    async def check(self, ctx: Context, endpoint: str) -> KeyEntry:
        """Authenticate and authorise an endpoint without a model (``/v1/models``)."""
        ctx.endpoint = endpoint
        pending = self.authenticate(ctx)
        if isinstance(pending, GatewayError):
            raise copy.copy(pending)  # shared: raised as a copy
        return await pending if pending is not None else ctx.key

    def _authenticate(self, ctx: Context, authorization: bytes | None, fetched: bool) -> KeyEntry:
        if authorization is not None and authorization[:7] == b"Bearer ":
            raw = authorization[7:]
        else:
            raw = self._credential(ctx, authorization)
        service = self.service
        table = service.table
        hit = table._verified.get(raw)
        if hit is None:
            hit = self._verify(table, raw, fetched, authorization)
        if authorization is not None:
            table.remember(authorization, hit)  # the fast path looks up the whole header value
        key, valid_until = hit
        ctx.key = key  # also on a refusal below: the call record names the revoked or expired key
        if key.revoked or valid_until != _INF or key.expires_at != _INF:
            self._check_time(key, valid_until)
        service.used.add(key.id)
        if not key.endpoints_all and ctx.endpoint not in key.endpoints:
            self._refuse_endpoint(key, ctx.endpoint)
        return key

    @staticmethod
    def _refuse_endpoint(key: KeyEntry, endpoint: str) -> None:
        raise errors.PermissionDenied(
            f"The API key {key.id} may not call the {endpoint} endpoint.", code="endpoint_not_allowed"
        )

    @staticmethod
    def _credential(ctx: Context, authorization: bytes | None) -> bytes:
        """The presented key from an unusual Authorization header, or from x-api-key."""
        if authorization is not None:
            if authorization[:7].lower() != b"bearer ":
                raise errors.Unauthorized(
                    "The Authorization header must be 'Bearer <API key>'", code="malformed_api_key"
                )
            return authorization[7:].strip()
        raw = ctx.request.header(b"x-api-key")
        if raw is None:
            raise errors.Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <API key>' "
                "or in the x-api-key header.", code="missing_api_key",
            )
        return raw.strip()

    @staticmethod
    def _verify(
        table: KeyTable, raw: bytes, fetched: bool, authorization: bytes | None
    ) -> tuple[KeyEntry, float]:
        try:
            hit = table.lookup(raw)
        except MalformedKey as exc:
            raise errors.Unauthorized(f"Malformed API key: {exc}", code="malformed_api_key") from None
        if hit is None:  # a wrong secret for a key id the table holds (never an unknown id: see lookup)
            if authorization is not None:
                table.refuse(authorization)
        elif isinstance(hit, str):  # a key id the table does not hold
            if not fetched:
                raise _UnknownKeyId(hit)
            hit = None
        if hit is None:
            raise errors.Unauthorized(_INCORRECT_KEY.message, code="invalid_api_key")
        return hit

    @staticmethod
    def _check_time(key: KeyEntry, valid_until: float) -> None:
        if key.revoked:
            raise errors.Unauthorized(f"The API key {key.id} has been revoked.", code="api_key_revoked")
        now = _now()
        if now >= key.expires_at or now >= valid_until:
            raise errors.Unauthorized(f"The API key {key.id} has expired.", code="api_key_expired")

    def _check_subscription(self, key: KeyEntry, model: str) -> None:
        state = self.service.table.subscription(key.tenant.id, model)
        if state == "approved":
            return
        tenant = key.tenant.id
        if state is None:
            raise errors.PermissionDenied(
                f"The model `{model}` needs an approved subscription; tenant {tenant} has not subscribed.",
                param="model", code="subscription_required",
            )
        if state == "pending":
            raise errors.PermissionDenied(
                f"Tenant {tenant}'s subscription to `{model}` is waiting for approval.",
                param="model", code="subscription_pending",
            )
        raise errors.PermissionDenied(
            f"Tenant {tenant}'s subscription to `{model}` was {state}.",
            param="model", code="subscription_rejected",
        )


def check_residency(ctx: Context, model: str) -> None:
    """403 ``region_not_allowed`` when the caller's data residency allows no deployment of ``model``
    (an unknown model is left to the engine's 404): for a model the request is moved to after the access
    phase (a budget's downgrade). ``AccessPhase.on_request`` checks the model asked for the same way,
    inline. The router refuses such a request too; these checks come first so that nothing (limits,
    budgets) is reserved for it, and for direct models, which have no plan: their one deployment has no
    region, so they serve no caller with a residency."""
    key = ctx.key
    residency = getattr(key, "residency", None)  # None: no key (auth not required)
    if residency is None:
        return
    entry = ctx.runtime.models.get(model)
    router = entry.router if entry is not None else None
    if router is not None and not router.allowed(residency):
        raise RegionNotAllowed(model, residency, key.id)
