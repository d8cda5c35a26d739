"""Send each change's messages as they are written: ``TCP_NODELAY`` on the server's sockets.

Streamlit 1.67 binds its listening socket as ``socket.socket(family)``, whose protocol number is 0, and asyncio turns
Nagle's algorithm off only on sockets whose protocol is ``IPPROTO_TCP``. So every connection it accepts keeps Nagle
on: a small message written while an earlier one is not yet acknowledged waits for that acknowledgement, which the
browser's TCP stack delays by up to 40 ms. A change writes ~50 small messages (the status, then the fragment's
deltas), so every change waited ~40 ms with the server idle: measured on loopback, one visitor's cached change took
53 ms of which 13 ms were the server's work (docs/speed.md, "Many visitors").

On Linux an accepted socket inherits ``TCP_NODELAY`` from its listening socket. ``set_nodelay`` sets it on every
listening TCP socket of this process and on the connections they accepted before; later connections inherit it.
``python -m ui.serving`` (``make run``, ``make serve``) watches for the listening socket from the start
(``watch_listener``), so the first page's files and socket are sent without Nagle too; under plain ``streamlit run
app.py`` the first script run sets it (``set_nodelay_once``: the server is listening by then).

The sockets are reached through ``/proc/self/fd`` (a duplicate of each descriptor, closed after: the option belongs
to the socket, not the descriptor). Elsewhere it does nothing.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

FD_FOLDER = "/proc/self/fd"
_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_done = threading.Event()
_lock = threading.Lock()


WATCH_SECONDS, WATCH_EVERY = 60.0, 0.01  # how long and how often ``watch_listener`` looks for the socket


def watch_listener() -> threading.Thread:
    """A daemon thread that runs ``set_nodelay`` every ``WATCH_EVERY`` seconds until it finds a listening socket
    (then the process's later calls return at once), for at most ``WATCH_SECONDS``."""

    def watch() -> None:
        deadline = time.monotonic() + WATCH_SECONDS
        while not _done.is_set() and time.monotonic() < deadline:
            with _lock:
                if set_nodelay():
                    _done.set()
            time.sleep(WATCH_EVERY)

    thread = threading.Thread(target=watch, name="headlight-nodelay", daemon=True)
    thread.start()
    return thread


def set_nodelay_once() -> None:
    """``set_nodelay`` the first time it is called in this process; later calls return at once."""
    if _done.is_set():
        return
    with _lock:
        if not _done.is_set():
            set_nodelay()
            _done.set()


def set_nodelay() -> int:
    """``TCP_NODELAY`` on this process's listening TCP sockets and on the connections accepted on their ports;
    returns how many listening sockets it found (0 where ``/proc/self/fd`` does not exist)."""
    try:
        descriptors = [int(name) for name in os.listdir(FD_FOLDER)]
    except OSError:
        return 0
    listening, connected = [], []
    for descriptor in descriptors:
        sock = _tcp_socket(descriptor)
        if sock is None:
            continue
        try:
            port = sock.getsockname()[1]
            accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            sock.close()
            continue
        (listening if accepting else connected).append((port, sock))
    ports = {port for port, _ in listening}
    for port, sock in [*listening, *connected]:
        try:
            if port in ports:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # closed meanwhile
        finally:
            sock.close()  # the duplicate only
    return len(listening)


def _tcp_socket(descriptor: int) -> socket.socket | None:
    """A duplicate of ``descriptor`` as a socket when it is an IPv4/IPv6 stream socket, else None."""
    try:
        if not stat.S_ISSOCK(os.fstat(descriptor).st_mode):
            return None
        duplicate = os.dup(descriptor)
    except OSError:  # closed since the folder was listed
        return None
    try:
        sock = socket.socket(fileno=duplicate)
    except OSError:
        os.close(duplicate)
        return None
    if sock.family not in _STREAM_FAMILIES or sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock
