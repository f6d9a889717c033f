"""Client authentication: the key format (``gw-<keyid>-<secret>``), digests and constant-time checks.

Keys, tenants and subscriptions themselves live in ``gateway.store``; this package knows how a key looks
and how its secret is checked, never where it is kept.
"""

from gateway.auth.keyformat import (
    MalformedDigest,
    MalformedKey,
    digest,
    digest_scheme,
    format_key,
    generate,
    generate_key_id,
    generate_secret,
    is_key_id,
    parse,
    verify,
)

__all__ = [
    "MalformedDigest",
    "MalformedKey",
    "digest",
    "digest_scheme",
    "format_key",
    "generate",
    "generate_key_id",
    "generate_secret",
    "is_key_id",
    "parse",
    "verify",
]
