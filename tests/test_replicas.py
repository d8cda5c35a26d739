"""Replicas behind nginx (``ui.serving.replicas``): the rendered configuration, and on loopback two real replicas
behind a real nginx with real Chromium visitors: each session stays on its replica, a replica killed mid-session lets
its visitors reload and carry on from the URL on the other, and no visitor ever sees another's text.

The live test is skipped (with the reason) where nginx or Chromium is missing; in CI (CI=true), which installs both,
a missing one is a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from urllib.parse import urlencode

import pytest

from tests.browser_support import CHART, chromium_path, free_port, launch_chromium
from ui.serving import replicas as rp

# Each visitor's own text: words no other visitor's text has, so a chart drawn from another session's trace shows.
WORDS = [("apple", "river"), ("piano", "garden"), ("winter", "doctor"), ("castle", "bread")]
TIMEOUT_MS = 180_000  # a replica's first chart: ~10 s on a quiet 2-core machine, over a minute at a load average of 15
VISITOR = "{} headlight-visitor-{}"  # the access log names each visitor by its browser


def _required(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run the replica test: " + reason)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------------------------
# The configuration.


def test_the_site_routes_each_cookie_to_its_replica_with_the_others_as_backups():
    site = rp.site_config(rp.replicas_on([9101, 9102, 9103]), "127.0.0.1:9100")
    assert "{{" not in site and "listen 127.0.0.1:9100;" in site
    assert re.search(r"upstream headlight_any \{\s+least_conn;", site)
    block = re.search(r"upstream headlight_r2 \{(.*?)\}", site, re.S).group(1)
    assert "server 127.0.0.1:9102 max_fails=1" in block
    assert "server 127.0.0.1:9101 backup;" in block and "server 127.0.0.1:9103 backup;" in block
    assert re.search(r"map \$cookie_headlight_replica \$headlight_upstream \{[^}]*r3 headlight_r3;", site)
    # the replica that answered is the last address tried: after a failover from r1 to r3, r3
    pattern = re.search(r'"~(.*?)" r3;', site).group(1)
    assert re.search(pattern, "127.0.0.1:9101, 127.0.0.1:9103") and not re.search(pattern, "127.0.0.1:9103, x")
    assert "proxy_set_header Upgrade $http_upgrade;" in site and "proxy_read_timeout 1d;" in site


def test_rendering_refuses_a_placeholder_without_a_value_and_a_value_without_a_placeholder():
    assert rp.render("listen {{ listen }};", {"listen": "1"}) == "listen 1;"
    with pytest.raises(ValueError, match="placeholders"):
        rp.render("listen {{ listen }};", {})
    with pytest.raises(ValueError, match="placeholders"):
        rp.render("listen 80;", {"listen": "1"})


def test_the_command_checks_its_replicas_and_ports(capsys):
    assert rp.main(["--replicas", "2", "--port", "9200", "--site", "--server-name", "example.org"]) == 0
    site = capsys.readouterr().out
    assert "server 127.0.0.1:9201" in site and "server 127.0.0.1:9202" in site and "server_name example.org;" in site
    with pytest.raises(SystemExit):
        rp.main(["--replicas", "3", "--backend-ports", "9201,9202", "--site"])
    with pytest.raises(ValueError, match="own port"):
        rp.replicas_on([9201, 9201])
    with pytest.raises(ValueError, match="between 1 and"):
        rp.replicas_on([])


def test_nginx_accepts_the_rendered_configuration(tmp_path):
    if rp.nginx_path() is None:
        _required("no nginx (Debian: apt-get install nginx)")
    config = rp.write_config(tmp_path, rp.replicas_on([free_port(), free_port()]), f"127.0.0.1:{free_port()}")
    checked = subprocess.run([rp.nginx_path(), "-p", f"{tmp_path}/", "-c", str(config), "-e", "stderr", "-t"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


# ---------------------------------------------------------------------------------------------------------------
# Two replicas, four visitors.


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    if rp.nginx_path() is None:
        _required("no nginx (Debian: apt-get install nginx)")
    if chromium_path() is None:
        _required("no Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")
    # No warm-up: each replica loads the model for its first visitor (two TensorFlow starts instead of four; the
    # cold start is tests/test_browser.py's), which keeps the test within a few minutes on a busy 2-core machine.
    env = {**os.environ, "HEADLIGHT_WARM_UP": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
           "HF_HUB_OFFLINE": "1"}
    ports = [free_port(), free_port()]
    with rp.serve(ports, free_port(), env=env, run=tmp_path_factory.mktemp("replicas")) as served:
        yield served


def _visitor_url(base: str, words: tuple[str, str], **view: int) -> str:
    return f"{base}/?{urlencode({'text': f'The {words[0]} and the {words[1]} were there.', **view})}"


def _wait_chart(page, words: tuple[str, str], title: str) -> list[str]:
    """Wait until the heatmap's title starts with ``title`` and its tokens hold ``words``; return its tokens."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([chart, title, words]) => { const t = document.querySelector(chart + ' .gtitle');"
            " const ticks = [...document.querySelectorAll(chart + ' .xtick text')].map(e => e.textContent);"
            " return t && t.textContent.startsWith(title) && words.every(w => ticks.includes(w)); }",
            arg=[CHART, title, list(words)], polling=200)  # by time: a page behind others may get no frames
    except PlaywrightTimeout:
        shown = page.locator(f"{CHART} .gtitle").all_text_contents(), page.locator(f"{CHART} .xtick text")
        raise AssertionError(f"no chart {title!r} with {words} at {page.url}: titles {shown[0]}, tokens "
                             f"{shown[1].all_text_contents()}, page text {page.inner_text('body')[:600]!r}") from None
    return page.locator(f"{CHART} .xtick text").all_text_contents()


