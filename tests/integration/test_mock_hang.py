"""The mock's ``hang=1`` ends when its client closes its side: a gateway that timed out closes its
upstream connection, and a mock that held such half-closed connections for ever piled up sockets in
CLOSE-WAIT (one per hanging request) for the life of a soak."""

from __future__ import annotations

import socket

import pytest

from .helpers import HOST, chat_request

pytestmark = pytest.mark.timeout(60)


def test_a_hanging_answer_ends_when_the_client_closes_its_side(mock_port: int) -> None:
    with socket.create_connection((HOST, mock_port), timeout=30.0) as sock:
        sock.sendall(chat_request("!mock hang=1 wait", model="mock-1"))
        sock.shutdown(socket.SHUT_WR)
        # the mock closes the connection (no answer: it was told to hang); a recv that times out instead
        # means it still holds the socket
        assert sock.recv(65536) == b""
