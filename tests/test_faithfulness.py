"""The faithfulness scoreboard (``analysis.faithfulness``) on the real MiniLM and the tutorial classifier: the
leave-one-out ground truth re-computed by hand, Spearman on known vectors, rows for every method, the CLI export."""

import csv
import io
import json

import numpy as np
import pytest

from analysis import gradients
from analysis.faithfulness import faithfulness, ranks, spearman
from cli import main
from encoder.errors import AnalysisError
from encoder.trace import trace_text
from viz.faithfulness import TITLE, build_faithfulness_chart

TEXT = "The cat sat on the mat."  # 8 tokens with [CLS] and [SEP], one piece per word
WORDS = ["The", "cat", "sat", "on", "the", "mat", "."]
REVIEW = "a wonderful moving film"
ALL_METHODS = ("attention", "rollout", "value-zeroing", "norm", "globenc", "alti", "attention-gradient",
               "input-gradient", "integrated-gradients")
GRADIENT_METHODS = ALL_METHODS[-3:]


@pytest.fixture(scope="module")
def tutorial():
    from encoder.sources import load_source

    return load_source("tutorial")


@pytest.fixture(scope="module")
def scores(minilm, trace):
    return faithfulness(minilm, trace)


def shortened(words: list[str], drop: int) -> str:
    kept = [w for i, w in enumerate(words) if i != drop]
    return " ".join(kept[:-1]) + kept[-1] if kept[-1] == "." else " ".join(kept)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_loo_is_one_minus_cosine_of_each_shortened_text_traced_alone(minilm, trace, scores):
    assert list(scores.positions) == list(range(1, 1 + len(WORDS)))
    for n, position in enumerate(scores.positions):
        short = trace_text(minilm, shortened(WORDS, n))
        np.testing.assert_array_equal(short.token_ids, np.delete(trace.token_ids, position))
        expected = 1.0 - cosine(short.outputs["embedding"], trace.outputs["embedding"])
        assert scores.loo[n] == pytest.approx(expected, abs=1e-5), WORDS[n]


def test_tutorial_loo_is_the_drop_in_the_predicted_probability(tutorial):
    words = REVIEW.split()
    clean = trace_text(tutorial, REVIEW)
    result = faithfulness(tutorial, clean)
    predicted = int(np.argmax(clean.outputs["probabilities"]))
    assert result.output == f"drop in p({clean.labels[predicted]})"
    for n, position in enumerate(result.positions):
        short = trace_text(tutorial, " ".join(w for i, w in enumerate(words) if i != n))
        np.testing.assert_array_equal(short.token_ids, np.delete(clean.token_ids, position))
        drop = clean.outputs["probabilities"][predicted] - short.outputs["probabilities"][predicted]
        assert result.loo[n] == pytest.approx(float(drop), abs=1e-5)
    assert result.methods == ALL_METHODS


def test_spearman_on_known_vectors():
    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, 2 * a + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # ties: ranks [1.5, 1.5, 3] against [1, 2, 3]: Pearson of the centred ranks [-.5,-.5,1] and [-1,0,1]
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.5 / np.sqrt(1.5 * 2))
    assert np.isnan(spearman(np.ones(3), a[:3]))
    with pytest.raises(AnalysisError, match="1-D arrays of one length"):
        spearman(a, a[:3])


def test_rows_for_every_method(scores):
    rows = scores.rows()
    assert [row["method"] for row in rows] == list(ALL_METHODS)
    for row in rows:
        assert -1.0 <= row["spearman"] <= 1.0 and np.isfinite(row["aopc"])
    assert scores.deletions == len(WORDS)
    assert [row["token"] for row in scores.token_rows()] == list(scores.tokens[1:-1])
    fig = build_faithfulness_chart(scores)
    assert fig.layout.title.text == TITLE
    np.testing.assert_array_equal(fig.data[0].y, scores.spearman)


def test_mean_pooled_importance_is_the_mean_row_of_raw_attention(trace, scores):
    expected = trace.attention[-1].mean(axis=0, dtype=np.float64).mean(axis=0)[scores.positions]
    np.testing.assert_allclose(scores.importance[0], expected)


