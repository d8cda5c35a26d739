"""The faithfulness scoreboard over a corpus (``analysis.faithfulness.corpus_faithfulness``): each sentence scored
exactly as alone, the means and shares from those scores, short sentences skipped, the CLI over the shipped test
sentences, and the app's corpus run with its table."""

import csv
import io
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.faithfulness import corpus_faithfulness, faithfulness
from cli import main
from encoder.errors import AnalysisError
from encoder.trace import trace_text
from tests.support.floats import assert_close_f32
from viz.faithfulness import build_faithfulness_corpus_chart

TEXTS = ("a wonderful moving film", "Hi", "the plot is dull and the acting worse", "not bad at all")


@pytest.fixture(scope="module")
def tutorial():
    from encoder.sources import load_source

    return load_source("tutorial")


@pytest.fixture(scope="module")
def board(tutorial):
    seen = []
    result = corpus_faithfulness(tutorial, TEXTS, progress=lambda done, total: seen.append((done, total)),
                                 corpus="four reviews")
    return result, seen


def test_each_sentence_is_scored_as_alone_and_short_ones_are_skipped(tutorial, board):
    result, seen = board
    assert seen == [(n, len(TEXTS)) for n in range(1, len(TEXTS) + 1)]
    assert result.skipped == 1 and result.texts == (TEXTS[0], TEXTS[2], TEXTS[3])  # "Hi" has one token
    assert result.output == "drop in p(predicted class)" and result.corpus == "four reviews"
    for row, text in enumerate(result.texts):
        alone = faithfulness(tutorial, trace_text(tutorial, text))
        assert alone.methods == result.methods
        assert_close_f32(result.spearman[row], alone.spearman, ulps=16)
        assert_close_f32(result.aopc[row], alone.aopc, ulps=16)


def test_means_errors_and_best_shares(board):
    result, _ = board
    rows = result.rows()
    assert sorted(row["method"] for row in rows) == sorted(result.methods)
    means = [row["mean_spearman"] for row in rows]
    assert means == sorted(means, reverse=True)  # best first
    for row in rows:
        column = result.spearman[:, result.methods.index(row["method"])]
        finite = column[np.isfinite(column)]
        assert row["mean_spearman"] == pytest.approx(finite.mean())
        assert row["sem"] == pytest.approx(finite.std(ddof=1) / np.sqrt(len(finite)))
        assert row["sentences"] == len(finite)
    assert sum(row["best_share"] for row in rows) == pytest.approx(1.0)
    shares = dict.fromkeys(result.methods, 0.0)
    for sentence in result.spearman:  # a tie for the best rho splits that sentence between the tied methods
        winners = [m for m, rho in zip(result.methods, sentence) if rho == np.nanmax(sentence)]
        for method in winners:
            shares[method] += 1 / len(winners) / len(result.texts)
    assert {row["method"]: row["best_share"] for row in rows} == pytest.approx(shares)
    fig = build_faithfulness_corpus_chart(result)
    assert fig.layout.title.text.startswith("Faithfulness over 3 sentences")
    assert list(fig.data[0].y) == [row["method"] for row in rows][::-1]  # best on top
    np.testing.assert_allclose(fig.data[0].x, means[::-1])
    assert "1 too short to rank were skipped" in fig.layout.title.subtitle.text


def test_a_corpus_with_nothing_to_rank_is_refused(tutorial):
    with pytest.raises(AnalysisError, match="no sentence of the corpus has 2 tokens"):
        corpus_faithfulness(tutorial, ["Hi", "yes"])


def test_cli_scores_the_shipped_test_sentences(tutorial, tmp_path, capsys):
    out = tmp_path / "board.csv"
    args = ["--model", "tutorial", "--corpus", "test", "--corpus-size", "5", "--view", "faithfulness"]
    assert main([*args, "-o", str(out)]) == 0, capsys.readouterr().err
    assert "5/5 sentences scored" in capsys.readouterr().err
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {"method", "mean_spearman", "sem", "sentences", "mean_aopc", "best_share"} <= set(rows[0])
    from tutorial.dataset import load_splits

    texts = [example.text for example in load_splits()["test"]][:5]
    expected = corpus_faithfulness(tutorial, texts)
    assert {row["method"]: float(row["mean_spearman"]) for row in rows} == pytest.approx(
        {row["method"]: row["mean_spearman"] for row in expected.rows()})
    assert main([*args, "-o", str(tmp_path / "board.json")]) == 0
    data = json.loads((tmp_path / "board.json").read_text(encoding="utf-8"))
    assert data["kind"] == "CorpusFaithfulness" and len(data["texts"]) == 5
    assert main(["--model", "tutorial", "--corpus-size", "5", "--view", "faithfulness", "--text", "a film",
                 "-o", str(out)]) == 2
    assert "--corpus-size takes the first N sentences of --corpus" in capsys.readouterr().err


def test_app_scores_test_sentences_with_a_table():
    at = AppTest.from_file("../app.py", default_timeout=300)
    for key, value in dict(model="tutorial", view="Analysis", analysis="Faithfulness",
                           corpus="test sentences").items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    slider = at.slider(key="corpus_size_200")
    assert (slider.min, slider.max, slider.value) == (50, 200, 200)
    slider.set_value(50).run()
    assert not at.exception, [e.value for e in at.exception]
    (figure,) = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert figure["layout"]["title"]["text"].startswith("Faithfulness over 50 sentences")
    table = at.dataframe[0].value
    assert list(table["method"]) == figure["data"][0]["y"][::-1]  # the table best first, the chart best on top


def test_long_sentences_are_scored_on_their_first_tokens_and_the_chart_says_so(tutorial):
    long = " ".join(["a wonderful moving film"] * 10)  # 40 words
    result = corpus_faithfulness(tutorial, [long, TEXTS[0]], max_tokens=12)
    assert result.truncated == 1 and len(result.texts) == 2
    cut = faithfulness(tutorial, trace_text(tutorial, long, max_tokens=12))
    assert_close_f32(result.spearman[0], cut.spearman, ulps=16)
    assert "1 scored on their first tokens only" in build_faithfulness_corpus_chart(result).layout.title.subtitle.text
