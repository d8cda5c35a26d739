"""The Corpus tab in a real browser (Playwright, Debian's Chromium, ``python -m ui.serving``) over a real MiniLM index:
a click on a head of the map selects it, a click on an example opens its sentence in every view. Skipped where no
Chromium exists; in CI (CI=true) a missing Chromium is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser_support import CHART, chromium_path, launch_chromium, streamlit_server
from tests.test_corpus_tab import CORPUS, build_corpus

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def corpus_url(tmp_path_factory):
    """The app with one allowed root holding an index of ``CORPUS`` through MiniLM."""
    if chromium_path() is None:
        reason = "no Chromium at /usr/bin/chromium (Debian: apt-get install chromium) - browser tests skipped"
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser tests: " + reason)
        pytest.skip(reason)
    root = build_corpus(tmp_path_factory.mktemp("corpora"))
    with streamlit_server(env={"HEADLIGHT_CORPUS_ROOTS": str(root)}) as url:
        yield url


@pytest.fixture
def page(corpus_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def _charts(page, count: int) -> None:
    page.wait_for_function("([selector, n]) => document.querySelectorAll(selector).length >= n",
                           arg=[f"[role=tabpanel]:not([hidden]) {CHART}", count])


def _title(page, index: int) -> str:
    return page.locator(f"[role=tabpanel]:not([hidden]) {CHART} .gtitle").nth(index).text_content() or ""


def _click(page, element) -> None:
    """Click the middle of ``element`` (a point of a chart), scrolled into view first."""
    element.scroll_into_view_if_needed()
    box = element.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_a_click_on_the_map_selects_a_head_and_a_click_on_an_example_opens_its_sentence(page, corpus_url):
    page.goto(f"{corpus_url}/?view=Corpus&corpus_statistic=previous")
    _charts(page, 4)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tab-corpus.png"))
    assert page.get_by_test_id("stException").count() == 0
    panel = page.locator(f"[role=tabpanel]:not([hidden]) {CHART}")
    _click(page, panel.nth(0).locator(".scatterlayer .trace path.point").nth(2 * 12 + 5))  # layer 2, head 5
    page.wait_for_function("(selector) => [...document.querySelectorAll(selector)].some("
                           "(t) => t.textContent.startsWith('Layer 2, head 5: its'))",
                           arg=f"[role=tabpanel]:not([hidden]) {CHART} .gtitle")
    _click(page, panel.nth(1).locator(".barlayer .point path").nth(1))  # the first example's second token
    page.wait_for_function("() => { const t = [...document.querySelectorAll('[role=tab]')].find("
                           "(e) => e.innerText === 'Heatmap');"
                           " return t && t.getAttribute('aria-selected') === 'true'; }")
    text = page.get_by_test_id("stSidebar").locator("textarea").first
    page.wait_for_function("([el, texts]) => texts.includes(el.value)", arg=[text.element_handle(), CORPUS])
    page.wait_for_function("(selector) => { const t = document.querySelector(selector);"
                           " return t && t.textContent.startsWith('Layer 2, head 5'); }", arg=f"{CHART} .gtitle")
    assert page.get_by_test_id("stException").count() == 0


def test_an_uploaded_file_is_built_into_an_index_the_tab_then_opens(tmp_path):
    """A visitor uploads three sentences: the build runs in the background (``ui.corpus_build``), the progress
    shows, and the tab opens the new index when it is written."""
    from playwright.sync_api import sync_playwright

    if chromium_path() is None:
        pytest.skip("no Chromium at /usr/bin/chromium")
    builds, upload = tmp_path / "builds", tmp_path / "my-sentences.txt"
    upload.write_text("The cat sat on the mat.\nWhere is the station?\nA fine film.\n", encoding="utf-8")
    with streamlit_server(env={"HEADLIGHT_CORPUS_BUILDS": str(builds)}) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(f"{url}/?view=Corpus")
        page.get_by_text("Build a small index from a text file").click()
        page.locator("input[type=file]").set_input_files(str(upload))
        page.get_by_role("button", name="Build the index").click()
        _charts(page, 3)
        assert _title(page, 0).endswith("3 sentences (22 tokens)")
        assert page.get_by_test_id("stException").count() == 0
        browser.close()
    (index,) = [folder for folder in builds.iterdir() if not folder.name.startswith(".")]
    assert index.name.startswith("my-sentences-") and (index / "manifest.json").is_file()
