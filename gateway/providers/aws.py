"""AWS credentials and SigV4 request signing for the Bedrock translator, through botocore.

Theory of operation
-------------------
Credentials come from botocore's standard chain (``botocore.session.Session().get_credentials()``):
environment variables, the shared ``credentials`` / ``config`` files (a profile with ``role_arn`` is a role
assumption through STS), web identity (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``: EKS IRSA), the
container provider (``AWS_CONTAINER_CREDENTIALS_FULL_URI``: EKS Pod Identity, ECS) and the instance
metadata service. Temporary ones come back as ``RefreshableCredentials``, whose ``get_frozen_credentials``
may call STS *synchronously* when they are near expiry. That must never happen on the request path (it
would stall a worker's whole loop), so:

- ``AwsCredentials`` resolves the chain once, when the provider is built (config load), and freezes the
  credentials (a ``ReadOnlyCredentials`` tuple);
- for refreshable credentials, ``start()`` runs a task that every ``check_every`` seconds freezes them
  again in a thread (``asyncio.to_thread``): botocore refreshes them there when they are within its
  advisory window (15 minutes before expiry), and the new frozen tuple replaces the old one;
- a request reads the current frozen tuple (an attribute read) and signs with it.

Signing is botocore's ``SigV4Auth`` (service ``bedrock``, the provider's region): per request it computes
the payload hash, the canonical request and the signature, and the request gets three or four headers
(``authorization``, ``x-amz-date``, ``x-amz-content-sha256`` is not needed by Bedrock and not sent,
``x-amz-security-token`` with temporary credentials). Nothing else about the request changes per request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session

from gateway.config.loader import ConfigError

__all__ = ["DEFAULT_CHECK_SECONDS", "AwsCredentials", "SigV4Signer", "resolve_credentials"]

log = logging.getLogger("gateway.providers.aws")

#: how often the refresh task looks at refreshable credentials (botocore refreshes 15 min before expiry)
DEFAULT_CHECK_SECONDS: Final = 60.0
#: the signing name of Bedrock Runtime (its service model's ``signingName``)
SIGNING_NAME: Final = "bedrock"


def resolve_credentials(
    profile: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> Credentials:
    """Static keys when given, else botocore's standard chain (``profile`` selects a shared-file profile).
    Raises ConfigError when the chain finds nothing."""
    if access_key_id or secret_access_key:
        if not (access_key_id and secret_access_key):
            raise ConfigError(["bedrock: aws_access_key_id and aws_secret_access_key go together"])
        return Credentials(access_key_id, secret_access_key, session_token)
    try:
        session = Session(profile=profile) if profile else Session()
        creds = session.get_credentials()
    except (BotoCoreError, ClientError) as exc:
        raise ConfigError([f"bedrock: AWS credentials could not be resolved: {exc}"]) from None
    if creds is None:
        raise ConfigError([
            "bedrock: no AWS credentials found (environment, shared files, web identity, container or "
            "instance metadata); see docs/providers.md"
        ])
    return creds


class AwsCredentials:
    """The provider's credentials, frozen; refreshed off the request path (see the module docstring)."""

    __slots__ = ("_creds", "_task", "check_every", "frozen")

    def __init__(self, creds: Credentials, check_every: float = DEFAULT_CHECK_SECONDS) -> None:
        self._creds = creds
        self.check_every = check_every
        #: what requests sign with: replaced whole by the refresh task, never mutated
        self.frozen: ReadOnlyCredentials = creds.get_frozen_credentials()
        self._task: asyncio.Task[None] | None = None

    @property
    def refreshable(self) -> bool:
        return isinstance(self._creds, RefreshableCredentials)

    def start(self) -> None:
        """Start the refresh task on the running loop (once; nothing to do for static credentials)."""
        if self._task is None and self.refreshable:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def refresh(self) -> None:
        """Freeze the credentials again, in a thread (botocore may call STS there)."""
        try:
            self.frozen = await asyncio.to_thread(self._creds.get_frozen_credentials)
        except Exception as exc:  # keep the current ones: they are valid until they expire
            log.warning("AWS credentials refresh failed (the current ones are kept): %s", exc)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            await self.refresh()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


class _Headers(dict[str, str]):
    """The header map ``SigV4Auth`` reads (``items``, ``get_all``, ``in``), without ``email.message``."""

    def get_all(self, name: str) -> list[str]:
        return [self[name]]


class _Request:
    """The request ``SigV4Auth`` signs: what it reads and writes of botocore's ``AWSRequest``."""

    __slots__ = ("body", "context", "headers", "method", "params", "url")

    def __init__(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        self.method = "POST"
        self.url = url
        self.body = body
        self.headers = headers
        self.context: dict[str, Any] = {}
        self.params: dict[str, str] = {}


class _SigV4Auth(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 (canonical request, payload hash, scope, signing key, signature), with its header
    map a plain dict: botocore builds an ``email.message``-based ``HTTPHeaders`` for it, which was most of
    the cost of a signature (a request has each header once, so ``get_all`` is one value)."""

    def headers_to_sign(self, request: Any) -> _Headers:
        out = _Headers()
        for name, value in request.headers.items():
            low = name.lower()
            if low not in SIGNED_HEADERS_BLACKLIST:
                out[low] = value
        return out


class SigV4Signer:
    """Signs Bedrock Runtime requests for one region with the current frozen credentials."""

    __slots__ = ("_host", "_origin", "credentials", "region")

    def __init__(self, credentials: AwsCredentials, region: str, origin: str, host: str) -> None:
        self.credentials = credentials
        self.region = region
        #: scheme://host[:port] of the endpoint, as requests are signed for it
        self._origin = origin
        self._host = host

    def headers(self, path: str, body: bytes) -> list[tuple[str, str]]:
        """The signature headers of ``POST path`` with ``body`` (lower-case names)."""
        auth = _SigV4Auth(self.credentials.frozen, SIGNING_NAME, self.region)
        headers = {"content-type": "application/json", "host": self._host}
        request = _Request(self._origin + path, body, headers)
        auth.add_auth(request)
        signed = request.headers
        out = [("authorization", signed["Authorization"]), ("x-amz-date", signed["X-Amz-Date"])]
        token = request.headers.get("X-Amz-Security-Token")
        if token:
            out.append(("x-amz-security-token", token))
        return out
