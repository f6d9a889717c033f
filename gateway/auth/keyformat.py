"""Client key format: ``gw-<keyid>-<secret>``, made with ``secrets``, stored only as a digest.

Why this shape:

- ``gw-`` makes a leaked key recognisable to secret scanners and to people.
- ``<keyid>`` (12 chars of lowercase base32, 60 bits) is public: it names the key in logs, call records,
  metrics and the admin API, and it is the lookup index of the per-worker key table, so checking a key
  is one dict lookup and one digest, never a scan.
- ``<secret>`` (43 chars of base62, about 256 bits) is the only part worth stealing. It never contains
  ``-`` (nor does the key id), so ``parse`` splits on ``-`` without ambiguity, and a double click selects
  the whole key.

The secret is shown once at creation; the store keeps ``digest(secret, pepper)``, a self-describing
string:

- ``hmac-sha256:<64 hex>``: HMAC-SHA256 keyed with the server pepper (a secret kept outside the store,
  so a copy of the store alone does not allow checking guesses offline);
- ``sha256:<64 hex>``: plain SHA-256, used when the pepper is empty, and what static keys in the TOML
  file may carry so that they do not depend on the pepper.

``verify`` follows the scheme the stored digest names, and compares in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets

__all__ = [
    "DIGEST_SCHEMES",
    "KEY_ID_ALPHABET",
    "KEY_ID_LENGTH",
    "PREFIX",
    "SECRET_ALPHABET",
    "SECRET_LENGTH",
    "SECRET_MAX_LENGTH",
    "SECRET_MIN_LENGTH",
    "Digester",
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

PREFIX = "gw"
#: RFC 4648 base32 alphabet in lower case: no 0/1/8/9, so no O/0 or l/1 confusion when read aloud
KEY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
KEY_ID_LENGTH = 12
#: letters and digits only: URL-safe, no '-' (the separator), selectable with one double click
SECRET_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: 43 base62 characters carry 256 bits
SECRET_LENGTH = 43
#: accepted by ``parse``: generated secrets are SECRET_LENGTH long; shorter ones are too weak to accept
SECRET_MIN_LENGTH = 32
SECRET_MAX_LENGTH = 128
DIGEST_SCHEMES = ("hmac-sha256", "sha256")

# PERF: one precompiled fullmatch decides the common (well-formed) case; the diagnosis of a malformed
# key runs only on failure.
_KEY_RE = re.compile(
    rf"{PREFIX}-([{KEY_ID_ALPHABET}]{{{KEY_ID_LENGTH}}})-([A-Za-z0-9]{{{SECRET_MIN_LENGTH},{SECRET_MAX_LENGTH}}})"
)
_KEY_ID_RE = re.compile(rf"[{KEY_ID_ALPHABET}]{{{KEY_ID_LENGTH}}}")
_SECRET_RE = re.compile(r"[A-Za-z0-9]+")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")


class MalformedKey(ValueError):
    """A presented key does not have the ``gw-<keyid>-<secret>`` shape.

    The message says what is wrong and never repeats the input: the input may be a real secret pasted
    into the wrong place, and this message may reach a log line or a response body.
    """


class MalformedDigest(ValueError):
    """A stored digest is not ``hmac-sha256:<hex>`` or ``sha256:<hex>`` (a config or store error)."""


def generate_key_id() -> str:
    return "".join(secrets.choice(KEY_ID_ALPHABET) for _ in range(KEY_ID_LENGTH))


def generate_secret() -> str:
    return "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LENGTH))


def format_key(key_id: str, secret: str) -> str:
    """The full key as shown to its owner (once). Rotation keeps the key id and formats a new secret."""
    return f"{PREFIX}-{key_id}-{secret}"


def generate() -> tuple[str, str, str]:
    """A new key: ``(full_key, key_id, secret)``. Store ``digest(secret, pepper)``, show ``full_key`` once."""
    key_id = generate_key_id()
    secret = generate_secret()
    return format_key(key_id, secret), key_id, secret


def is_key_id(value: str) -> bool:
    """True when ``value`` has the shape of a key id (for validating ids from the admin API or the TOML)."""
    return _KEY_ID_RE.fullmatch(value) is not None


def parse(raw: str) -> tuple[str, str]:
    """``(key_id, secret)`` from a presented key; ``MalformedKey`` says why it is not one."""
    m = _KEY_RE.fullmatch(raw)
    if m is not None:
        return m.group(1), m.group(2)
    raise MalformedKey(_diagnose(raw))


def _diagnose(raw: str) -> str:
    if not raw:
        return "the API key is empty"
    if not raw.startswith(PREFIX + "-"):
        return f"the API key does not start with '{PREFIX}-'"
    parts = raw.split("-")
    if len(parts) != 3:
        return f"the API key must have the form {PREFIX}-<key id>-<secret>"
    _, key_id, secret = parts
    if not _KEY_ID_RE.fullmatch(key_id):
        return f"the API key's id must be {KEY_ID_LENGTH} characters of lowercase base32"
    if not _SECRET_RE.fullmatch(secret):
        return "the API key's secret may hold only letters and digits"
    return f"the API key's secret must be {SECRET_MIN_LENGTH} to {SECRET_MAX_LENGTH} characters long"


class Digester:
    """``digest`` and ``verify`` bound to one pepper, with the HMAC key pads hashed once.

    The hot path builds one Digester per configured pepper at setup and calls it per request.
    """

    # PERF: hmac.digest fetches the OpenSSL algorithm on every call (~8 us measured on a 2-core CI box);
    # copying two SHA-256 states that already absorbed the key pads (RFC 2104) costs ~2.5 us.

    __slots__ = ("_inner", "_outer", "_plain")

    def __init__(self, pepper: bytes) -> None:
        self._plain = not pepper
        key = hashlib.sha256(pepper).digest() if len(pepper) > _BLOCK else pepper
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, secret: str) -> str:
        """The self-describing digest of ``secret`` under this pepper (see the module docstring)."""
        if self._plain:
            return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
        return "hmac-sha256:" + self._hmac(secret)

    def _hmac(self, secret: str) -> str:
        inner = self._inner.copy()
        inner.update(secret.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def verify(self, secret: str, stored_digest: str) -> bool:
        """Whether ``secret`` matches ``stored_digest``, compared in constant time.

        The stored digest's own scheme decides how the secret is hashed: a ``sha256:`` digest verifies
        with or without a pepper configured; an ``hmac-sha256:`` digest never verifies without one (the
        key was made under a pepper this server does not have). A malformed stored digest matches nothing.
        """
        if stored_digest.startswith("hmac-sha256:"):
            if self._plain:
                return False
            candidate = "hmac-sha256:" + self._hmac(secret)
        elif stored_digest.startswith("sha256:"):
            candidate = "sha256:" + hashlib.sha256(secret.encode()).hexdigest()
        else:
            return False
        try:
            return hmac.compare_digest(candidate, stored_digest)
        except TypeError:  # a stored digest with non-ASCII characters: malformed, matches nothing
            return False


_BLOCK = 64  # SHA-256 block size in bytes
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


@functools.lru_cache(maxsize=16)
def _digester(pepper: bytes) -> Digester:
    return Digester(pepper)


def digest(secret: str, pepper: bytes) -> str:
    """The self-describing digest of ``secret``: ``hmac-sha256:<hex>``, or ``sha256:<hex>`` without pepper.

    An empty pepper means plain SHA-256. That is safe for these secrets (256 random bits: nothing to
    brute-force), but a pepper also protects keys made by hand or imported with less entropy, and makes
    a stolen copy of the store useless without the server's configuration.
    """
    return _digester(pepper).digest(secret)


def digest_scheme(stored: str) -> str:
    """The scheme a stored digest names (``"hmac-sha256"`` or ``"sha256"``); ``MalformedDigest`` otherwise.

    Use it to validate digests read from the TOML file or given to the admin API before storing them.
    """
    scheme, sep, hexpart = stored.partition(":")
    if not sep or scheme not in DIGEST_SCHEMES:
        raise MalformedDigest(
            f"a key digest must start with one of {', '.join(s + ':' for s in DIGEST_SCHEMES)}"
        )
    if not _HEX64_RE.fullmatch(hexpart):
        raise MalformedDigest("a key digest must end with 64 lowercase hex digits")
    return scheme


def verify(secret: str, stored_digest: str, pepper: bytes) -> bool:
    """Whether ``secret`` matches ``stored_digest`` under ``pepper``, in constant time.

    See ``Digester.verify``; build a ``Digester`` once where this runs per request.
    """
    return _digester(pepper).verify(secret, stored_digest)
