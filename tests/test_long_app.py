"""The app at length (issue 22): a long trace's head images are computed ahead in the background (nearest the shown
head first, bounded, cancelled when the session's trace changes) and equal the images a view computes itself; a
head not computed yet still draws; four sessions at 8,192 tokens stay within HEADLIGHT_CACHE_MB; a 200-page paste is
cut and stays responsive in Chromium."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest

from bench.long import _resident_bytes
from encoder.trace import trace_text
from tests.test_long_views import long_model, words  # noqa: F401 - the module's long decoder fixture
from viz.long_inputs import (
    HEAD_BLOCK_HOWS,
    HEAD_BLOCKS,
    IMAGE_CELLS,
    HeadPrecompute,
    _block_key,
    _Cancelled,
    ahead_order,
    computed_hows,
    head_block,
    image_limit,
)
from viz.registry import build_view

WAIT_SECONDS = 300.0


@pytest.fixture(scope="module")
def trace_2048(long_model):  # noqa: F811
    return trace_text(long_model, words(2100), max_tokens=2048, lazy=True)


@pytest.fixture
def no_images():
    """``HEAD_BLOCKS`` empty before and after the test."""
    HEAD_BLOCKS.resize(0)
    HEAD_BLOCKS.resize(image_limit())
    yield
    HEAD_BLOCKS.resize(0)
    HEAD_BLOCKS.resize(image_limit())


def z_of(figure) -> np.ndarray:
    return np.asarray(figure.data[0].z, np.float64)


def wait_done(job: HeadPrecompute) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while job.pending():
        assert time.monotonic() < deadline, f"heads still pending: {job.pending()}"
        time.sleep(0.1)


@pytest.mark.parametrize("how", HEAD_BLOCK_HOWS)
def test_a_kept_head_image_is_the_image_the_view_computes_from_the_rows(trace_2048, no_images, how):
    """The whole-text heatmap of one head comes from the kept image (computed once, then kept); it equals the one
    read row by row (the same heatmap asked through a whole-text zoom window, which never uses the kept images)."""
    kept = build_view(trace_2048, "heatmap", layer=1, head=1, reduce=how)
    assert _block_key(trace_2048, 1, 1, how) in HEAD_BLOCKS
    read = build_view(trace_2048, "heatmap", layer=1, head=1, reduce=how, rows=(0, 2048))
    np.testing.assert_array_equal(z_of(kept), z_of(read))  # NaN where nothing is seen, in both
    assert z_of(kept).shape == (IMAGE_CELLS, IMAGE_CELLS)
    side = 2048 // IMAGE_CELLS
    assert kept.layout.title.subtitle.text.endswith(f"each cell: {how} of {side}×{side} tokens")


def test_heads_computed_ahead_are_what_each_view_then_draws(trace_2048, no_images):
    """Computed ahead around layer 1, head 1, every head of the 2 x 2 trace gets both images; a view then reads
    them (the very arrays kept), and they equal the heatmaps read row by row."""
    job = HeadPrecompute(trace_2048)
    job.focus(1, 1)
    wait_done(job)
    for layer in range(2):
        for head in range(2):
            for how in HEAD_BLOCK_HOWS:
                kept = HEAD_BLOCKS.get(_block_key(trace_2048, layer, head, how), lambda: pytest.fail("not kept"))
                assert head_block(trace_2048, layer, head, how)[0] is kept[0]
                read = build_view(trace_2048, "heatmap", layer=layer, head=head, reduce=how, rows=(0, 2048))
                np.testing.assert_array_equal(kept[0], z_of(read).astype(np.float32))
    job.cancel()
    job.join(30)


def test_computing_ahead_stops_at_its_share_of_the_budget(trace_2048, no_images, monkeypatch):
    """With HEADLIGHT_CACHE_MB = 16 the head images may hold 2 MB and one trace's computed ahead half of it: the 2
    heads nearest the shown one (both images each, 0.5 MB per head at 256 cells a side)."""
    monkeypatch.setenv("HEADLIGHT_CACHE_MB", "16")
    per_head = len(HEAD_BLOCK_HOWS) * 4 * IMAGE_CELLS**2
    assert image_limit() // 2 // per_head == 2
    job = HeadPrecompute(trace_2048)
    job.focus(0, 1)
    wait_done(job)
    kept = {key[1:3] for key in HEAD_BLOCKS.kept_keys() if key[0] == trace_2048.attention.store_id}
    assert kept == {(0, 1), (1, 1)}  # the shown head, then the next layer's (forward first)
    assert HEAD_BLOCKS.kept_bytes <= image_limit()
    job.cancel()


def test_computing_ahead_stops_at_its_count_of_heads(trace_2048, no_images, monkeypatch):
    """However large the budget, at most ``AHEAD_HEADS`` heads are computed ahead per trace (here 3 of the 4)."""
    import viz.long_inputs

    monkeypatch.setattr(viz.long_inputs, "AHEAD_HEADS", 3)
    job = HeadPrecompute(trace_2048)
    job.focus(0, 1)
    wait_done(job)
    kept = {key[1:3] for key in HEAD_BLOCKS.kept_keys() if key[0] == trace_2048.attention.store_id}
    assert kept == {(0, 1), (1, 1), (0, 0)}  # the shown head, the next layer's, then the previous head
    job.cancel()


def test_a_trace_with_overview_images_computes_ahead_only_the_other_reduction(long_model, no_images):  # noqa: F811
    """Above ``OVERVIEW_MIN_TOKENS`` the block max of every head is the trace's own (``head_block`` hands out its
    overview image, nothing is kept in ``HEAD_BLOCKS``); computing ahead makes only the block means."""
    trace = trace_text(long_model, words(2400), max_tokens=2304, lazy=True)
    assert computed_hows(trace) == ("mean",)
    image = head_block(trace, 1, 0, "max")[0]
    assert np.shares_memory(image, trace.attention.overview) and not HEAD_BLOCKS.kept_keys()
    job = HeadPrecompute(trace)
    job.focus(1, 1)
    wait_done(job)
    kept = {key[1:] for key in HEAD_BLOCKS.kept_keys() if key[0] == trace.attention.store_id}
    assert kept == {(layer, head, IMAGE_CELLS, "mean") for layer in range(2) for head in range(2)}
    job.cancel()
    job.join(30)


def test_the_nearest_heads_come_first_forward_steps_before_backward():
    assert ahead_order(3, 4, 1, 1, 5) == [(1, 1), (1, 2), (2, 1), (1, 0), (0, 1)]
    assert len(ahead_order(3, 4, 0, 0, 100)) == 12


def test_a_cancelled_job_stops_and_a_view_waiting_for_its_head_computes_it(trace_2048, no_images):
    """Cancelled, the job's thread ends and never restarts; a view that waited for the head a cancelled step was
    computing computes it itself, correctly."""
    job = HeadPrecompute(trace_2048)
    job.cancel()
    job.focus(0, 0)
    assert job._thread is None  # cancelled first: nothing started
    started, release = threading.Event(), threading.Event()
    key = _block_key(trace_2048, 0, 0, "max")

    def cancelled_step():
        started.set()
        release.wait(10)
        raise _Cancelled

    def step():
        with contextlib.suppress(_Cancelled):
            HEAD_BLOCKS.get(key, cancelled_step)

    worker = threading.Thread(target=step)
    worker.start()
    started.wait(10)
    threading.Timer(0.2, release.set).start()
    image = head_block(trace_2048, 0, 0, "max")[0]  # waits for the step, which is cancelled: computes it here
    worker.join(10)
    expected = build_view(trace_2048, "heatmap", layer=0, head=0, rows=(0, 2048))
    np.testing.assert_array_equal(image, z_of(expected).astype(np.float32))


def test_the_app_computes_ahead_for_a_long_text_and_cancels_when_the_text_changes(tmp_path, monkeypatch, no_images):
    """A 2,048-token text (3 layers of 8 heads): the session's job computes its heads' images ahead (a head change
    then reads a kept image); a new text cancels that job and starts one for the new trace."""
    from tests.support.models import write_tiny_bert_folder
    from tests.test_app import _app, _figures, _no_errors
    from ui.views import AHEAD

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "long", max_position_embeddings=2048, num_hidden_layers=3,
                                    num_attention_heads=8, hidden_size=16)  # 400 MB of attention: kept lazily
    at = _app(model="folder or hub id…", source=str(folder))
    at.text_area(key="text").set_value("the cat sat on the mat . " * 400).run()
    _no_errors(at)
    first = at.session_state[AHEAD]
    wait_done(first)
    kept = {key[1:3] for key in HEAD_BLOCKS.kept_keys() if key[0] == first.store_id}
    assert kept == {(layer, head) for layer in range(3) for head in range(8)}
    at.slider(key="head").set_value(1).run()
    _no_errors(at)
    assert _figures(at)[0]["layout"]["title"]["text"].startswith("Layer 0, head 1")
    at.text_area(key="text").set_value("a dog sat on the mat . " * 400).run()
    _no_errors(at)
    second = at.session_state[AHEAD]
    assert second is not first and second.store_id != first.store_id and first._cancelled.is_set()
    second.cancel()


def test_four_sessions_at_8192_tokens_stay_within_the_byte_budget(tmp_path, monkeypatch, no_images):
    """Four app sessions, each with its own 8,192-token text (a 2 x 2 BERT of 8,192 positions), each showing block
    means (which the trace does not carry) and moving Layer and Head while the heads' images are computed ahead for
    all four: with HEADLIGHT_CACHE_MB = 160 the results (traces with their overview images, figures), the attention
    pieces and the head images each stay within their share, together within the 160 MB, and every session still
    shows its own text's heatmap."""
    from encoder.attention_store import PIECES, piece_limit
    from encoder.settings import settings
    from tests.support.models import write_tiny_bert_folder
    from tests.test_app import _app, _figures, _no_errors
    from ui.cache import RESULTS
    from ui.inputs import trace_budget
    from ui.views import AHEAD

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    monkeypatch.setenv("HEADLIGHT_CACHE_MB", "160")
    saved = RESULTS.max_bytes
    RESULTS.resize(trace_budget())
    PIECES.clear()
    jobs, resident = [], _resident_bytes()
    try:
        folder = write_tiny_bert_folder(tmp_path / "long", max_position_embeddings=8192, num_hidden_layers=2,
                                        num_attention_heads=2, hidden_size=16)
        vocab = ["the", "cat", "sat", "on", "mat", "a", "dog"]
        sessions = []
        for index in range(4):
            text = " ".join(vocab[(i * (index + 1)) % len(vocab)] for i in range(8300))
            at = _app(model="folder or hub id…", source=str(folder), reduce="mean")
            at.text_area(key="text").set_value(text).run()
            _no_errors(at)
            side = 8192 // IMAGE_CELLS
            assert f"each cell: mean of {side}×{side} tokens" in _figures(at)[0]["layout"]["title"]["subtitle"]["text"]
            sessions.append(at)
            jobs.append(at.session_state[AHEAD])
        for at in sessions:
            at.slider(key="layer").set_value(1).run()
            at.slider(key="head").set_value(1).run()
            _no_errors(at)
            assert _figures(at)[0]["layout"]["title"]["text"].startswith("Layer 1, head 1")
        for job in jobs:
            wait_done(job)
        budget = settings().cache_bytes
        assert RESULTS.kept_bytes <= RESULTS.max_bytes == trace_budget()
        assert PIECES.bytes <= piece_limit() and HEAD_BLOCKS.kept_bytes <= image_limit()
        assert RESULTS.kept_bytes + PIECES.bytes + HEAD_BLOCKS.kept_bytes <= budget
        assert PIECES.bytes > piece_limit() // 2  # the pieces filled their share (each head is 256 MB: chunks)
        mb = 2**20
        print(f"kept: results {RESULTS.kept_bytes / mb:.1f} of {RESULTS.max_bytes / mb:.0f} MB, pieces "
              f"{PIECES.bytes / mb:.1f} of {piece_limit() / mb:.0f} MB, images {HEAD_BLOCKS.kept_bytes / mb:.1f} of "
              f"{image_limit() / mb:.0f} MB; resident grew {(_resident_bytes() - resident) / mb:.0f} MB")
        for job in jobs:
            job.cancel()
    finally:
        for job in jobs:
            job.cancel()
        RESULTS.resize(saved)
        PIECES.clear()


def test_the_app_computes_nothing_ahead_when_the_trace_carries_the_shown_images(tmp_path, monkeypatch, no_images):
    """A long trace with overview images (here every lazy one: ``OVERVIEW_MIN_TOKENS`` 0) shows the block max by
    default: the session starts no job, and a head change draws that head's overview image."""
    import encoder.trace
    from tests.support.models import write_tiny_bert_folder
    from tests.test_app import _app, _figures, _no_errors
    from ui.views import AHEAD

    monkeypatch.setattr(encoder.trace, "OVERVIEW_MIN_TOKENS", 0)
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "long", max_position_embeddings=2048, num_hidden_layers=3,
                                    num_attention_heads=8, hidden_size=16)
    at = _app(model="folder or hub id…", source=str(folder))
    at.text_area(key="text").set_value("a bird sang in the tree . " * 400).run()
    _no_errors(at)
    at.slider(key="head").set_value(3).run()
    _no_errors(at)
    assert AHEAD not in at.session_state and not HEAD_BLOCKS.kept_keys()
    figure = _figures(at)[0]
    assert figure["layout"]["title"]["text"].startswith("Layer 0, head 3")
    assert "each cell: max of 8×8 tokens" in figure["layout"]["title"]["subtitle"]["text"]
