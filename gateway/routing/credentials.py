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
                    |                                                  | ``upstream_permission`` (AWS's 403
                    |                                                  | for a bad key or signature:
                    |                                                  | ``upstream_authentication``)

The provider's own message goes to the operator's log, never to the client: one warning per provider
and status at most every ``LOG_EVERY`` seconds (a revoked key under load fails every request), saying
how many were not logged since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from gateway import errors

__all__ = ["CREDENTIAL_STATUSES", "LOG_EVERY", "CredentialsRejected", "credentials_rejected"]

log = logging.getLogger("gateway.upstream")

#: upstream statuses that mean the provider refused the gateway's credentials
CREDENTIAL_STATUSES: Final = frozenset({401, 403})
#: seconds between two log lines about one provider's refused credentials
LOG_EVERY: Final = 10.0
_MESSAGE_LIMIT: Final = 300

_CODES: Final = {401: "upstream_authentication", 403: "upstream_permission"}


class CredentialsRejected(errors.BadGateway):
    """502: the provider refused the gateway's credential (the client's own key was fine)."""


#: (provider, status) -> (when last logged, refusals not logged since)
_last: dict[tuple[str, int], tuple[float, int]] = {}


def credentials_rejected(
    provider: str, status: int, body: bytes, clock: Callable[[], float] = time.monotonic
) -> CredentialsRejected:
    """The error the client gets for provider ``provider``'s 401/403 answer ``body``; logs it (bounded)."""
    code = _CODES.get(status, "upstream_authentication")
    if status == 403 and any(marker in body for marker in _AUTH_MARKERS):
        code = "upstream_authentication"  # AWS answers a bad signature or key with 403
    what = "rejected" if code == "upstream_authentication" else "refused permission for"
    _log(provider, status, body, clock())
    return CredentialsRejected(
        f"The upstream provider `{provider}` {what} the gateway's credentials ({status}); "
        "the gateway's operator must fix the provider's credential",
        code=code,
    )


#: what a 403 body says when the credential itself is wrong (not a permission it lacks): AWS answers an
#: unknown key, a bad signature or an expired session token with 403, its error type in a header and
#: these messages in the body
_AUTH_MARKERS: Final = (b"InvalidSignatureException", b"UnrecognizedClientException", b"ExpiredToken",
                        b"IncompleteSignature", b"MissingAuthenticationToken",
                        b"signature we calculated does not match",
                        b"security token included in the request is", b"Invalid API Key format")


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