def _others(index: int) -> set[str]:
    return {word for other, pair in enumerate(WORDS) if other != index for word in pair}


def _press(page, slider: str, times: int = 1) -> None:
    control = page.get_by_role("slider", name=slider)
    control.focus()
    for _ in range(times):
        control.press("ArrowRight")


def _access_lines(deployment) -> list[tuple[float, str, int, str, str]]:
    """The access log: (start time, replica that answered, status, request, browser) per request (a WebSocket's
    line is written when it closes: its start is when it opened)."""
    pattern = re.compile(r'^(\S+) (\S*) (\d+) (\S+) "([^"]*)" "([^"]*)"$')
    lines = deployment.access_log.read_text().splitlines()
    return [(float(m[1]) - float(m[4]), m[2], int(m[3]), m[5], m[6]) for m in map(pattern.match, lines) if m]


@pytest.mark.browser
@pytest.mark.slow
def test_sessions_stick_to_their_replica_and_survive_the_loss_of_one(deployment):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        agent = browser.new_page().evaluate("navigator.userAgent")  # Chromium's own, the visitor's number added
        contexts = [browser.new_context(viewport={"width": 1300, "height": 1000}, user_agent=VISITOR.format(agent, i))
                    for i in range(len(WORDS))]
        pages, served = [], []
        for index, context in enumerate(contexts):  # one after another: each new visitor goes to the least busy
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            served.append(page.goto(_visitor_url(deployment.url, WORDS[index])).headers[rp.HEADER.lower()])
            pages.append(page)
            _wait_chart(page, WORDS[index], "Layer 0, head 0")
        assert set(served) == {"r1", "r2"}, served
        for index, page in enumerate(pages):  # a change through the session's WebSocket, on its replica
            _press(page, "Layer")
            _wait_chart(page, WORDS[index], "Layer 1, head 0")
            _press(page, "Head", times=3)
            tokens = _wait_chart(page, WORDS[index], "Layer 1, head 3")
            assert not _others(index) & set(tokens), tokens
            page.wait_for_function("() => /layer=1/.test(location.search) && /head=3/.test(location.search)",
                                   polling=200)

        killed = time.time()
        deployment.processes["r1"].send_signal(signal.SIGKILL)
        deployment.processes["r1"].wait(timeout=30)
        for index, page in enumerate(pages):
            if served[index] == "r1":  # its visitors reload their URL: same text, layer and head, on r2
                assert page.reload().headers[rp.HEADER.lower()] == "r2"
            else:  # the others carry on where they are
                _press(page, "Head")
            tokens = _wait_chart(page, WORDS[index], "Layer 1, head 3" if served[index] == "r1" else "Layer 1, head 4")
            assert not _others(index) & set(tokens), tokens
            assert page.get_by_test_id("stException").count() == 0
        for context in contexts:
            context.close()  # closes the WebSockets: nginx logs each when it ends
        browser.close()

    time.sleep(1.0)
    lines = _access_lines(deployment)
    for index, replica in enumerate(served):
        visitor = [line for line in lines if line[4] == VISITOR.format(agent, index)]
        before = {line[1] for line in visitor if line[0] < killed}
        after = {line[1] for line in visitor if line[0] > killed}
        streams = [line for line in visitor if "/_stcore/stream" in line[3]]
        assert before == {replica}, (index, before)  # every request, pages and WebSocket, on one replica
        assert after == {"r2"} if replica == "r1" else after <= {"r2"}, (index, after)  # r2's changed by WebSocket
        assert streams and all(line[2] == 101 for line in streams), streams
    problems = [line for line in (deployment.run / "error.log").read_text().splitlines()
                if re.search(r"\[(crit|alert|emerg)\]", line)]
    assert not problems, problems[:3]  # e.g. a temporary file nginx's workers could not write: a truncated script
