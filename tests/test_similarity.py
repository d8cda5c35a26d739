"""Why are these two similar? (``analysis.similarity``): the cosine of two mean-pooled embeddings split into token
pairs, checked against the model's own cosine, through the registry and the CLI."""

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from analysis.inputs import TraceInputs
from analysis.similarity import NO_SECOND_TEXT, explain_similarity
from cli import main
from encoder.errors import AnalysisError
from encoder.sources import load_source
from viz.registry import ANALYSES
from viz.similarity import build_similarity_heatmap

A = "A man is playing a guitar."
B = "Someone plays an instrument."


@pytest.fixture(scope="module")
def split(minilm):
    return explain_similarity(minilm, A, B)


def test_cells_sum_to_the_models_own_cosine(split):
    assert split.contributions.shape == (len(split.tokens_a), len(split.tokens_b)) == (9, 7)
    assert abs(split.contributions.sum() - split.model_cosine) < 1e-6
    assert abs(split.cosine - split.model_cosine) < 1e-6
    assert 0.3 < split.model_cosine < 0.95  # related, not the same


def test_a_text_with_itself_has_cosine_1_and_a_symmetric_split(minilm):
    same = explain_similarity(minilm, A, A)
    assert same.model_cosine == pytest.approx(1.0, abs=1e-6)
    assert same.contributions.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(same.contributions, same.contributions.T, atol=1e-12)


def test_rows_and_figure(split):
    rows = split.rows()
    assert len(rows) == 9 * 7
    assert rows[1] == {"a_index": 0, "a_token": "[CLS]", "b_index": 1, "b_token": "someone",
                       "contribution": float(split.contributions[0, 1])}
    fig = build_similarity_heatmap(split)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (9, 7) and heat.zmin == -heat.zmax  # diverging, centred on 0
    assert fig.layout.title.text.startswith(
        f"Why similar? Cells sum to {split.model_cosine:.4f} = the model's cosine {split.model_cosine:.4f}")


def test_the_tutorial_model_mean_pools_without_normalising_and_still_splits_exactly():
    """The tutorial classifier mean-pools (not normalised): a cosine is scale-free, so the split is exact for the
    pooled features its classifier reads."""
    tutorial = load_source("tutorial")
    assert (tutorial.config.pooling, tutorial.config.normalize_embedding) == ("mean", False)
    split = explain_similarity(tutorial, "a gripping, funny film", "a dull and lifeless mess")
    assert abs(split.contributions.sum() - split.model_cosine) < 1e-6


def test_a_cls_pooled_model_is_refused_with_a_clear_message(minilm):
    class ClsPooled:
        name = "cls-model"
        config = dataclasses.replace(minilm.config, pooling="cls")

    with pytest.raises(AnalysisError, match=r"needs a mean-pooled sentence embedding; cls-model pools the first"):
        explain_similarity(ClsPooled(), A, B)


def test_the_registry_entry_needs_a_second_sentence(minilm):
    from encoder.trace import trace_text

    entry = ANALYSES["similarity"]
    single = trace_text(minilm, A)
    assert entry.limit(single) == NO_SECOND_TEXT and NO_SECOND_TEXT.startswith("Type a second sentence to compare")
    with pytest.raises(AnalysisError, match="Type a second sentence"):
        entry.compute(TraceInputs(single, minilm), {})
    paired = trace_text(minilm, A, B)
    assert entry.limit(paired) is None
    result = entry.compute(TraceInputs(paired, minilm), {})
    assert abs(result.contributions.sum() - result.model_cosine) < 1e-6


def _cli(capsys, *argv) -> None:
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err


def test_the_cli_writes_numbers_html_and_png(split, image_browser, tmp_path, capsys):
    args = ["--text", A, "--pair", B, "--view", "similarity", "-o"]
    _cli(capsys, *args, tmp_path / "s.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text(encoding="utf-8"))))
    assert list(rows[0]) == ["a_index", "a_token", "b_index", "b_token", "contribution"]
    assert sum(float(row["contribution"]) for row in rows) == pytest.approx(split.model_cosine, abs=1e-6)
    _cli(capsys, *args, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert data["kind"] == "SimilaritySplit" and (data["text_a"], data["text_b"]) == (A, B)
    np.testing.assert_allclose(data["contributions"], split.contributions, atol=1e-12)
    _cli(capsys, *args, tmp_path / "s.html")
    assert "Why similar? Cells sum to" in (tmp_path / "s.html").read_text(encoding="utf-8")
    _cli(capsys, *args, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_cli_without_pair_says_so(tmp_path, capsys):
    assert main(["--text", A, "--view", "similarity", "-o", str(tmp_path / "s.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {NO_SECOND_TEXT}"
