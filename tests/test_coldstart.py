"""Cold start without the model: the default model's card and its traces of the built-in examples kept on disk
(``encoder.trace_cache``, ``ui.cache.keep_examples``), read back exactly, refused when corrupt or made for another
input, model or code (and computed again), and a first page drawn from them with no TensorFlow in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from encoder import trace_cache
from encoder.settings import Settings
from encoder.trace_cache import TraceCache, code_version, default_cache, default_checksum
from encoder.trace_io import load_npz
from ui import cache
from ui.inputs import DEFAULT_TEXT, EXAMPLES
from ui.serving import prefetch

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 512  # the default page's Max tokens for MiniLM under the default settings
PAIRED = next(text for text, pair in EXAMPLES.items() if pair)
TIMEOUT = 300


@pytest.fixture(scope="module")
def kept(minilm, tmp_path_factory) -> TraceCache:
    """The examples kept as ``make run`` keeps them (``python -m ui.serving --keep-examples``), in a folder of
    this module's own."""
    folder = tmp_path_factory.mktemp("examples")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADLIGHT_EXAMPLES_CACHE", str(folder))
        assert cache.keep_examples(minilm) == len(EXAMPLES)
        assert cache.keep_examples(minilm) == 0  # all there and valid: nothing written again
        return cache.examples()


@pytest.fixture
def scratch(kept, tmp_path) -> TraceCache:
    """A copy of ``kept`` to damage."""
    for path in kept.folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    return TraceCache(tmp_path, kept.source, kept.checksum, kept.code)


def test_kept_traces_and_card_read_back_exactly_as_the_model_makes_them(kept, minilm):
    assert kept.card() == minilm.card()
    for text, pair in EXAMPLES.items():
        stored, here = kept.trace(text, pair or None, MAX_TOKENS), cache.warm_trace(minilm, text, pair or None,
                                                                                     MAX_TOKENS)
        assert stored.tokens == here.tokens and stored.pair == (pair or None) and stored.model == "minilm"
        for name in ("token_ids", "attention", "hidden", "positional_table"):
            np.testing.assert_array_equal(getattr(stored, name), getattr(here, name))
        assert not stored.attention.flags.writeable
    # an NPZ trace file like any other: trace_io reads it (the key is one more archive member)
    assert load_npz(kept.trace_path(DEFAULT_TEXT, None, MAX_TOKENS)).text == DEFAULT_TEXT


def test_the_key_changes_with_the_input_the_weights_and_the_code(kept):
    paths = {kept.trace_path(DEFAULT_TEXT, None, MAX_TOKENS), kept.trace_path(DEFAULT_TEXT + " ", None, MAX_TOKENS),
             kept.trace_path(DEFAULT_TEXT, "A pair.", MAX_TOKENS), kept.trace_path(DEFAULT_TEXT, None, 256)}
    other_weights = TraceCache(kept.folder, kept.source, "0" * 64, kept.code)
    other_code = TraceCache(kept.folder, kept.source, kept.checksum, "1" * 64)
    paths |= {other_weights.trace_path(DEFAULT_TEXT, None, MAX_TOKENS),
              other_code.trace_path(DEFAULT_TEXT, None, MAX_TOKENS)}
    assert len(paths) == 6
    assert other_weights.card_path() != kept.card_path() != other_code.card_path()
    assert other_weights.trace(DEFAULT_TEXT, None, MAX_TOKENS) is None and other_weights.card() is None
    assert other_code.trace(DEFAULT_TEXT, None, MAX_TOKENS) is None and other_code.card() is None


