"""Where a node keeps its state files, and the startup check that it can.

The files: the SQLite store (``[store] url``, with its ``-wal`` and ``-shm``), the limits' shared table
(``<store>-limits``) and the breaker file (``<store>-breakers``). A relative SQLite path lives in the
**data directory**:

    [store] data_dir   | the data directory
    -------------------+---------------------------------------------------------------------------------
    given              | that directory (relative to the config file's directory)
    not given          | the config file's directory, when this user may write there (as always before);
                       | else the user's state directory: ``$XDG_STATE_HOME/llm-gateway``, or
                       | ``~/.local/state/llm-gateway`` (a read-only ``/etc/gateway`` in a container)

``prepare_state_dir`` runs once in the process that starts the workers, before the first fork: it makes
the directory and proves it writable by creating a file there. When the node needs state files and cannot
write them, the gateway refuses to start with a message naming the directory: every worker would
otherwise fail on its first open, be respawned and fail again while the port refuses connections.
"""

from __future__ import annotations

import os
import tempfile

from gateway.config.schema import Config

__all__ = [
    "StateDirError",
    "default_data_dir",
    "prepare_state_dir",
    "sqlite_path",
    "user_state_dir",
    "uses_local_state",
]

#: the directory made under the user's state directory
APP_DIR = "llm-gateway"
#: the files beside a SQLite store
_SIDE_FILES = ("-limits", "-breakers", "-wal", "-shm")


class StateDirError(Exception):
    """The node's state directory cannot be used; the message names it and says what to do."""


def user_state_dir() -> str:
    """``$XDG_STATE_HOME/llm-gateway`` (an absolute one: the spec ignores a relative value), else
    ``~/.local/state/llm-gateway``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, APP_DIR)


def default_data_dir(config_dir: str) -> str:
    """The data directory when ``[store] data_dir`` is not given (see the table above)."""
    if os.access(config_dir, os.W_OK | os.X_OK):
        return config_dir
    return user_state_dir()


def sqlite_path(config: Config) -> str | None:
    """The SQLite store's file, or None for a Redis store."""
    scheme, sep, rest = config.store.url.partition("://")
    return rest if scheme == "sqlite" and sep and rest else None


def uses_local_state(config: Config) -> bool:
    """Whether the node's workers open state files: a SQLite store, and something that needs it (keys,
    limits or budgets, the admin API, a model with a circuit breaker shared between workers)."""
    if sqlite_path(config) is None:
        return False
    from gateway.admin.process import admin_wanted

    lim = config.limits
    return (
        config.auth.required or bool(lim.policies or lim.budgets) or admin_wanted(config)
        or any(m.routing().breaker.enabled for m in config.models.values() if m.deployments or m.provider)
    )


def prepare_state_dir(config: Config) -> str | None:
    """Make the directory of the node's state files and prove it writable; its path, or None when the
    node needs no state files. Raises ``StateDirError``."""
    path = sqlite_path(config)
    if path is None or not uses_local_state(config):
        return None
    directory = os.path.dirname(os.path.abspath(path))
    hint = "set [store] data_dir (or an absolute sqlite:/// url) to a directory this user can write"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".gateway-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise StateDirError(
            f"the state directory {directory} is not writable ({exc.strerror or exc}): the store, the "
            f"limits table and the breaker file live there; {hint}"
        ) from None
    for name in (path, *(path + suffix for suffix in _SIDE_FILES)):
        if os.path.exists(name) and not os.access(name, os.R_OK | os.W_OK):
            raise StateDirError(f"the state file {name} is not writable by this user; {hint}")
    return directory
