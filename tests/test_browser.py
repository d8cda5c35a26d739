"""The app in a real browser: Playwright driving Debian's Chromium against `streamlit run app.py` on 127.0.0.1.

Skipped (with the reason) where no Chromium exists; in CI (CI=true) a missing Chromium is a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser_support import CHART, chart_title, chromium_path, launch_chromium, streamlit_server
from tests.support.families import FAMILIES_DIR

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def app_url():
    if chromium_path() is None:
        reason = "no Chromium at /usr/bin/chromium (Debian: apt-get install chromium) - browser tests skipped"
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser tests: " + reason)
        pytest.skip(reason)
    with streamlit_server() as url:
        yield url


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    yield page
    context.close()


def _open(page, url):
    page.goto(url)
    page.wait_for_selector(CHART)


def _wait_title(page, pattern: str, index: int = 0):
    regex = re.compile(pattern)
    page.wait_for_function(
        "([selector, index, source]) => { const t = document.querySelectorAll(selector)[index];"
        " return t && new RegExp(source).test(t.textContent); }",
        arg=[f"{CHART} .gtitle", index, regex.pattern],
    )
    return chart_title(page, index)


def _press_slider(page, name: str, times: int = 1):
    slider = page.get_by_role("slider", name=name)
    slider.focus()
    for _ in range(times):
        slider.press("ArrowRight")


def test_page_loads_with_default_model_and_shows_the_heatmap_of_the_sentence(page, app_url):
    _open(page, app_url)
    assert _wait_title(page, r"^Layer 0, head 0").startswith("Layer 0, head 0")
    labels = page.locator(f"{CHART} .xtick text").all_text_contents()
    for token in ("[CLS]", "cat", "sat", "mat", "tired", "[SEP]"):
        assert token in labels
    sidebar = page.get_by_test_id("stSidebar")
    assert "all-MiniLM-L6-v2" in sidebar.inner_text()
    assert sidebar.get_by_role("combobox", name="Model").input_value() == "minilm"
    assert page.get_by_test_id("stException").count() == 0


def test_a_cold_page_shows_its_controls_and_a_loading_state_before_the_chart(browser, app_url):
    """A fresh server that warms nothing (``HEADLIGHT_WARM_UP=0``: the first visit loads the model, TensorFlow
    import included, a few seconds): the sidebar's controls and "Loading the model…" come first, the chart's code loads
    meanwhile, then the chart."""
    with streamlit_server(env={"HEADLIGHT_WARM_UP": "0"}) as cold_url:
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.set_default_timeout(120_000)
            page.goto(cold_url, wait_until="commit")
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_role("textbox", name="Text").wait_for()
            sidebar.get_by_role("combobox", name="Model").wait_for()
            page.get_by_text("Loading the model…").wait_for()
            assert page.locator(CHART).count() == 0
            # the chart's code (plotly.js) is fetched while the model loads, not after (ui.serving.prefetch)
            page.wait_for_function("() => document.body.innerText.includes('Loading the model')"
                                   " && performance.getEntriesByType('resource').some(e => e.name.includes("
                                   "'/static/js/PlotlyChart.'))", polling=50)
            page.wait_for_selector(CHART)
            assert _wait_title(page, r"^Layer 0, head 0").startswith("Layer 0, head 0")
            assert page.get_by_text("Loading the model…").count() == 0
            assert page.get_by_test_id("stException").count() == 0
        finally:
            page.close()


def test_layer_slider_and_head_control_change_the_chart(page, app_url):
    _open(page, app_url)
    _press_slider(page, "Layer")
    assert _wait_title(page, r"^Layer 1, head 0").startswith("Layer 1")
    _press_slider(page, "Head", times=3)
    assert _wait_title(page, r"^Layer 1, head 3").startswith("Layer 1, head 3")
    page.get_by_role("radiogroup", name="Heads").get_by_role("radio", name="mean", exact=True).click()
    assert "mean of heads 0-11" in _wait_title(page, r"mean of heads")
    # The encoder ran once for this text: changing views never re-runs it (the sidebar counts runs).
    page.reload()
    page.wait_for_selector(CHART)
    assert "encoder runs: 1" in page.get_by_test_id("stSidebar").inner_text()


def test_png_download_is_a_real_png(page, app_url):
    _open(page, app_url)
    png = page.get_by_role("button", name="PNG", exact=True)  # ours, not Plotly's "Download plot as a png"
    assert png.count() == 0  # drawn only in an open Download menu
    page.get_by_test_id("stPopover").filter(has_text="Download").first.get_by_role("button").first.click()
    with page.expect_download() as download:
        png.first.click()
    data = Path(download.value.path()).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert download.value.suggested_filename.endswith(".png")


def test_a_copied_url_reproduces_the_view(page, browser, app_url):
    _open(page, app_url)
    _press_slider(page, "Layer", times=2)
    _wait_title(page, r"^Layer 2, head 0")
    _press_slider(page, "Head", times=5)
    _wait_title(page, r"^Layer 2, head 5")
    page.get_by_role("tab", name="Head grid").click()
    page.wait_for_function("() => location.search.includes('view=')")
    copied = page.url
    assert "layer=2" in copied and "head=5" in copied
    other = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        other.goto(copied)
        other.wait_for_selector(CHART)
        assert other.get_by_role("tab", name="Head grid").get_attribute("aria-selected") == "true"
        assert "Layer 2" in _wait_title(other, r"Layer 2")
        other.get_by_role("tab", name="Heatmap").click()
        assert _wait_title(other, r"^Layer 2, head 5").startswith("Layer 2, head 5")
    finally:
        other.close()


def test_a_crafted_link_makes_no_foreign_request_and_shows_the_default_chart(page, app_url):
    """A link whose source (and text) are markdown images and HTML pointing at another host: the browser asks
    127.0.0.1 for everything, renders no link or image, and the default model's chart is shown."""
    from urllib.parse import urlencode, urlsplit

    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    crafted = {"model": "folder or hub id…", "source": "![x](http://example.com/a.png)",
               "text": "The cat ![y](http://example.com/b.png) <img src=http://example.com/c.png> sat."}
    _open(page, f"{app_url}/?{urlencode(crafted)}")
    assert _wait_title(page, r"^Layer 0, head 0").startswith("Layer 0, head 0")
    page.wait_for_timeout(1000)  # anything a rendered image would fetch, fetched by now
    hosts = {urlsplit(url).hostname for url in requests if urlsplit(url).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, hosts
    assert page.locator('img[src*="example.com"], a[href*="example.com"]').count() == 0
    assert "all-MiniLM-L6-v2" in page.get_by_test_id("stSidebar").inner_text()
    assert page.get_by_test_id("stException").count() == 0


def _click_point(page, index: int, chart: int = 0):
    """Click the ``index``-th point of a chart's invisible click layer (cells or thumbnails, in data order)."""
    point = page.locator(CHART).nth(chart).locator(".scatterlayer .trace path.point").nth(index)
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_clicking_a_heatmap_cell_selects_its_query_token(page, app_url):
    _open(page, app_url)
    count = len(page.locator(f"{CHART} .xtick text").all_text_contents())
    assert count == 13
    _click_point(page, 2 * count + 5)  # row "cat" (2), column "the" (5)
    query = page.get_by_role("combobox", name="Query token (or click a heatmap row)")
    page.wait_for_function("(el) => el.value === '2: cat'", arg=query.element_handle())
    page.get_by_role("tab", name="Token view").click()
    assert "attention from “cat” (2)" in _wait_title(page, r"cat")


def test_clicking_a_model_view_thumbnail_opens_that_head(page, app_url):
    _open(page, app_url)
    page.get_by_role("tab", name="Model view").click()
    _wait_title(page, r"All 6 layers")
    _click_point(page, 3 * 12 + 7)  # layer 3, head 7
    assert _wait_title(page, r"^Layer 3, head 7").startswith("Layer 3, head 7")
    assert page.get_by_role("tab", name="Heatmap").get_attribute("aria-selected") == "true"


def test_every_tab_renders_and_is_saved_as_a_screenshot(page, app_url):
    ARTIFACTS.mkdir(exist_ok=True)
    _open(page, app_url)
    from tests.support.traces import synthetic_trace
    from ui.views import tab_labels

    tabs = tab_labels(synthetic_trace(["[CLS]", "a", "[SEP]"]))  # every tab of a model without an LM head (MiniLM)
    assert "Attention distance" in tabs
    for tab in tabs:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_function(
            "(name) => { const t = [...document.querySelectorAll('[role=tab]')].find(e => e.innerText === name);"
            " return t && t.getAttribute('aria-selected') === 'true'; }", arg=tab)
        if tab == "Compare":  # with one pretrained model, Compare starts by asking for a second text
            page.get_by_text("Type a second text of 13 tokens").wait_for()
        else:
            page.wait_for_selector(f"[role=tabpanel]:not([hidden]) {CHART}")
        path = ARTIFACTS / f"tab-{tab.lower().replace(' ', '-')}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 20_000
    assert page.get_by_test_id("stException").count() == 0


def test_the_analysis_question_and_choice_live_in_the_url(page, app_url):
    """Pick a question, then an analysis: both go into the URL, and the copied link reopens that analysis; a link
    naming only the analysis opens its question."""
    _open(page, f"{app_url}/?view=Analysis")
    _wait_title(page, r"^Attention rollout")
    question = page.get_by_role("radiogroup", name="Question")
    question.get_by_role("radio", name="What do the heads do?").click()
    _wait_title(page, r"^Head report card")
    page.get_by_role("radiogroup", name="Analysis").get_by_role("radio", name="Head clusters").click()
    _wait_title(page, r"^Heads clustered")
    page.wait_for_function("() => location.search.includes('question=') && location.search.includes('analysis=')")
    link = page.url
    page.goto("about:blank")
    _open(page, link)
    assert _wait_title(page, r"^Heads clustered").startswith("Heads clustered")
    _open(page, f"{app_url}/?view=Analysis&analysis=Head+clusters")
    assert _wait_title(page, r"^Heads clustered").startswith("Heads clustered")
    chosen = page.get_by_role("radiogroup", name="Question").get_by_role("radio", name="What do the heads do?")
    assert chosen.get_attribute("aria-checked") == "true"
    assert page.get_by_test_id("stException").count() == 0


# --- scrubbing: the head slider inside the figure (viz.scrub, ui.scrub) ------------------------------------------


def _tick_centre(page, chart: str, index: int) -> tuple[float, float]:
    """Screen position of the ``index``-th step of the figure's head slider, on its rail."""
    tick = page.locator(f"{chart} .slider-tick-rect").nth(index).bounding_box()
    rail = page.locator(f"{chart} .slider-rail-rect").bounding_box()
    return tick["x"] + tick["width"] / 2, rail["y"] + rail["height"] / 2


def _z_corner(page, chart: str) -> list[float]:
    """The first cells of the drawn heatmap, as plotly.js holds them after the last redraw."""
    return page.evaluate("(sel) => Array.from(document.querySelector(sel)._fullData[0].z[0].slice(0, 4))", chart)


def _z(page, chart: str) -> list[list[float]]:
    """Every cell of the drawn heatmap, as plotly.js holds them after the last redraw."""
    return page.evaluate("(sel) => Array.from(document.querySelector(sel)._fullData[0].z, (row) => Array.from(row))",
                         chart)


def test_dragging_the_figure_slider_redraws_in_the_browser_and_release_syncs_controls_and_url(page, app_url):
    """While the in-figure slider is dragged the heatmap follows with no message to the server; on release the
    Layer and Head controls and the URL show the head the figure shows."""
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append("frame")))
    _open(page, app_url)
    _wait_title(page, r"^Layer 0, head 0")
    assert page.locator(f"{CHART} .slider-tick-rect").count() == 72  # 13 tokens: every layer's heads
    before = _z_corner(page, CHART)
    page.wait_for_timeout(500)  # the page's own start-up messages are out
    quiet = len(sent)
    page.mouse.move(*_tick_centre(page, CHART, 0))
    page.mouse.down()
    for index, title in ((3, r"^Layer 0, head 3"), (10, r"^Layer 0, head 10"), (15, r"^Layer 1, head 3")):
        page.mouse.move(*_tick_centre(page, CHART, index), steps=4)
        _wait_title(page, title)
    assert _z_corner(page, CHART) != before
    scrubbed = _z(page, CHART)
    page.wait_for_timeout(300)
    assert len(sent) == quiet, "dragging the slider must not talk to the server"
    assert page.get_by_role("slider", name="Head").input_value() == "0"  # not synced until released
    page.evaluate("(sel) => { document.querySelector(sel).__scrubbed = true; }", CHART)
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('layer=1') && location.search.includes('head=3')")
    page.wait_for_function("() => document.querySelector('input[aria-label=Head]').value === '3'")
    assert page.get_by_role("slider", name="Layer").input_value() == "1"
    assert _wait_title(page, r"^Layer 1, head 3").startswith("Layer 1, head 3")
    # The server's figure of that head (a new plot) shows exactly what scrubbing showed.
    page.wait_for_function("(sel) => { const p = document.querySelector(sel); return p && !p.__scrubbed && "
                           "p._fullData; }", arg=CHART)
    assert _z(page, CHART) == scrubbed
    assert "encoder runs: 1" in page.get_by_test_id("stSidebar").inner_text()
    assert page.get_by_test_id("stException").count() == 0
    # Clicking a cell still picks the query token after scrubbing.
    _click_point(page, 2 * 13 + 5)
    query = page.get_by_role("combobox", name="Query token (or click a heatmap row)")
    page.wait_for_function("(el) => el.value === '2: cat'", arg=query.element_handle())


