"""An upstream that refuses the gateway's own credentials (401, 403): a deployment failure, not the client's.

The client authenticated to the gateway; the gateway then authenticates to the provider with the
credential of the provider's config. When the provider answers 401 (the key is wrong, revoked or
expired: an Entra token past its hour) or 403 (the key may not use that model, region or project), the
fault is the deployment's, and relaying the provider's answer would tell the client that *its* key is
wrong, and show it the provider's message about the gateway's key (OpenAI quotes the key's last
characters). So:

    upstream status | routing (``Outcome.CREDENTIALS``)               | the client gets
    ----------------+-------------------------------------------------+-----------------------------------
    401             | a deployment failure: the breaker counts it, the | 502 ``upstream_error`` /
                    | next untried deployment or the fallback models   | ``upstream_authentication``
    403             | are tried; never the same deployment again       | 502 ``upstream_error`` /
                    |                                                  | ``upstream_permission`` (a 403 for a
                    |                                                  | bad key or signature, as AWS sends:
                    |                                                  | ``upstream_authentication``)

Which 403 says "bad credential" rather than "no permission" is the provider's knowledge: its translator
tells (``credential_failure(status, body)``, a 401 by default; Bedrock's reads AWS's error names).

The provider's own message goes to the operator's log, never to the client: one warning per provider
and status at most every ``LOG_EVERY`` seconds (a revoked key under load fails every request), saying
how many were not logged since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from gateway import errors

__all__ = [
    "CREDENTIAL_STATUSES",
    "LOG_EVERY",
    "CredentialJudge",
    "CredentialsRejected",
    "credentials_rejected",
]

log = logging.getLogger("gateway.upstream")

#: upstream statuses that mean the provider refused the gateway's credentials
CREDENTIAL_STATUSES: Final = frozenset({401, 403})
#: seconds between two log lines about one provider's refused credentials
LOG_EVERY: Final = 10.0
_MESSAGE_LIMIT: Final = 300

_CODES: Final = {401: "upstream_authentication", 403: "upstream_permission"}


class CredentialsRejected(errors.BadGateway):
    """502: the provider refused the gateway's credential (the client's own key was fine)."""


class CredentialJudge(Protocol):
    """What tells a bad credential from a missing permission: the provider's translator."""

    def credential_failure(self, status: int, body: bytes) -> bool: ...


#: (provider, status) -> (when last logged, refusals not logged since)
_last: dict[tuple[str, int], tuple[float, int]] = {}


def credentials_rejected(
    provider: str, status: int, body: bytes, judge: CredentialJudge,
    clock: Callable[[], float] = time.monotonic,
) -> CredentialsRejected:
    """The error the client gets for provider ``provider``'s 401/403 answer ``body`` (``judge``: its
    translator); logs it (bounded)."""
    code = _CODES.get(status, "upstream_authentication")
    if status == 403 and judge.credential_failure(status, body):
        code = "upstream_authentication"
    what = "rejected" if code == "upstream_authentication" else "refused permission for"
    _log(provider, status, body, clock())
    return CredentialsRejected(
        f"The upstream provider `{provider}` {what} the gateway's credentials ({status}); "
        "the gateway's operator must fix the provider's credential",
        code=code,
    )


def _log(provider: str, status: int, body: bytes, now: float) -> None:
    key = (provider, status)
    last, quiet = _last.get(key, (-LOG_EVERY, 0))
    if now - last < LOG_EVERY:
        _last[key] = (last, quiet + 1)
        return
    _last[key] = (now, 0)
    text = body[:_MESSAGE_LIMIT].decode("utf-8", "replace")
    more = f" ({quiet} more since the last line)" if quiet else ""
    log.warning("upstream credentials problem: provider %s answered %d%s; check its api_key / token: %s",
                provider, status, more, text)