def test_value_zeroing_importance_is_the_mean_row_of_its_last_layer_rollout(minilm, trace, scores):
    from analysis.value_zeroing import value_zeroing

    expected = value_zeroing(minilm, trace).rollout[-1].mean(axis=0)[scores.positions]
    np.testing.assert_allclose(scores.importance[ALL_METHODS.index("value-zeroing")], expected, atol=1e-12)


@pytest.mark.parametrize("family", ["deberta-v3", "modernbert"])
def test_value_zeroing_is_scored_for_models_the_decompositions_refuse(family):
    from analysis.value_zeroing import value_zeroing
    from tests.support.families import load_family

    model = load_family(family)
    clean = trace_text(model, TEXT)
    result = faithfulness(model, clean)
    assert result.methods == ("attention", "rollout", "value-zeroing", *GRADIENT_METHODS)
    row = value_zeroing(model, clean).rollout[-1]
    expected = row[0] if model.config.pooling == "cls" else row.mean(axis=0)
    np.testing.assert_allclose(result.importance[2], expected[result.positions], atol=1e-12)
    assert np.isfinite(result.aopc).all()


@pytest.mark.parametrize(("family", "read"), [("gpt2", None), ("clip-text", -1)])
def test_pre_norm_models_score_every_method_from_the_row_their_output_reads(family, read):
    """GPT-2 (mean-pooled) and CLIP (pooled at its end-of-text token, here the last) are pre-LN with a layer norm,
    so norm-based, GlobEnc and ALTI are scored too; each matrix is read at the row the output reads."""
    from analysis import attribution
    from tests.support.families import load_family

    model = load_family(family)
    clean = trace_text(model, TEXT)
    result = faithfulness(model, clean)
    assert result.methods == ALL_METHODS
    weights = [attribution.layer_weights(model, layer) for layer in range(clean.num_layers)]
    alti = attribution.rollout(attribution.alti_layers(clean.hidden, clean.attention, weights))[-1]
    expected = alti.mean(axis=0) if read is None else alti[read]
    np.testing.assert_allclose(result.importance[ALL_METHODS.index("alti")], expected[result.positions], atol=1e-12)
    assert np.isfinite(result.aopc).all()


def test_gradient_methods_use_the_gradient_attributions(minilm, trace, scores):
    """attention x gradient through the mean row of its last layer (head mean); input x gradient and integrated
    gradients per token as they are."""
    column = {method: k for k, method in enumerate(scores.methods)}
    positions = scores.positions
    expected = gradients.attention_gradient(minilm, trace).head_mean(-1).mean(axis=0)[positions]
    np.testing.assert_allclose(scores.importance[column["attention-gradient"]], expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(scores.importance[column["input-gradient"]],
                               gradients.input_gradient(minilm, trace).values[positions], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(scores.importance[column["integrated-gradients"]],
                               gradients.integrated_gradients(minilm, trace).values[positions], rtol=1e-6,
                               atol=1e-12)


def test_too_few_tokens_is_refused(minilm):
    with pytest.raises(AnalysisError, match="at least 2"):
        faithfulness(minilm, trace_text(minilm, "cat"))


def test_cli_writes_png_csv_and_json(scores, image_browser, tmp_path, capsys):
    for suffix in ("png", "csv", "json"):
        out = tmp_path / f"faithfulness.{suffix}"
        assert main(["--text", TEXT, "--view", "faithfulness", "-o", str(out)]) == 0, capsys.readouterr().err
    assert (tmp_path / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "faithfulness.csv").read_text(encoding="utf-8"))))
    assert [row["method"] for row in rows] == list(ALL_METHODS)
    np.testing.assert_allclose([float(row["spearman"]) for row in rows], scores.spearman, atol=1e-9)
    data = json.loads((tmp_path / "faithfulness.json").read_text(encoding="utf-8"))
    assert data["kind"] == "Faithfulness" and data["methods"] == list(ALL_METHODS)
    np.testing.assert_allclose(data["loo"], scores.loo, atol=1e-9)
