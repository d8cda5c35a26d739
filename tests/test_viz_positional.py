"""Positional-encoding figures for a learned table (MiniLM) and the sinusoidal closed form."""

import numpy as np
import pytest

from encoder.positional import sinusoidal_encoding
from encoder.trace import trace_text
from tests.support.traces import synthetic_trace
from viz.positional import (
    SIMILARITY_MAX_POSITIONS,
    build_position_similarity,
    build_positional_dimensions,
    build_positional_heatmap,
    table_kind,
    used_positions,
)


@pytest.fixture(scope="module")
def trace(minilm):
    return trace_text(minilm, "The cat sat on the mat.")


@pytest.fixture(scope="module")
def sinusoidal():
    return synthetic_trace(["[CLS]", "a", "b", "c", "[SEP]"], table=sinusoidal_encoding(64, 16))


def test_heatmap_is_the_table_with_the_used_rows_outlined(trace):
    fig = build_positional_heatmap(trace)
    np.testing.assert_array_equal(fig.data[0].z, trace.positional_table)
    assert fig.data[0].zmid == 0
    count = trace.num_tokens
    (shape,) = fig.layout.shapes
    assert (shape.y0, shape.y1) == (-0.5, count - 0.5)
    assert "learned table, 512 positions × 384 dimensions" in fig.layout.title.text
    assert f"this text uses positions 0-{count - 1} ({count} tokens)" in fig.layout.title.subtitle.text


def test_kind_and_used_rows_for_the_sinusoidal_table(sinusoidal, trace):
    assert table_kind(sinusoidal) == "sinusoidal"
    assert table_kind(trace) == "learned"
    np.testing.assert_array_equal(used_positions(sinusoidal), np.arange(5))
    shifted = sinusoidal.replace(positional=sinusoidal.positional_table[[3, 4, 5, 6, 9]])
    np.testing.assert_array_equal(used_positions(shifted), [3, 4, 5, 6, 9])
    fig = build_positional_heatmap(shifted, max_positions=32)
    assert fig.data[0].z.shape == (32, 16)
    assert [(s.y0, s.y1) for s in fig.layout.shapes] == [(2.5, 6.5), (8.5, 9.5)]
    assert "sinusoidal table" in fig.layout.title.text


def test_similarity_is_cosine_between_table_rows(sinusoidal):
    fig = build_position_similarity(sinusoidal, max_positions=40)
    table = sinusoidal.positional_table[:40].astype(np.float64)
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    np.testing.assert_allclose(fig.data[0].z, unit @ unit.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(fig.data[0].z), 1.0, atol=1e-6)
    assert (fig.layout.shapes[0].x0, fig.layout.shapes[0].x1) == (-0.5, 4.5)


def test_similarity_shows_at_most_the_first_512_positions_by_default_and_says_so(sinusoidal):
    long = synthetic_trace(["[CLS]", "a", "[SEP]"], table=sinusoidal_encoding(4096, 8))
    fig = build_position_similarity(long)
    assert fig.data[0].z.shape == (SIMILARITY_MAX_POSITIONS, SIMILARITY_MAX_POSITIONS) == (512, 512)
    assert "the first 512 of 4096 positions" in fig.layout.title.subtitle.text
    assert build_position_similarity(long, max_positions=600).data[0].z.shape == (600, 600)  # asked for: allowed
    whole = build_position_similarity(sinusoidal)
    assert whole.data[0].z.shape == (64, 64) and "first" not in whole.layout.title.subtitle.text


def test_dimensions_are_table_columns(trace):
    fig = build_positional_dimensions(trace, dims=[0, 7, 383])
    assert [t.name for t in fig.data] == ["dimension 0", "dimension 7", "dimension 383"]
    np.testing.assert_array_equal(fig.data[1].y, trace.positional_table[:, 7])
    assert fig.layout.shapes[0].x1 == trace.num_tokens - 0.5
    default = build_positional_dimensions(trace)
    assert [t.name for t in default.data] == ["dimension 0", "dimension 1", "dimension 96", "dimension 192"]


def test_positional_validators(trace):
    with pytest.raises(ValueError, match=r"dimension 384 is out of range: the table has 384 dimensions \(0-383\)"):
        build_positional_dimensions(trace, dims=[384])
    with pytest.raises(ValueError, match="dims is empty"):
        build_positional_dimensions(trace, dims=[])
    with pytest.raises(ValueError, match=r"max_positions 600 is out of range: the table has 512 positions"):
        build_positional_heatmap(trace, max_positions=600)
