"""The admin API: tenants, API keys, subscriptions and the audit log, on its own listener and credentials.

- ``app``: ``AdminApp``, the ``gateway.app.App`` that serves ``/admin/...`` (routing, auth, handlers);
- ``routes``: the table of operations; ``openapi``: the OpenAPI 3.1 document built from it;
- ``wire``: request bodies and response views (msgspec Structs); ``views``: records as shown, and the
  static keys and tenants of the config file merged into reads;
- ``auth``: bearer tokens -> operator or tenant admin; ``errors``: status, type and code of each refusal;
- ``process``: the admin child process of ``gateway serve``; ``cli``: ``gateway keys|tenants|...``.

The admin API talks to the store, never to a worker's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.admin.app import AdminApp

__all__ = ["AdminApp"]


def __getattr__(name: str) -> Any:
    # lazily: ``gateway --help`` and the CLI client import ``gateway.admin.cli`` without the server side
    if name == "AdminApp":
        from gateway.admin.app import AdminApp

        return AdminApp
    raise AttributeError(name)