def test_a_page_that_lost_the_slider_steps_asks_for_them_again(page, app_url):
    """The steps' contents reach a page once per session; a page without them (here: dropped) gets them again, and
    the slider then scrubs in the browser alone."""
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append("frame")))
    _open(page, app_url)
    _wait_title(page, r"^Layer 0, head 0")
    page.wait_for_function("() => window.__headlightScrub && window.__headlightScrub.steps.size === 1")
    page.evaluate("() => window.__headlightScrub.steps.clear()")
    _press_slider(page, "Layer")  # the same steps, which this session was sent already
    _wait_title(page, r"^Layer 1, head 0")
    page.wait_for_function("() => window.__headlightScrub.steps.size === 1")
    # the steps filled into the drawn plot (the page's component does it on the next frames) before the drag
    page.wait_for_function("sel => document.querySelector(sel)?.__headlightSteps", arg=CHART)
    page.wait_for_timeout(500)
    quiet = len(sent)
    page.mouse.move(*_tick_centre(page, CHART, 12))
    page.mouse.down()
    page.mouse.move(*_tick_centre(page, CHART, 2 * 12 + 5), steps=4)
    _wait_title(page, r"^Layer 2, head 5")
    assert len(sent) == quiet, "scrubbing must not talk to the server"
    page.mouse.up()
    page.wait_for_function("() => location.search.includes('layer=2') && location.search.includes('head=5')")
    assert page.get_by_test_id("stException").count() == 0


