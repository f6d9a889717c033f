"""A loopback port whose TCP handshakes never complete, for connect-timeout tests (unit and integration)."""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator

import pytest

HOST = "127.0.0.1"


@contextlib.contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port that never completes a new TCP handshake: a listening socket with a backlog of 0
    that never accepts, its queue filled by one connection. Linux drops further SYNs, so a connect waits
    until its own timeout. Skips where the system answers anyway."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a full accept queue drops new connections only on Linux")
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        srv.bind((HOST, 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        for _ in range(2):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex((HOST, port))
            fillers.append(c)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect((HOST, port))
        except TimeoutError:
            pass
        else:
            pytest.skip("this system completes connections past a full accept queue")
        finally:
            probe.close()
        yield port
    finally:
        for c in fillers:
            c.close()
        srv.close()
