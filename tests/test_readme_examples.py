"""The Python examples of README.md and docs/python-api.md run as written.

Every ```python block of a page runs, in page order, in one namespace per page, in a fresh interpreter (the way a
reader pastes them into one session). The interpreter starts in a scratch folder that sees the repository's
``tests/`` (a symlink), so a relative path such as ``tests/fixtures/families/gpt2`` reads the shipped fixture and
every file an example writes lands in the scratch folder. Each block is compiled under the page's own file name
with its own line numbers, so a failure names the page and the line of the statement that failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs/python-api.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIMEOUT = 600  # seconds for one page: a fresh interpreter imports TensorFlow and loads the models it names

# Runs in the fresh interpreter: argv[1] is the repository, then (page, first line, source) triples as JSON.
RUNNER = """
import json, sys, traceback
root, blocks = sys.argv[1], json.loads(sys.stdin.read())
sys.path.insert(0, root)
namespace = {"__name__": "__main__"}
for page, line, source in blocks:
    try:
        exec(compile("\\n" * (line - 1) + source, page, "exec"), namespace)
    except BaseException:
        print(f"the example at {page}:{line} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def python_blocks(page: str) -> list[tuple[str, int, str]]:
    """(page, line of the block's first code line, source) for every ```python block of ``page``, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [(page, text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


@pytest.mark.parametrize("page", PAGES)
def test_the_block_finder_reports_the_first_code_line(page):
    text = (ROOT / page).read_text(encoding="utf-8").splitlines()
    for _, line, source in python_blocks(page):
        assert text[line - 2].startswith("```python"), (page, line)
        assert text[line - 1] == source.splitlines()[0], (page, line)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_python_example_of_the_page_runs(page, tmp_path):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no ```python examples"
    code = [line.split("#")[0] for _, _, source in blocks for line in source.splitlines()]
    if any("figure_to_bytes(" in line for line in code):  # an image export runs: it needs a browser
        from encoder.errors import ExportError
        from viz.render import find_browser

        try:
            find_browser()
        except ExportError as error:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"{page}'s image export needs Chrome or Chromium: {error}")
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1"}
    before = sorted(ROOT.iterdir())
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(ROOT)], input=json.dumps(blocks), capture_output=True, text=True,
        cwd=tmp_path, env=environment, timeout=TIMEOUT,
    )
    report = result.stderr[max(result.stderr.find("the example at"), 0):]  # from our line on, past TensorFlow's logs
    assert result.returncode == 0, report[-4000:]
    assert sorted(ROOT.iterdir()) == before, "an example wrote into the repository instead of its working folder"
