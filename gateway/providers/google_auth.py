"""Google OAuth access tokens for Vertex AI, kept fresh off the request path.

Theory of operation
-------------------
Vertex AI wants ``Authorization: Bearer <access token>``; tokens come from ``google-auth`` credentials
(a service-account key file, workload identity on GKE through the metadata server, workload identity
federation's ``external_account`` files, ``gcloud`` user credentials: whatever
``google.auth.load_credentials_from_file`` or ``google.auth.default`` finds) and live about an hour.

Refreshing one is a blocking HTTP exchange (a signed JWT to the token URI, or a metadata-server call), so
it never runs on a request: ``TokenSource`` owns one background task per worker and provider that

    refreshes the credentials in a thread (the event loop never blocks on it),
    publishes ``header`` (the ``Bearer …`` value; a new string object per token),
    sleeps until ``REFRESH_MARGIN`` seconds (at most half the lifetime) before the token expires,

and on failure keeps the old token while it is valid and retries with backoff (1 s doubling to 60 s).
A request reads ``header`` (one attribute); a translator compares it by identity with the value its
prebuilt request heads carry and rebuilds them once per new token. Only the very first requests of a
worker, before the first token has arrived, wait for it (``ready``); if that first refresh fails they
fail with 502 naming the cause, and the next request tries again.

The task starts with the first request, or at once when the source is made inside a running event loop
(a worker's startup and config reloads), and stops with ``close``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from gateway.aio import cancel_and_wait, within
from gateway.providers.base import UpstreamError

__all__ = [
    "FIRST_TOKEN_TIMEOUT",
    "REFRESH_MARGIN",
    "SCOPES",
    "TokenSource",
    "file_digest",
    "load_credentials",
]

log = logging.getLogger("gateway.providers.google_auth")

#: the OAuth scope Vertex AI takes
SCOPES: Final = ("https://www.googleapis.com/auth/cloud-platform",)
#: refresh this many seconds before expiry (at most half the token's remaining life)
REFRESH_MARGIN: Final = 300.0
_MAX_BACKOFF: Final = 60.0
#: how long a request waits for a worker's first token before it fails (502)
FIRST_TOKEN_TIMEOUT: Final = 30.0


def load_credentials(credentials_file: str | None) -> tuple[Any, str | None]:
    """(google-auth credentials, their project id or None) from a credentials JSON file, else from
    Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``, the GKE/GCE metadata server
    for workload identity, gcloud). Raises ``ValueError`` (an unreadable or unknown file),
    ``google.auth.exceptions.GoogleAuthError``.

    A file is loaded by its ``type`` with that type's own loader (google-auth's advice: a file is never
    trusted to be whatever it says): ``service_account`` (a key), ``external_account`` (workload identity
    federation: a file- or URL-sourced token, or AWS), ``authorized_user`` (gcloud's user credentials)."""
    import google.auth

    if credentials_file is None:
        found: tuple[Any, str | None] = google.auth.default(scopes=list(SCOPES))
        return found
    with open(credentials_file, encoding="utf-8") as f:
        info = json.load(f)
    kind = info.get("type") if isinstance(info, dict) else None
    scopes = list(SCOPES)
    if kind == "service_account":
        from google.oauth2 import service_account

        creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
        return creds, info.get("project_id")
    if kind == "external_account":
        source = info.get("credential_source") or {}
        if str(source.get("environment_id", "")).startswith("aws"):
            from google.auth import aws

            ext: Any = aws.Credentials.from_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
        else:
            from google.auth import identity_pool

            ext = identity_pool.Credentials.from_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
        return ext, info.get("quota_project_id")
    if kind == "authorized_user":
        from google.oauth2 import credentials

        user = credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=scopes)
        return user, info.get("quota_project_id")
    raise ValueError(f"{credentials_file}: credentials of type {kind!r} are not supported (service_account, "
                     "external_account or authorized_user; or leave credentials_file out for ADC)")


def file_digest(path: str) -> str:
    """A digest of a credentials file as it reads now (a reload compares it: a rotated key file gets the
    provider new credentials); ``""`` when it cannot be read (loading it reports why)."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""


def _transport_request() -> Any:
    from google.auth.transport.requests import Request

    return Request()


class TokenSource:
    """One set of credentials and its current bearer header (see the module docstring)."""

    def __init__(
        self,
        credentials: Any,
        *,
        request_factory: Callable[[], Any] = _transport_request,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.credentials = credentials
        self._request_factory = request_factory
        self._request: Any = None
        self._margin = margin
        #: ``Bearer <token>`` once a token has arrived, else None
        self.header: str | None = None
        self._expiry: dt.datetime | None = None
        #: the last refresh failure, for the requests that wait for a first token
        self.failure: str | None = None
        #: refreshes done (the tests and the metrics read it)
        self.refreshes = 0
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.start()

    def start(self) -> None:
        """Start the refresh task (idempotent; needs a running event loop)."""
        if self._task is None or self._task.done():
            self._changed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="google-token-refresh")

    async def ready(self) -> str:
        """The header, waiting for the first token if need be. Raises UpstreamError when it cannot come."""
        value = self.header
        if value is not None and not self._expired():
            return value
        if self.failure is not None and value is None:  # the refresh keeps trying in the background
            raise UpstreamError(f"no Google access token for Vertex AI: {self.failure}")
        self.start()
        assert self._changed is not None
        self._changed.clear()
        try:
            await within(self._changed.wait(), FIRST_TOKEN_TIMEOUT)
        except TimeoutError:
            raise UpstreamError(f"no Google access token for Vertex AI within {FIRST_TOKEN_TIMEOUT:.0f} s "
                                "(the token endpoint or metadata server does not answer)") from None
        value = self.header
        if value is None or self._expired():
            raise UpstreamError(f"no Google access token for Vertex AI: {self.failure or 'refresh failed'}")
        return value

    def current(self) -> str | None:
        """The header when a valid token is at hand (starting the task if need be), else None."""
        value = self.header
        if value is None or self._expired():
            if self._task is None or self._task.done():
                try:
                    self.start()
                except RuntimeError:
                    pass
            return None
        return value

    def _expired(self) -> bool:
        expiry = self._expiry
        return expiry is not None and expiry <= _utcnow()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)  # the task's end, whatever it was

    # -- the task ----------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        """In a worker thread: one refresh (google-auth's blocking call)."""
        if self._request is None:
            self._request = self._request_factory()
        self.credentials.refresh(self._request)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            try:
                await loop.run_in_executor(None, self._refresh)
            except Exception as exc:  # any failure of the source is retried
                self.failure = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("google credentials refresh failed (retrying in %.0f s): %s",
                            backoff, self.failure)
                wait, backoff = backoff, min(backoff * 2, _MAX_BACKOFF)
            else:
                backoff = 1.0
                self.failure = None
                self.refreshes += 1
                token = self.credentials.token
                expiry = getattr(self.credentials, "expiry", None)
                self._expiry = expiry.replace(tzinfo=dt.UTC) if expiry is not None else None
                self.header = f"Bearer {token}"
                wait = self._until_refresh()
            if self._changed is not None:
                self._changed.set()
            await asyncio.sleep(wait)

    def _until_refresh(self) -> float:
        if self._expiry is None:
            return 3000.0  # no expiry reported: refresh hourly anyway
        left = (self._expiry - _utcnow()).total_seconds()
        return max(1.0, left - min(self._margin, left / 2))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
