"""``[server] watch_config``: reload when the config file (or a ``file:`` credential it names) changes.

Theory of operation: the supervisor polls, every ``watch_interval``, the identity of each watched path
as ``stat`` sees it through symlinks: device, inode, size, modification and change times (or "missing").

    observation                               | action
    ------------------------------------------+----------------------------------------------------------
    same fingerprint as the one last applied  | nothing
    a new fingerprint                         | wait: remember it and when it was first seen
    it held still for one interval            | reload (the supervisor then skips a reload whose bytes
                                              | hash the same as the running config's: a ``touch``)
    the file is missing                       | wait until it is back (a delete-and-create editor); logged
                                              | once when it goes, once when it is back

Why ``stat`` through the path and not inotify on the file: editors save by writing a new file and renaming
it over the old one, and Kubernetes updates a mounted ConfigMap by swapping a ``..data`` symlink, so the
inode a watch would hold is never written to again; the path's target changes instead, which a fresh
``stat`` sees. The settle delay (debounce) keeps a file being written in several steps from being read
half-written; a reload that still reads a bad file is rejected like any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

__all__ = ["ConfigWatch"]

log = logging.getLogger("gateway.supervisor")

#: a path's identity, or None when it cannot be stat'ed
Fingerprint = tuple[tuple[int, int, int, int, int] | None, ...]


def _stat(path: str) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ConfigWatch:
    """Polled by the supervisor's loop: ``poll(now)`` says when a settled change calls for a reload."""

    __slots__ = ("_applied", "_missing", "_paths", "_seen", "_since", "interval")

    def __init__(self, paths: Iterable[str], interval: float) -> None:
        self.interval = interval
        self._paths: tuple[str, ...] = ()
        self._applied: Fingerprint = ()
        self._seen: Fingerprint | None = None
        self._since = 0.0
        #: the config file was missing at the last poll (logged when that changes)
        self._missing = False
        self.watch(paths)

    def watch(self, paths: Iterable[str]) -> None:
        """Watch ``paths`` from now on, as they are now (after a reload: the files the new config names)."""
        self._paths = tuple(dict.fromkeys(paths))
        self._applied = self._fingerprint()
        self._seen = None

    def _fingerprint(self) -> Fingerprint:
        return tuple(_stat(p) for p in self._paths)

    def poll(self, now: float) -> bool:
        """True when the watched files changed and have held still for one interval."""
        current = self._fingerprint()
        missing = None in current[:1]
        if missing != self._missing and self._paths:
            self._missing = missing
            if missing:
                log.warning("supervisor: the config file %s is gone; serving the running config until a file "
                            "is back at that path", self._paths[0])
            else:
                log.info("supervisor: the config file %s is back", self._paths[0])
        if current == self._applied or missing:
            self._seen = None  # unchanged, or the config file is missing for now
            return False
        if current != self._seen:
            self._seen, self._since = current, now
            return False
        if now - self._since < self.interval:
            return False
        self._applied, self._seen = current, None
        return True
