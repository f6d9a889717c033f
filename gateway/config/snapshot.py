"""A validated configuration as one value: what the supervisor reads once and hands to every child.

Theory of operation:

    step                         | who        | what
    -----------------------------+------------+------------------------------------------------------------
    ``read_snapshot(path)``      | supervisor | reads the file's bytes once, validates them, and records the
                                 |            | contents of every ``file:`` credential the validation read
    ``encode_snapshot``          | supervisor | one msgpack encoding of the whole: the ``Config`` as
                                 |            | validated, the credential files, the source's digest
    ``decode_snapshot``          | child      | the same ``Config`` back (no TOML, no file read)
    ``install``                  | child      | pins the credential files: ``resolve_secret`` answers
                                 |            | ``file:`` references from them, never from the disk

So a child never reads the configuration file or a key file itself: whatever is rewritten on disk after
the supervisor validated it cannot reach one worker and not another. A child forked later (a respawn)
inherits the supervisor's current snapshot and installs it the same way. ``env:`` references need no
pinning: the environment is inherited at fork and does not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import msgspec

from gateway.config.schema import Config

__all__ = [
    "ConfigSnapshot",
    "decode_snapshot",
    "encode_snapshot",
    "install",
    "read_secret_file",
    "read_snapshot",
    "snapshot_of",
]


class ConfigSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One validated configuration and everything a process would otherwise read to use it."""

    #: the configuration file's path (for messages); empty for an embedded or in-memory config
    source: str
    #: sha256 of the file's bytes and of each credential file: equal digests, nothing to reload
    digest: str
    config: Config
    #: ``file:`` credential path -> contents, as the validation read them
    files: dict[str, str] = msgspec.field(default_factory=dict)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ConfigSnapshot)

#: credential files this process was handed (``install``): ``resolve_secret`` reads them from here
_pinned: dict[str, str] = {}
#: while ``_capturing`` runs: every credential file read, path -> contents
_captured: dict[str, str] | None = None


def encode_snapshot(snapshot: ConfigSnapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode_snapshot(data: bytes) -> ConfigSnapshot:
    """Raises ``msgspec.DecodeError`` or ``msgspec.ValidationError`` for bytes that are no snapshot."""
    return _decoder.decode(data)


def read_secret_file(path: str) -> str:
    """The contents of credential file ``path``: the pinned copy when this process was handed one, else
    read from the disk (and recorded while a snapshot is being read). Raises OSError, UnicodeDecodeError."""
    pinned = _pinned.get(path)
    if pinned is not None:
        return pinned
    with open(path, encoding="utf-8") as f:
        value = f.read()
    if _captured is not None:
        _captured[path] = value
    return value


@contextlib.contextmanager
def _capturing() -> Iterator[dict[str, str]]:
    global _captured
    files: dict[str, str] = {}
    previous, _captured = _captured, files
    try:
        yield files
    finally:
        _captured = previous


def _digest(raw: bytes, files: dict[str, str]) -> str:
    h = hashlib.sha256(raw)
    for path in sorted(files):
        h.update(b"\0" + path.encode() + b"\0" + files[path].encode())
    return h.hexdigest()


def read_snapshot(path: str | os.PathLike[str]) -> ConfigSnapshot:
    """Read the file at ``path`` once and validate it (``ConfigError`` / ``ConfigFileError`` as
    ``load_config``, and a config without models: ``check_servable``); the snapshot holds the credential
    files the validation read."""
    from gateway.config.loader import check_servable, load_config_bytes, read_config_file

    source = os.fspath(path)
    raw = read_config_file(source)
    with _capturing() as files:
        config = load_config_bytes(raw, source)
    check_servable(config, source)
    return ConfigSnapshot(source=source, digest=_digest(raw, files), config=config, files=dict(files))


def snapshot_of(config: Config) -> ConfigSnapshot:
    """A snapshot of a configuration that has no file (the embedded default)."""
    return ConfigSnapshot(source="", digest="", config=config)


def install(snapshot: ConfigSnapshot) -> Config:
    """Make ``snapshot``'s credential files the ones this process resolves; returns its config."""
    _pinned.clear()
    _pinned.update(snapshot.files)
    return snapshot.config
