"""The protocol-level load client (``bench.protocol``) against a real server on 127.0.0.1: four clients speaking
Streamlit's WebSocket protocol, three changes each (layer, head, view), every answer checked to be the client's own
text; the JSON line `python -m bench load --json` prints; and what counts as mixed or as an error."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import pytest

from bench.protocol import (
    MOODS,
    WORDS,
    XSRF_COOKIE,
    Page,
    Visit,
    Visitor,
    client_text,
    client_words,
    figure_words,
    is_own,
    listening_pid,
    open_visit,
    run_level,
    threads_and_files,
)
from tests.browser_support import ROOT, free_port, streamlit_server

pytestmark = pytest.mark.slow
JSON_KEYS = {"clients", "changes", "p50_ms", "p95_ms", "errors", "mixed", "changes_per_s", "server_peak_mb"}


@pytest.fixture(scope="module")
def server():
    with streamlit_server() as url:
        yield url


def test_four_clients_get_their_own_charts(server):
    visits: list[Visit] = []
    row = asyncio.run(run_level(server, 4, 3, [server.pid], visits))
    assert [visit.messages for visit in visits] == [[]] * 4
    assert (row["clients"], row["changes"], row["errors"], row["mixed"]) == (4, 12, 0, 0)
    for index, visit in enumerate(visits):
        assert len(visit.latencies) == 3 and visit.opened is not None
        assert is_own(visit.last_chart, index)  # its last chart (Head lines after layer, head, view) is its text's
        assert not is_own(visit.last_chart, index + 1)  # ... and would be mixed for any other client
    assert row["server_cpu_ms_per_change"] > 0 and row["server_peak_mb"] > 100


def test_a_layer_change_sends_only_the_views_fragment_without_options_or_download_buttons(server):
    """A layer change re-runs the views fragment alone, and that run draws the controls a change touches, not the
    display options (drawn outside the fragment) nor any download button (drawn only in an open Download menu)."""
    async def change() -> tuple:
        visitor = Visitor(server, {"text": client_text(7)})
        await visitor.connect()
        first = await visitor.rerun()
        page = Page.of(first)
        visitor.set_widget(page.layer, "double_array_value", [2.0], "layer")
        run = await visitor.rerun(page.fragment)
        await visitor.close()
        return first, run, page

    first, run, page = asyncio.run(change())
    assert page.fragment and {fragment for _, fragment in run.widgets.values()} == {page.fragment}
    assert {"Layer", "Head"} <= set(run.widgets) and run.charts[0].title.startswith("Layer 2, head 0")
    options = {"Hide special tokens ([CLS], [SEP])", "Log colour", "Colour scale"}
    assert options <= set(first.widgets)  # on the page, outside the fragment
    assert not options & set(run.widgets)
    assert not {label for label in {*first.widgets, *run.widgets} if label in {"PNG", "HTML", "NPZ", "CSV"}}


def test_json_line_of_the_command(server):
    done = subprocess.run([sys.executable, "-m", "bench", "load", "--clients", "2", "--changes", "2", "--url",
                           server, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(row) >= JSON_KEYS
    assert (row["clients"], row["changes"], row["errors"], row["mixed"]) == (2, 4, 0, 0)
    assert 0 < row["p50_ms"] <= row["p95_ms"] and row["changes_per_s"] > 0
    assert row["server_peak_mb"] > 100  # found from the port: the server runs here


def test_a_visitor_connects_as_the_page_does(server):
    async def visit() -> tuple:
        visitor, page = await open_visit(server, 0, Visit())
        await visitor.close()
        return visitor, page

    visitor, page = asyncio.run(visit())
    assert visitor.cookies.get(XSRF_COOKIE) and visitor.session_id and (page.layers, page.heads) == (6, 12)


def test_the_server_is_found_from_its_port(server):
    assert listening_pid(server) == server.pid
    threads, files = threads_and_files(server.pid)
    assert threads > 1 and files > 3
    assert listening_pid("http://example.org:80") is None


def test_no_server_is_an_error_not_a_crash():
    visit = Visit()
    assert asyncio.run(open_visit(f"http://127.0.0.1:{free_port()}", 0, visit)) is None
    assert visit.errors == 1 and visit.messages[0].startswith("opening: ")


def test_mixed_means_another_clients_tokens():
    assert client_words(0) == ("cat", "happy") and client_words(len(WORDS)) == ("cat", "sleepy")
    assert len({client_text(index) for index in range(len(WORDS) * len(MOODS))}) == len(WORDS) * len(MOODS)
    spec = {"data": [{"x": ["[CLS] (0)", "the (1)", "happy (2)", "cat (3)"], "z": {"dtype": "f4", "bdata": "ZG9n"}}],
            "layout": {"title": {"text": "Layer 0, head 0"}}}
    assert figure_words(spec) == {"cls", "the", "happy", "cat", "f", "layer", "head"}  # base64 is no text
    assert is_own(spec, 0) and not is_own(spec, 1) and not is_own(spec, len(WORDS))
    spec["data"][0]["x"].append("dog (4)")
    assert not is_own(spec, 0)


SYS_PIDFD_GETFD = 438  # x86-64 and arm64: a copy of another process's descriptor (Linux 5.6)


def server_sockets(pid: int, port: int) -> list[socket.socket]:
    """Copies of the server's TCP sockets on ``port`` (its listening socket and the connections it accepted)."""
    libc = ctypes.CDLL(None, use_errno=True)
    found = []
    handle = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            copy = libc.syscall(SYS_PIDFD_GETFD, handle, int(name), 0)
            if copy < 0:
                if ctypes.get_errno() in (errno.EPERM, errno.ENOSYS):
                    pytest.skip("this kernel or sandbox does not let a test read another process's descriptors")
                continue
            try:
                sock = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
                continue
            if sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port:
                found.append(sock)
            else:
                sock.close()
    finally:
        os.close(handle)
    return found


def test_server_sends_without_nagle(server):
    """While a visitor is connected, the server's listening socket and the visitor's connection have TCP_NODELAY
    (without it a change waited ~40 ms for the client's delayed acknowledgement: ui.serving.nodelay)."""

    async def visit_and_look() -> list[int]:
        visit = Visit()
        opened = await open_visit(server, 0, visit)
        assert opened is not None and visit.messages == []
        try:
            sockets = server_sockets(server.pid, urlparse(server).port)
            try:
                listening = [s for s in sockets if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
                assert len(listening) == 1 and len(sockets) >= 2, "the listening socket and the visitor's"
                return [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets]
            finally:
                for sock in sockets:
                    sock.close()
        finally:
            await opened[0].close()

    flags = asyncio.run(visit_and_look())
    assert flags == [1] * len(flags)


def test_launcher_sets_nodelay_before_the_first_visit():
    """Under ``python -m ui.serving`` (make run, make serve) the listening socket has TCP_NODELAY before any page
    is opened, so the first visitor's page files and socket inherit it."""
    with streamlit_server() as url:
        deadline = time.monotonic() + 5.0
        while True:
            sockets = server_sockets(url.pid, urlparse(url).port)
            try:
                flags = [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets
                         if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)]
            finally:
                for sock in sockets:
                    sock.close()
            if flags == [1] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert flags == [1]