def test_token_view_and_head_lines_scrub_in_the_browser(page, app_url):
    _open(page, app_url)
    for tab, before, tick, after in (("Token view", "Layer 0, head 0: attention from", 14, "Layer 1, head 2"),
                                     ("Head lines", "Layer 1, head 2: who", 30, "Layer 2, head 6")):
        page.get_by_role("tab", name=tab).click()
        chart = f"[role=tabpanel]:not([hidden]) {CHART}"
        page.wait_for_selector(f"{chart} .slider-tick-rect")
        for title in (before, after):
            page.wait_for_function("([sel, title]) => document.querySelector(sel + ' .gtitle').textContent"
                                   ".startsWith(title)", arg=[chart, title])
            if title == before:
                page.mouse.click(*_tick_centre(page, chart, tick))
        layer, head = after.removeprefix("Layer ").split(", head ")
        page.wait_for_function("([l, h]) => location.search.includes(`layer=${l}`) && "
                               "location.search.includes(`head=${h}`)", arg=[layer, head])
    assert page.get_by_test_id("stException").count() == 0


def test_an_exported_html_page_scrubs_offline(page, tmp_path):
    """The downloaded HTML works from a file with no network: stepping its slider redraws the figure."""
    from tests.support.traces import synthetic_trace
    from viz.attention import build_attention_heatmap
    from viz.render import figure_to_html

    trace = synthetic_trace(["[CLS]", *(f"w{i}" for i in range(30)), "[SEP]"], layers=3, heads=4)
    path = tmp_path / "heatmap.html"
    path.write_text(figure_to_html(build_attention_heatmap(trace, layer=1, head=1)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    chart = ".js-plotly-plot"
    page.wait_for_selector(f"{chart} .slider-tick-rect")
    assert page.locator(f"{chart} .gtitle").text_content() == "Layer 1, head 1"
    page.mouse.click(*_tick_centre(page, chart, 2 * 4 + 3))
    page.wait_for_function("(sel) => document.querySelector(sel + ' .gtitle').textContent === 'Layer 2, head 3'",
                           arg=chart)
    drawn = page.evaluate("(sel) => Array.from(document.querySelector(sel)._fullData[0].z[5])", chart)
    assert drawn == trace.attention[2, 3, 5].tolist()  # float32 values, exactly
    assert all(url.startswith("file://") for url in requests), requests


# --- a decoder: continue the text -------------------------------------------------------------------------------


def _tick_count(page, chart: str = CHART) -> int:
    return len(page.locator(f"{chart} .xtick text").all_text_contents())


def test_a_decoder_continues_the_text_and_marks_the_generated_tokens(browser, app_url):
    """A server whose operator allows the fixture folders: the llama decoder opens on a prompt, "Continue the text"
    generates 8 tokens (one model run), the Next token view shows them in italics, and the step slider replays the
    generation without running the model again."""
    from urllib.parse import urlencode

    from ui.inputs import DEFAULT_PROMPT

    with streamlit_server(env={"HEADLIGHT_MODEL_ROOTS": str(FAMILIES_DIR), "HEADLIGHT_WARM_UP": "0"}) as url:
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.set_default_timeout(120_000)
            _open(page, f"{url}/?{urlencode({'model': 'folder or hub id…', 'source': str(FAMILIES_DIR / 'llama')})}")
            page.wait_for_function("(text) => document.querySelector('[data-testid=stSidebar] textarea').value "
                                   "=== text", arg=DEFAULT_PROMPT)
            page.wait_for_function("() => document.body.innerText.includes('Continue the text')")
            prompt = _tick_count(page)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("Continue the text").click()
            page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length === n",
                                   arg=[f"{CHART} .xtick text", prompt + 8])
            page.wait_for_function("() => location.search.includes('continue=true')")
            query = page.get_by_role("combobox", name="Query token (or click a heatmap row)")
            assert query.input_value().startswith(f"{prompt + 7}: ")  # the last generated token
            page.get_by_role("tab", name="Next token").click()
            chart = f"[role=tabpanel]:not([hidden]) {CHART}"
            page.wait_for_selector(chart)
            italic = page.evaluate("(sel) => [...document.querySelectorAll(sel + ' tspan')].filter("
                                   "(t) => (t.getAttribute('style') || '').includes('italic')).length", chart)
            assert italic >= 8, "the generated tokens are in italics"
            runs = sidebar.inner_text()
            page.get_by_role("tab", name="Heatmap").click()
            step = page.get_by_role("slider", name="Generation step")
            step.focus()
            step.press("Home")  # step 0: the prompt alone
            page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length === n",
                                   arg=[f"[role=tabpanel]:not([hidden]) {CHART} .xtick text", prompt])
            assert "encoder runs: 2" in runs and "encoder runs: 2" in sidebar.inner_text()  # the prompt, the generation
            assert page.get_by_test_id("stException").count() == 0
        finally:
            page.close()
