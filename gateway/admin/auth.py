"""Who is calling the admin API: the operator, a tenant admin, or nobody (401).

Credentials are bearer tokens (``Authorization: Bearer <token>``). The config holds only their digests
(``[admin] operator_token``, ``[admin] tenant_tokens``), made by ``gateway keys digest``: ``sha256:<hex>``,
or ``hmac-sha256:<hex>`` under the ``[auth] pepper``. A presented token is checked against each digest
with ``keyformat.Digester.verify`` (constant-time comparison); the token itself is never logged or
echoed.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.admin.errors import INVALID_TOKEN, MISSING_TOKEN, AdminError
from gateway.auth.keyformat import Digester
from gateway.config.schema import AdminConfig

__all__ = ["OPERATOR", "Principal", "TokenChecker"]

#: the actor name of the operator in the audit log
OPERATOR = "operator"
_CHALLENGE = [("www-authenticate", 'Bearer realm="gateway-admin"')]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``tenant`` is None for the operator, who sees every tenant."""

    actor: str
    tenant: str | None

    @property
    def is_operator(self) -> bool:
        return self.tenant is None

    def may_see(self, tenant: str) -> bool:
        return self.tenant is None or self.tenant == tenant


class TokenChecker:
    """The configured admin credentials, ready to check presented tokens."""

    def __init__(self, admin: AdminConfig, pepper: bytes) -> None:
        self._digester = Digester(pepper)
        creds: list[tuple[str, Principal]] = []
        if admin.operator_token is not None:
            creds.append((admin.operator_token, Principal(OPERATOR, None)))
        for tenant, digest in sorted(admin.tenant_tokens.items()):
            creds.append((digest, Principal(f"tenant:{tenant}", tenant)))
        self._creds = creds

    @property
    def configured(self) -> bool:
        return bool(self._creds)

    def check(self, authorization: bytes | None) -> Principal:
        """The principal an ``Authorization`` header value names; AdminError 401 otherwise."""
        if authorization is None:
            raise AdminError(401, MISSING_TOKEN, "an admin bearer token is required", headers=_CHALLENGE)
        scheme, _, token_b = authorization.strip().partition(b" ")
        token = token_b.strip().decode("latin-1")
        if scheme.lower() != b"bearer" or not token:
            raise AdminError(
                401, MISSING_TOKEN, "use the header 'Authorization: Bearer <admin token>'", headers=_CHALLENGE
            )
        for digest, principal in self._creds:
            if self._digester.verify(token, digest):
                return principal
        raise AdminError(401, INVALID_TOKEN, "the admin token is not valid", headers=_CHALLENGE)
