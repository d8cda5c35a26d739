"""``ui.serving.nodelay``: Nagle's algorithm off on the server's sockets, set on a listening socket made as
Streamlit makes its own (protocol 0, which asyncio leaves alone), on the connections it accepted, and inherited by
later ones; a client socket of the same process is left as it was."""

from __future__ import annotations

import socket

import pytest

from ui.serving.nodelay import set_nodelay


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture
def listener():
    sock = socket.socket(socket.AF_INET)  # as Streamlit 1.67's _bind_socket: proto 0
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_listening_and_accepted_sockets_get_nodelay(listener):
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    assert (nodelay(listener), nodelay(accepted), nodelay(client)) == (0, 0, 0)
    assert set_nodelay() >= 1  # listening sockets found: this one at least
    assert (nodelay(listener), nodelay(accepted)) == (1, 1)
    assert nodelay(client) == 0  # its local port is not a listening one: not the server's
    later_client = socket.create_connection(listener.getsockname())
    later, _ = listener.accept()
    assert nodelay(later) == 1  # inherited from the listening socket
    for sock in (client, accepted, later_client, later):
        sock.close()


def test_descriptors_left_open(listener):
    before = listener.fileno()
    set_nodelay()
    listener.getsockname()  # still open: only the duplicates were closed
    assert listener.fileno() == before
