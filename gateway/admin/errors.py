"""The admin API's errors: each carries its HTTP status, the OpenAI error ``type`` and a stable ``code``.

Store errors (``gateway.store.StoreError``) already carry ``status`` and ``code``; ``from_store`` keeps
both. Everything the admin API answers with an error status has the one shape
``{"error": {"message", "type", "code", "param"}}`` (``wire.ErrorBody``).
"""

from __future__ import annotations

from gateway.store import StoreError

__all__ = ["AdminError", "error_type", "from_store"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
}


def error_type(status: int) -> str:
    """The OpenAI error ``type`` of an HTTP status."""
    return _TYPES.get(status, "server_error")


class AdminError(Exception):
    """An answer with an error status. The message must never hold a secret: it reaches the client."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or []

    @property
    def type(self) -> str:
        return error_type(self.status)


def from_store(exc: StoreError) -> AdminError:
    return AdminError(exc.status, exc.code, str(exc) or exc.code)


# the codes the admin API adds to the store's (not_found, conflict, invalid_argument, store_unavailable)
MISSING_TOKEN = "missing_token"
INVALID_TOKEN = "invalid_token"
OPERATOR_ONLY = "operator_only"
TENANT_FORBIDDEN = "tenant_forbidden"
STATIC_KEY = "static_key"
STATIC_TENANT = "static_tenant"
INVALID_JSON = "invalid_json"
UNKNOWN_MODEL = "unknown_model"
APPROVAL_NOT_REQUIRED = "approval_not_required"
EMPTY_UPDATE = "empty_update"
ROUTE_NOT_FOUND = "route_not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
