"""Many visitors at once: N browser sessions (N = 1, 4, 8) against one `streamlit run app.py`, each with its own
sentence, each moving the Layer control 10 times. Counts errors and results mixed between sessions (a chart
showing another session's sentence), and reports the median / p95 time from key press to the updated chart and the
server's memory. Async Playwright, so the sessions really overlap.

Where the time goes: the CPU seconds the server used per change (page loads included) and those the N headless
Chromium pages used (the harness: on a real deployment each visitor's browser runs on the visitor's machine, here
all of them share the server's 2 cores).

A last, diagnostic row repeats the largest N with the changes starting only once every session's page has loaded
(each page load costs Chromium ~2.7 s of CPU, as much as ~13 changes): it separates the cost of a change from that
of the other visitors' page loads it overlaps. It is not the budget's measure; the rows above are.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.parse
from pathlib import Path

from bench.common import browser_cpu, cpu_seconds
from tests.browser_support import CHART, CHROMIUM_ARGS, chromium_path, streamlit_server

WORDS = ("cat", "dog", "horse", "bird", "fish", "lion", "tiger", "bear")  # one per session, in its sentence
LEVELS = (1, 4, 8)
CHANGES = 10
LAYERS = 6  # MiniLM


def _server_memory(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of the server process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _session(browser, url: str, index: int, result: dict, loaded: asyncio.Barrier | None) -> None:
    word = WORDS[index % len(WORDS)]
    others = [w for w in WORDS if w != word]
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(120_000)
    text = f"The {word} sat on the mat because the {word} was tired."
    try:
        await page.goto(f"{url}/?{urllib.parse.urlencode({'text': text})}")
        await page.wait_for_selector(CHART)
        if loaded is not None:  # the diagnostic row: changes start once every session's page has loaded
            await loaded.wait()
        slider = page.get_by_role("slider", name="Layer")
        await slider.focus()
        layer = 0
        for step in range(CHANGES):
            key, layer = ("ArrowRight", layer + 1) if step < LAYERS - 1 else ("ArrowLeft", layer - 1)
            start = time.perf_counter()
            await slider.press(key)
            await page.wait_for_function(
                "([sel, title]) => { const t = document.querySelector(sel + ' .gtitle');"
                " return t && t.textContent.startsWith(title); }",
                arg=[CHART, f"Layer {layer}, head 0"], polling="raf")
            result["latencies"].append(time.perf_counter() - start)
            shown = await page.locator(CHART).first.text_content() or ""
            if word not in shown or any(f" {other} " in f" {shown} " for other in others):
                result["mixed"] += 1
        result["errors"] += await page.get_by_test_id("stException").count()
    except Exception as error:  # a timeout or a crashed page is an error of this session, counted, not raised
        result["errors"] += 1
        result.setdefault("messages", []).append(f"{type(error).__name__}: {str(error)[:120]}")
    finally:
        await context.close()


async def _level(url, sessions: int, after_loads: bool = False) -> dict:
    from playwright.async_api import async_playwright

    result = {"latencies": [], "errors": 0, "mixed": 0}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                                   args=CHROMIUM_ARGS)
        server, harness = cpu_seconds(url.pid), browser_cpu(url.pid)
        loaded = asyncio.Barrier(sessions) if after_loads else None
        await asyncio.gather(*(_session(browser, url, i, result, loaded) for i in range(sessions)))
        result["server_cpu"] = cpu_seconds(url.pid) - server
        result["browser_cpu"] = browser_cpu(url.pid) - harness
        await browser.close()
    return result


def main() -> list[dict]:
    if chromium_path() is None:
        return [{"sessions": "skipped: no Chromium at /usr/bin/chromium"}]
    rows = []
    with streamlit_server() as url:
        asyncio.run(_level(url, 1))  # warm the server: model loaded, graphs traced
        for sessions, after_loads in [*((n, False) for n in LEVELS), (LEVELS[-1], True)]:
            result = asyncio.run(_level(url, sessions, after_loads))
            latencies = sorted(result["latencies"])
            p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)] if latencies else float("nan")
            current, peak = _server_memory(url.pid)
            rows.append({
                "sessions": f"{sessions}, changes after every page loaded" if after_loads else sessions,
                "changes": len(latencies), "errors": result["errors"],
                "mixed results": result["mixed"],
                "median": f"{1000 * statistics.median(latencies):.0f} ms" if latencies else "-",
                "p95": f"{1000 * p95:.0f} ms", "server memory (peak)": f"{current:.0f} MB ({peak:.0f} MB)",
                "server CPU / change": f"{1000 * result['server_cpu'] / max(len(latencies), 1):.0f} ms",
                "Chromium CPU / change": f"{1000 * result['browser_cpu'] / max(len(latencies), 1):.0f} ms",
            })
    return rows


if __name__ == "__main__":
    from bench.common import print_table

    print_table("Concurrent sessions, MiniLM", main())
