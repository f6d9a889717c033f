"""The write batch writes to uvloop's plain TCP sockets itself (``send_now``, ``direct_fd``): what the
kernel does not take goes through the transport, and the bytes on the wire stay complete and in order,
also when the peer stops reading, when a connection is TLS or not uvloop's, and when the peer is gone."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from types import ModuleType
from typing import Any

import pytest
import uvloop
from cryptography import x509  # google-auth's dependency
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twins import impls

from gateway._core import http_py
from gateway.server.listener import BATCH, _unsent, direct_fd

IMPLS = impls(http_py, "_http")


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    mod: ModuleType = request.param
    return mod


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_send_now_writes_what_the_socket_takes(impl: ModuleType) -> None:
    a, b = _pair()
    with a, b:
        assert impl.send_now(a.fileno(), b"hello") == 5
        assert b.recv(100) == b"hello"
        assert impl.send_pieces_now(a.fileno(), [b"one ", b"", b"two ", b"three"]) == 13
        assert b.recv(100) == b"one two three"


def test_send_now_takes_part_of_a_write_when_the_socket_is_full_then_none(impl: ModuleType) -> None:
    a, b = _pair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = b"x" * (4 << 20)
        first = impl.send_now(a.fileno(), big)
        assert 0 < first < len(big)  # the kernel took what fit
        assert impl.send_now(a.fileno(), big) == 0  # full: EAGAIN is "nothing written", not an error
        assert impl.send_pieces_now(a.fileno(), [b"y", b"z"]) == 0


def test_send_now_to_a_gone_peer_writes_nothing_and_raises_nothing(impl: ModuleType) -> None:
    a, b = _pair()
    b.close()
    with a:
        assert impl.send_now(a.fileno(), b"lost") == 0  # EPIPE: the transport meets it and reports it
        assert impl.send_pieces_now(a.fileno(), [b"lost", b"too"]) == 0


def test_send_pieces_now_writes_at_most_64_pieces(impl: ModuleType) -> None:
    a, b = _pair()
    with a, b:
        pieces = [b"%03d," % i for i in range(100)]
        sent = impl.send_pieces_now(a.fileno(), pieces)
        assert sent == 64 * 4
        assert b.recv(4096) == b"".join(pieces[:64])
        assert _unsent(pieces, sent) == pieces[64:]


@pytest.mark.parametrize(("sent", "rest"), [
    (0, [b"abc", b"de", b"f"]),
    (1, [b"bc", b"de", b"f"]),
    (3, [b"de", b"f"]),
    (4, [b"e", b"f"]),
    (5, [b"f"]),
    (6, []),
])
def test_unsent_is_what_a_partial_writev_left(sent: int, rest: list[bytes]) -> None:
    assert _unsent([b"abc", b"de", b"f"], sent) == rest


class _Echo(asyncio.Protocol):
    """A server side that the test writes through the batch, as the listener does."""

    def __init__(self, made: asyncio.Future[Any]) -> None:
        self.made = made

    def connection_made(self, transport: Any) -> None:
        self.made.set_result(transport)


async def _serve() -> tuple[Any, Any, socket.socket]:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Any] = loop.create_future()
    server = await loop.create_server(lambda: _Echo(made), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    transport = await made
    return server, transport, client


async def _read_all(loop: asyncio.AbstractEventLoop, client: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(client, 1 << 16)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_a_uvloop_tcp_transport_is_written_directly_and_the_order_survives_a_full_socket() -> None:
    async def go() -> tuple[int, bytes, bytes, int]:
        loop = asyncio.get_running_loop()
        server, transport, client = await _serve()
        fd = direct_fd(transport)
        # a peer that reads nothing for a while: the socket fills, the rest waits in the transport, and
        # later pieces must queue behind it, not overtake it on the socket
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        pieces = [(b"%06d|" % i) * 200 for i in range(400)]  # 2.8 MB in 400 pieces, 8 iterations
        for k in range(0, len(pieces), 50):
            for piece in pieces[k:k + 50]:
                BATCH.write(transport, piece, fd)
            await asyncio.sleep(0)
        queued = transport.get_write_buffer_size()
        expected = b"".join(pieces)
        got = await _read_all(loop, client, len(expected))
        client.close()
        transport.close()
        server.close()
        return fd, got, expected, queued

    fd, got, expected, queued = uvloop.run(go())
    assert fd >= 0
    assert queued > 0  # the transport did hold what the socket did not take
    assert got == expected


def test_interleaved_connections_keep_their_order_while_one_is_backed_up_and_after_it_drains() -> None:
    async def go() -> list[tuple[bytes, bytes]]:
        loop = asyncio.get_running_loop()
        server_a, ta, ca = await _serve()
        server_b, tb, cb = await _serve()
        fa, fb = direct_fd(ta), direct_fd(tb)
        ta.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        out = []
        for phase in range(2):  # backed up, then (after the reader caught up) direct again
            sent_a, sent_b = [], []
            for k in range(20):
                for w in range(10):  # one iteration: A, B, A, B, ... (A's socket fills up)
                    a = (b"a%d.%d.%d|" % (phase, k, w)) * 300
                    b = b"b%d.%d.%d|" % (phase, k, w)
                    BATCH.write(ta, a, fa)
                    BATCH.write(tb, b, fb)
                    sent_a.append(a)
                    sent_b.append(b)
                await asyncio.sleep(0)
            want_a, want_b = b"".join(sent_a), b"".join(sent_b)
            got_a = await _read_all(loop, ca, len(want_a))
            got_b = await _read_all(loop, cb, len(want_b))
            await asyncio.sleep(0.01)  # the transport writes what it held; the next round goes direct
            out.append((got_a, want_a))
            out.append((got_b, want_b))
        for c, t, srv in ((ca, ta, server_a), (cb, tb, server_b)):
            c.close()
            t.close()
            srv.close()
        return out

    for got, want in uvloop.run(go()):
        assert got == want


def test_a_direct_write_to_a_gone_peer_closes_the_transport_as_a_transport_write_would() -> None:
    async def go() -> tuple[bool, int]:
        server, transport, client = await _serve()
        fd = direct_fd(transport)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # a reset: the next writes fail
        await asyncio.sleep(0.05)
        for _ in range(3):
            BATCH.write(transport, b"x" * 1000, fd)
            await asyncio.sleep(0.01)
        closing = transport.is_closing()
        server.close()
        return closing, fd

    closing, fd = uvloop.run(go())
    assert fd >= 0
    assert closing  # the transport met the error and dropped the connection


def test_tls_and_other_loops_transports_are_never_written_directly(tmp_path: Any) -> None:
    async def tls() -> int:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Any] = loop.create_future()
        ctx = _self_signed(tmp_path)
        server = await loop.create_server(lambda: _Echo(made), "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        transport = await made
        fd = direct_fd(transport)
        writer.close()
        server.close()
        return fd

    async def plain_asyncio() -> int:
        server, transport, client = await _serve()
        fd = direct_fd(transport)
        client.close()
        transport.close()
        server.close()
        return fd

    assert uvloop.run(tls()) == -1
    assert asyncio.run(plain_asyncio()) == -1  # asyncio's own loop: its transports do the writing


def _self_signed(tmp_path: Any) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx
