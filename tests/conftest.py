"""Shared fixtures: the real MiniLM (loaded once per session) and tiny configs for fast checks."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the network
os.environ.setdefault("HEADLIGHT_EXAMPLES_CACHE", "0")  # no examples kept on disk unless a test gives its own folder

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def minilm():
    from encoder.sources import load_source

    return load_source("minilm")


@pytest.fixture(scope="session")
def image_browser():
    """Chromium for PNG/SVG/PDF export: skipped where none exists, required in CI (CI=true)."""
    from viz.render import ExportError, find_browser

    try:
        return find_browser()
    except ExportError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"image export needs Chrome or Chromium: {error}")


@pytest.fixture(scope="session")
def reference():
    with np.load(FIXTURES / "minilm_reference.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def trace(minilm, request):
    """The real MiniLM trace of the test module's ``TEXT``."""
    from encoder.trace import trace_text

    return trace_text(minilm, request.module.TEXT)


@pytest.fixture(scope="module")
def saved(trace, tmp_path_factory):
    """``trace`` saved as NPZ."""
    return trace.save(tmp_path_factory.mktemp("trace") / "trace.npz")