def test_the_checksum_is_the_verified_weights_and_the_code_version_reads_the_sources(monkeypatch, tmp_path):
    assert default_checksum() is not None
    monkeypatch.setattr(trace_cache, "MINILM_SHA256", {**trace_cache.MINILM_SHA256, "model.safetensors": "0" * 64})
    assert default_checksum() is None and default_cache(tmp_path, "minilm") is None  # not these weights: no cache
    monkeypatch.undo()
    (tmp_path / "layer.py").write_text("SCALE = 1.0\n")
    monkeypatch.setattr(trace_cache, "ENCODER_DIR", tmp_path)
    before = code_version.__wrapped__()
    (tmp_path / "layer.py").write_text("SCALE = 2.0\n")
    assert code_version.__wrapped__() != before
    monkeypatch.undo()
    assert code_version() == code_version.__wrapped__()  # this checkout's, once per process


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_members_key(path: Path, key: dict) -> None:
    """Rewrite the archive at ``path`` with its key member replaced by ``key`` (a file made for another input)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[trace_cache.KEY_MEMBER] = json.dumps(key).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty", "another input's file", "another key",
                                    "oversized"])
def test_a_damaged_or_mismatched_trace_file_is_refused_then_written_again(scratch, minilm, monkeypatch, damage):
    path = scratch.trace_path(DEFAULT_TEXT, None, MAX_TOKENS)
    if damage == "flipped byte":
        _flip_a_byte(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "another input's file":
        path.write_bytes(scratch.trace_path(PAIRED, EXAMPLES[PAIRED], MAX_TOKENS).read_bytes())
    elif damage == "another key":
        _other_members_key(path, scratch.input_key(DEFAULT_TEXT, None, 256))
    else:
        monkeypatch.setattr(trace_cache, "MAX_FILE_BYTES", path.stat().st_size - 1)
    assert scratch.trace(DEFAULT_TEXT, None, MAX_TOKENS) is None
    monkeypatch.undo()
    monkeypatch.setenv("HEADLIGHT_EXAMPLES_CACHE", str(scratch.folder))
    assert cache.keep_examples(minilm) == (damage != "oversized")  # computed again, and only that one
    np.testing.assert_array_equal(scratch.trace(DEFAULT_TEXT, None, MAX_TOKENS).attention,
                                  cache.warm_trace(minilm, DEFAULT_TEXT, None, MAX_TOKENS).attention)


def test_a_key_member_that_lies_about_its_trace_is_refused(scratch):
    """The key says the default text, the trace inside is another text's: the trace's own text is checked too."""
    path = scratch.trace_path(DEFAULT_TEXT, None, MAX_TOKENS)
    path.write_bytes(scratch.trace_path(PAIRED, EXAMPLES[PAIRED], MAX_TOKENS).read_bytes())
    _other_members_key(path, scratch.input_key(DEFAULT_TEXT, None, MAX_TOKENS))
    assert scratch.trace(DEFAULT_TEXT, None, MAX_TOKENS) is None


@pytest.mark.parametrize("card", ["not json", {"key": "another"}, {"parameters": True}, {"config": {"heads": 3}},
                                  {"name": "tutorial"}])
def test_a_damaged_or_mismatched_card_is_refused(scratch, minilm, card):
    path = scratch.card_path()
    document = json.loads(path.read_text())
    if isinstance(card, str):
        path.write_text(card)
    elif "key" in card:
        path.write_text(json.dumps({**document, **card}))
    else:
        path.write_text(json.dumps({**document, "card": {**document["card"], **card}}))
    assert scratch.card() is None
    scratch.save_card(minilm.card())
    assert scratch.card() == minilm.card()


def test_a_cache_folder_that_cannot_be_written_costs_only_speed(minilm, tmp_path, monkeypatch):
    """A file where the folder should be (as a read-only or full disk, writing fails): nothing kept, no error."""
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("HEADLIGHT_EXAMPLES_CACHE", str(blocked))
    assert cache.keep_examples(minilm) == 0
    assert cache.examples().card() is None and cache.examples().trace(DEFAULT_TEXT, None, MAX_TOKENS) is None


def test_the_cache_folder_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("HEADLIGHT_EXAMPLES_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings.from_env().examples_cache == tmp_path / "headlight" / "examples"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert Settings.from_env().examples_cache == Path.home() / ".cache" / "headlight" / "examples"
    monkeypatch.setenv("HEADLIGHT_EXAMPLES_CACHE", "0")
    assert Settings.from_env().examples_cache is None and cache.examples() is None
    monkeypatch.setenv("HEADLIGHT_EXAMPLES_CACHE", str(tmp_path / "here"))
    assert Settings.from_env().examples_cache == tmp_path / "here"


FIRST_PAGE = """
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({app!r}, default_timeout=120).run()
shown = [at.exception, json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["ticktext"],
         " ".join(block.value for block in at.sidebar.markdown)]
at.selectbox(key="example").set_value({paired!r}).run()
shown += [at.exception, json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["ticktext"]]
print(json.dumps([str(shown[0]), shown[1], shown[2], str(shown[3]), shown[4],
                  "tensorflow" in sys.modules, "keras" in sys.modules, "pandas" in sys.modules]))
"""


def test_the_first_page_and_an_example_draw_from_disk_with_no_tensorflow_in_the_process(kept, minilm):
    """A fresh process (the warm-up off, so nothing else imports it): the default page shows the model's card and
    the default text's heatmap, and picking the paired example shows its tokens, without importing TensorFlow, nor
    pandas (with pyarrow, ~0.2 s of CPU before the first chart: Streamlit imports them to look for data frames in a
    component's data when it holds a list, ``ui.serving.prefetch``)."""
    code = FIRST_PAGE.format(app=str(ROOT / "app.py"), paired=PAIRED)
    env = {**os.environ, "HEADLIGHT_EXAMPLES_CACHE": str(kept.folder), "HEADLIGHT_WARM_UP": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    error, ticks, sidebar, pair_error, pair_ticks, tf, keras, pandas = json.loads(
        done.stdout.strip().splitlines()[-1])
    assert error == pair_error == "ElementList()"
    assert {"cat", "mat", "tired"} <= set(ticks) and {"station", "museum"} <= set(pair_ticks)
    assert f"{minilm.card().parameters:,}" in sidebar
    assert (tf, keras, pandas) == (False, False, False)


def test_without_the_examples_the_first_page_loads_the_model(tmp_path):
    """An empty cache folder: the same page, from the model (TensorFlow imported); the warm-up then keeps the
    examples for the next start."""
    code = FIRST_PAGE.format(app=str(ROOT / "app.py"), paired=PAIRED)
    env = {**os.environ, "HEADLIGHT_EXAMPLES_CACHE": str(tmp_path), "HEADLIGHT_WARM_UP": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    error, ticks, _, _, _, tf, _, _ = json.loads(done.stdout.strip().splitlines()[-1])
    assert error == "ElementList()" and {"cat", "mat"} <= set(ticks) and tf


def test_the_chart_code_to_prefetch_is_in_the_installed_streamlit():
    """Streamlit names its lazily loaded chunks with a content hash: an upgrade that renames or drops the chart's
    chunk fails here (the page still works, only the prefetch would be lost)."""
    files = prefetch.chunk_files()
    assert sorted(name.split(".")[0] for name in files) == sorted(prefetch.CHUNKS)
    assert all(name.endswith(".js") and name.count(".") == 2 for name in files)
