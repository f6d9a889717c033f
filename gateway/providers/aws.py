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

Signing is botocore's ``SigV4Auth`` (service ``bedrock``, the provider's region), with what does not
change between requests computed once (``_CachedSigV4``):

    per path (a few per model)       the canonical URI (botocore's normalisation and quoting)
    per credentials (refresh task)   the signed headers (``content-type;host;x-amz-date``, and
                                     ``x-amz-security-token`` with temporary credentials), their fixed
                                     canonical lines, the ``Credential=`` prefix of ``authorization``
    per UTC day and secret           the signing key: botocore's ``signature()`` derives it with four
                                     HMACs on every call; it is derived once (with botocore's ``_sign``)
    per second                       the ``x-amz-date`` timestamp

so a request costs the payload's SHA-256, the canonical request's SHA-256 and one HMAC, and the request
gets three or four headers (``authorization``, ``x-amz-date``, ``x-amz-security-token`` with temporary
credentials; ``x-amz-content-sha256`` is not needed by Bedrock and not sent). The result is byte for byte
botocore's own ``add_auth`` (a unit test compares them; the Bedrock mock verifies each request's signature
with botocore when it has the secret).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Final

from botocore.auth import EMPTY_SHA256_HASH, SIGV4_TIMESTAMP, SigV4Auth
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session

from gateway.aio import cancel_and_wait
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
            await cancel_and_wait(task)


class _CachedSigV4(SigV4Auth):  # type: ignore[misc]
    """botocore's SigV4 for one set of frozen credentials, with the per-request work cut to the payload
    hash, the canonical request's hash and the final HMAC (see the module docstring)."""

    def __init__(self, credentials: ReadOnlyCredentials, region: str, host: str) -> None:
        super().__init__(credentials, SIGNING_NAME, region)
        headers = {"content-type": "application/json", "host": host, "x-amz-date": ""}
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = sorted(headers)
        #: ``content-type;host;x-amz-date[;x-amz-security-token]``
        self.signed = ";".join(names)
        # the canonical header lines before and after x-amz-date's (sorted by name, values trimmed)
        lines = [f"{n}:{self._header_value(headers[n])}" for n in names]
        at = names.index("x-amz-date")
        self._before = "\n".join(lines[:at]) + "\nx-amz-date:"
        self._after = "".join("\n" + line for line in lines[at + 1:]) + "\n\n" + self.signed + "\n"
        self._paths: dict[str, str] = {}
        self._day = ""
        self._key = b""
        self._scope = ""
        self._credential = ""

    def signing_key(self, day: str) -> bytes:
        """The key of ``day`` (``YYYYMMDD``), derived once a day with botocore's HMAC chain."""
        if day != self._day:
            k_date = self._sign(f"AWS4{self.credentials.secret_key}".encode(), day)
            k_region = self._sign(k_date, self._region_name)
            k_service = self._sign(k_region, self._service_name)
            self._key = self._sign(k_service, "aws4_request")
            self._scope = f"{day}/{self._region_name}/{self._service_name}/aws4_request"
            self._credential = (f"AWS4-HMAC-SHA256 Credential={self.credentials.access_key}/{self._scope}, "
                                f"SignedHeaders={self.signed}, Signature=")
            self._day = day
        return self._key

    def canonical_uri(self, path: str) -> str:
        uri = self._paths.get(path)
        if uri is None:
            uri = self._paths[path] = self._normalize_url_path(path)
        return uri

    def authorization(self, path: str, body: bytes, timestamp: str) -> str:
        """The ``authorization`` header of ``POST path`` with ``body`` at ``timestamp``
        (``YYYYMMDDTHHMMSSZ``, also the ``x-amz-date`` header)."""
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256_HASH
        canonical = f"POST\n{self.canonical_uri(path)}\n\n{self._before}{timestamp}{self._after}{payload}"
        key = self.signing_key(timestamp[0:8])
        to_sign = (f"AWS4-HMAC-SHA256\n{timestamp}\n{self._scope}\n"
                   f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}")
        return self._credential + hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


class SigV4Signer:
    """Signs Bedrock Runtime requests for one region with the current frozen credentials."""

    __slots__ = ("_auth", "_host", "_now", "_origin", "_stamp", "credentials", "region")

    def __init__(self, credentials: AwsCredentials, region: str, origin: str, host: str) -> None:
        self.credentials = credentials
        self.region = region
        #: scheme://host[:port] of the endpoint, as requests are signed for it
        self._origin = origin
        self._host = host
        self._auth: _CachedSigV4 | None = None
        self._now = -1
        self._stamp = ""

    def headers(self, path: str, body: bytes) -> list[tuple[str, str]]:
        """The signature headers of ``POST path`` with ``body`` (lower-case names)."""
        frozen = self.credentials.frozen
        auth = self._auth
        if auth is None or auth.credentials is not frozen:  # PERF: rebuilt only when refreshed
            auth = self._auth = _CachedSigV4(frozen, self.region, self._host)
        now = int(time.time())
        if now != self._now:
            self._now, self._stamp = now, time.strftime(SIGV4_TIMESTAMP, time.gmtime(now))
        stamp = self._stamp
        out = [("authorization", auth.authorization(path, body, stamp)), ("x-amz-date", stamp)]
        if frozen.token:
            out.append(("x-amz-security-token", frozen.token))
        return out
