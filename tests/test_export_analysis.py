"""The analysis views of the export CLI (``python -m cli --view rollout|flow|report|clusters|noise|importance|
ablation``) with the real MiniLM: figures as PNG/SVG/HTML, numbers as CSV/JSON equal to the library's, and one-line
errors for bad input.

Image tests need Chrome/Chromium; they skip with the reason where none is found, except in CI (CI=true), where they
must run.
"""

import csv
import io
import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import analysis
from analysis import gradients, perturb
from analysis.faithfulness import faithfulness
from analysis.heads import DEFAULT_CLUSTERS
from analysis.similarity import explain_similarity
from cli import main
from encoder.trace import trace_text
from viz import analysis_figures as figures
from viz.attribution import build_attribution_heatmap
from viz.faithfulness import build_faithfulness_chart
from viz.gradients import build_attention_gradient_heatmap, build_token_attribution
from viz.registry import ANALYSES as ANALYSIS_VIEWS
from viz.similarity import build_similarity_heatmap

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The cat sat on the mat."  # 8 tokens with [CLS] and [SEP]
LONG = " ".join(["word"] * 40)  # 42 tokens: above the flow limit
HEADS = "0:3,2:5"
SAMPLES = 2  # noise samples per sigma: enough to test, quick to run
# Settings each analysis view gets in the figure tests (model views run on --text, the others on a saved trace).
VIEW_ARGS = {
    "rollout": ["--layer", "3"],
    "flow": [],
    "report": ["--statistic", "sep"],
    "clusters": ["--clusters", "3"],
    "noise": ["--samples", str(SAMPLES), "--sigma", "0.5"],
    "importance": [],
    "ablation": ["--ablate", HEADS],
    "similarity": ["--pair", "A dog lay on the rug."],
    "norm": ["--layer", "2"],
    "globenc": ["--layer", "2"],
    "alti": ["--layer", "2"],
    "faithfulness": [],
    "value-zeroing": ["--layer", "2"],
    "attention-gradient": ["--layer", "2"],
    "input-gradient": [],
    "integrated-gradients": ["--steps", "50"],
}


@pytest.fixture(scope="module")
def long_saved(minilm, tmp_path_factory):
    return trace_text(minilm, LONG).save(tmp_path_factory.mktemp("trace") / "long.npz")


def source_args(view: str, saved: Path) -> list[str]:
    """Input flags for ``view``: the saved trace where it suffices, the text where the model must run again."""
    return ["--text", TEXT] if ANALYSIS_VIEWS[view].needs_model else ["--trace", str(saved)]


def export(capsys, *argv) -> None:
    """Run the CLI in-process; it must succeed."""
    code = main([str(a) for a in argv])
    assert code == 0, capsys.readouterr().err


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    return list(reader.fieldnames), list(reader)


def column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([float(row[name]) for row in rows])


def expected_title(view: str, trace, minilm) -> str:
    """The title of the figure the library builds for ``view`` with ``VIEW_ARGS``."""
    if view == "rollout":
        fig = figures.build_rollout_heatmap(analysis.attention_rollout(trace.attention), trace.tokens, 3)
    elif view == "flow":
        fig = figures.build_flow_heatmap(analysis.attention_flow(trace.attention), trace.tokens, trace.num_layers)
    elif view == "report":
        fig = figures.build_report_heatmap(analysis.head_report(trace), "sep")
    elif view == "clusters":
        fig = figures.build_clustering_heatmap(
            analysis.cluster_heads(analysis.head_distances(trace.attention), trace.num_layers, trace.num_heads))
    elif view == "noise":
        stability = perturb.noise_stability(minilm, trace, (0.0, 0.5), samples=SAMPLES)
        fig = figures.build_noise_heatmap(stability, 0.5)
    elif view == "importance":
        fig = figures.build_importance_heatmap(perturb.head_importance(minilm, trace))
    elif view == "similarity":
        fig = build_similarity_heatmap(explain_similarity(minilm, TEXT, VIEW_ARGS[view][1]))
    elif view == "faithfulness":
        fig = build_faithfulness_chart(faithfulness(minilm, trace))
    elif view == "attention-gradient":
        fig = build_attention_gradient_heatmap(gradients.attention_gradient(minilm, trace), trace.tokens, 2)
    elif view == "input-gradient":
        fig = build_token_attribution(gradients.input_gradient(minilm, trace), trace.tokens)
    elif view == "integrated-gradients":
        fig = build_token_attribution(gradients.integrated_gradients(minilm, trace), trace.tokens)
    elif view in ATTRIBUTION:
        fig = build_attribution_heatmap(np.zeros((trace.num_layers, trace.num_tokens, trace.num_tokens)),
                                        trace.tokens, view, 2)
    else:
        fig = figures.build_ablation_chart(perturb.ablate_heads(minilm, trace, [(0, 3), (2, 5)]))
    return fig.layout.title.text


# --- figures ---------------------------------------------------------------------------------------------------


ATTRIBUTION = {"norm", "globenc", "alti", "value-zeroing"}  # their titles name only the method and the layer
LAB = {"position-share", "relative-bias", "position-by-distance", "rope"}  # need a relative or rotary model:
# their exports are tested on those models' fixtures in tests/test_positional_lab.py
DECODER = {"lens"}  # needs an LM head: its export is tested on the llama fixture in tests/test_decoder_views.py


def test_every_analysis_is_exported_by_a_test():
    assert set(ANALYSIS_VIEWS) == set(VIEW_ARGS) | LAB | DECODER


@pytest.mark.parametrize("view", list(VIEW_ARGS))
def test_every_analysis_view_writes_png_and_svg(view, saved, trace, minilm, image_browser, tmp_path, capsys):
    png, svg = tmp_path / f"{view}.png", tmp_path / f"{view}.svg"
    export(capsys, *source_args(view, saved), "--view", view, *VIEW_ARGS[view], "-o", png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 500 and height >= 200
    export(capsys, *source_args(view, saved), "--view", view, *VIEW_ARGS[view], "--format", "svg", "-o", svg)
    root = ET.fromstring(svg.read_bytes())
    assert root.tag.endswith("svg")
    assert expected_title(view, trace, minilm) in [t for t in root.itertext() if t.strip()]


@pytest.mark.parametrize("view", list(VIEW_ARGS))
def test_every_analysis_view_writes_offline_html(view, saved, trace, minilm, tmp_path, capsys):
    out = tmp_path / f"{view}.html"
    export(capsys, *source_args(view, saved), "--view", view, *VIEW_ARGS[view], "-o", out)
    page = out.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in page and "<script src" not in page
    assert json.dumps(expected_title(view, trace, minilm))[1:-1] in page


def test_noise_without_sigma_draws_the_curve(trace, tmp_path, capsys):
    out = tmp_path / "noise.html"
    export(capsys, "--text", TEXT, "--view", "noise", "--samples", SAMPLES, "-o", out)
    assert "How attention moves as input noise grows" in out.read_text(encoding="utf-8")
    assert f"{1 + SAMPLES * (len(perturb.DEFAULT_SIGMAS) - 1)} noisy runs" in capsys.readouterr().err


# --- numbers ---------------------------------------------------------------------------------------------------


def test_rollout_csv_is_the_library_rollout_after_the_layer(saved, trace, tmp_path, capsys):
    out = tmp_path / "rollout.csv"
    export(capsys, "--trace", saved, "--view", "rollout", "--layer", 3, "--residual", 0.3, "-o", out)
    header, rows = read_csv(out)
    assert header == ["query_index", "query_token", "key_index", "key_token", "rollout"]
    count = trace.num_tokens
    assert len(rows) == count * count
    np.testing.assert_array_equal(column(rows, "rollout"),
                                  analysis.attention_rollout(trace.attention, 0.3)[3].ravel())
    assert [row["key_token"] for row in rows[:count]] == list(trace.tokens)
    export(capsys, "--trace", saved, "--view", "rollout", "-o", out)  # default: the last layer, residual 0.5
    np.testing.assert_array_equal(column(read_csv(out)[1], "rollout"),
                                  analysis.attention_rollout(trace.attention, analysis.DEFAULT_RESIDUAL)[-1].ravel())


def test_flow_csv_and_json_are_the_library_flow(saved, trace, tmp_path, capsys):
    flow = analysis.attention_flow(trace.attention)
    export(capsys, "--trace", saved, "--view", "flow", "-o", tmp_path / "flow.csv")
    header, rows = read_csv(tmp_path / "flow.csv")
    assert header == ["query_index", "query_token", "key_index", "key_token", "flow"]
    assert len(rows) == trace.num_tokens ** 2
    np.testing.assert_array_equal(column(rows, "flow"), flow.ravel())
    export(capsys, "--trace", saved, "--view", "flow", "--layer", 1, "-o", tmp_path / "flow.json")
    data = json.loads((tmp_path / "flow.json").read_text(encoding="utf-8"))
    assert (data["kind"], data["layer"], data["residual"], data["model"]) == ("flow", 1, 0.5, trace.model)
    assert data["tokens"] == list(trace.tokens)
    two_layers = analysis.attention_flow(trace.attention, num_layers=2)
    np.testing.assert_array_equal([row["flow"] for row in data["rows"]], two_layers.ravel())


def test_report_csv_and_json_hold_every_statistic(saved, trace, tmp_path, capsys):
    report = analysis.head_report(trace)
    export(capsys, "--trace", saved, "--view", "report", "--statistic", "cls", "-o", tmp_path / "report.csv")
    header, rows = read_csv(tmp_path / "report.csv")
    assert header == ["layer", "head", *analysis.STATISTICS]
    assert len(rows) == trace.num_layers * trace.num_heads
    for name in analysis.STATISTICS:
        np.testing.assert_array_equal(column(rows, name), report[name].ravel(), err_msg=name)
    export(capsys, "--trace", saved, "--view", "report", "-o", tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert data["kind"] == "HeadReport" and data["num_texts"] == 1
    np.testing.assert_array_equal(data["statistics"]["entropy"], report["entropy"])


def test_clusters_csv_and_json_are_the_library_clustering(saved, trace, tmp_path, capsys):
    clustering = analysis.cluster_heads(analysis.head_distances(trace.attention), trace.num_layers, trace.num_heads)
    export(capsys, "--trace", saved, "--view", "clusters", "--clusters", 3, "-o", tmp_path / "clusters.csv")
    header, rows = read_csv(tmp_path / "clusters.csv")
    assert header == ["position", "layer", "head", "cluster"]
    assert len(rows) == trace.num_layers * trace.num_heads
    assert [{k: int(v) for k, v in row.items()} for row in rows] == clustering.rows(3)
    assert {int(row["cluster"]) for row in rows} == {0, 1, 2}
    export(capsys, "--trace", saved, "--view", "clusters", "-o", tmp_path / "clusters.csv")
    assert {int(row["cluster"]) for row in read_csv(tmp_path / "clusters.csv")[1]} == set(range(DEFAULT_CLUSTERS))
    export(capsys, "--trace", saved, "--view", "clusters", "-o", tmp_path / "clusters.json")
    data = json.loads((tmp_path / "clusters.json").read_text(encoding="utf-8"))
    assert data["kind"] == "HeadClustering"
    assert data["order"] == clustering.order.tolist()
    np.testing.assert_array_equal(data["distance"], clustering.distance)


def test_report_and_clusters_over_a_corpus(minilm, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat.\n\n  A dog barked!  \nIt rained all day, so we stayed in.\n",
                      encoding="utf-8")
    sentences = ["The cat sat on the mat.", "A dog barked!", "It rained all day, so we stayed in."]
    export(capsys, "--corpus", corpus, "--view", "report", "--statistic", "punctuation", "-o", tmp_path / "r.csv")
    assert "\r3/3 sentences traced\n" in capsys.readouterr().err
    report = analysis.corpus_head_report(analysis.iter_traces(minilm, sentences), distances=True)
    header, rows = read_csv(tmp_path / "r.csv")
    assert header == ["layer", "head", *analysis.STATISTICS]
    assert len(rows) == 72
    for name in analysis.STATISTICS:
        np.testing.assert_array_equal(column(rows, name), report[name].ravel(), err_msg=name)
    export(capsys, "--corpus", corpus, "--view", "clusters", "--clusters", 5, "-o", tmp_path / "c.csv")
    expected = analysis.cluster_heads(report.distance, report.num_layers, report.num_heads).rows(5)
    assert [{k: int(v) for k, v in row.items()} for row in read_csv(tmp_path / "c.csv")[1]] == expected


def test_noise_csv_and_json_are_the_library_noise_stability(minilm, trace, tmp_path, capsys):
    export(capsys, "--text", TEXT, "--view", "noise", "--samples", SAMPLES, "--sigma", 0.3, "-o", tmp_path / "n.csv")
    sigmas = sorted({*perturb.DEFAULT_SIGMAS, 0.3})  # --sigma is measured besides the default levels
    stability = perturb.noise_stability(minilm, trace, sigmas, samples=SAMPLES)
    header, rows = read_csv(tmp_path / "n.csv")
    assert header == ["sigma", "layer", "head", "js_divergence", "js_std"]
    assert len(rows) == len(sigmas) * trace.num_layers * trace.num_heads
    np.testing.assert_array_equal(column(rows, "sigma"), np.repeat(sigmas, 72))
    np.testing.assert_array_equal(column(rows, "js_divergence"), stability.divergence.ravel())
    assert not column(rows, "js_divergence")[:72].any()  # sigma 0 is the clean trace exactly
    export(capsys, "--text", TEXT, "--view", "noise", "--samples", SAMPLES, "-o", tmp_path / "n.json")
    data = json.loads((tmp_path / "n.json").read_text(encoding="utf-8"))
    assert data["kind"] == "NoiseStability" and data["samples"] == SAMPLES
    assert data["sigmas"] == list(perturb.DEFAULT_SIGMAS)


def test_importance_csv_is_the_library_importance(minilm, trace, tmp_path, capsys):
    export(capsys, "--text", TEXT, "--view", "importance", "-o", tmp_path / "i.csv")
    importance = perturb.head_importance(minilm, trace)
    header, rows = read_csv(tmp_path / "i.csv")
    assert header == ["layer", "head", "importance", "embedding_cosine"]
    assert len(rows) == trace.num_layers * trace.num_heads
    np.testing.assert_array_equal(column(rows, "importance"), importance.importance.ravel())
    np.testing.assert_array_equal(column(rows, "embedding_cosine"), importance.cosine.ravel())
    assert "72/72 heads silenced" in capsys.readouterr().err


def test_ablation_csv_and_json_are_the_library_effect(minilm, trace, tmp_path, capsys):
    effect = perturb.ablate_heads(minilm, trace, [(0, 3), (2, 5)])
    export(capsys, "--text", TEXT, "--view", "ablation", "--ablate", "2:5 0:3", "-o", tmp_path / "a.csv")
    header, rows = read_csv(tmp_path / "a.csv")
    assert header == ["heads", "embedding_cosine"]
    assert rows == [{"heads": "L0H3 L2H5", "embedding_cosine": repr(effect.cosine)}]
    assert effect.cosine < 1.0
    export(capsys, "--text", TEXT, "--view", "ablation", "--ablate", HEADS, "-o", tmp_path / "a.json")
    data = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert data["kind"] == "AblationEffect" and data["heads"] == [[0, 3], [2, 5]]
    assert data["cosine"] == effect.cosine
    np.testing.assert_array_equal(data["embedding"], effect.embedding)
    assert "attention" not in data  # the (L, H, T, T) field stays out of the JSON


def test_ablation_in_a_subprocess(trace, minilm, tmp_path):
    out = tmp_path / "ablation.json"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--model", "minilm", "--text", TEXT, "--view", "ablation",
         "--ablate", HEADS, "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out}"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["cosine"] == perturb.ablate_heads(minilm, trace, [(0, 3), (2, 5)]).cosine


# --- bad input -------------------------------------------------------------------------------------------------


def run_cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_flow_over_32_tokens_exits_2_with_the_library_message(long_saved, tmp_path, capsys):
    out = tmp_path / "flow.png"
    result = run_cli("--trace", long_saved, "--view", "flow", "-o", out)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Attention flow is limited to 32 tokens (it solves one max-flow problem per token pair); this input "
        "has 42 tokens. Shorten the text or lower max tokens, or use rollout."
    )
    assert not out.exists()
    assert main(["--text", LONG, "--view", "flow", "--max-tokens", "32", "-o", str(tmp_path / "flow.csv")]) == 0
    assert len(read_csv(tmp_path / "flow.csv")[1]) == 32 * 32


@pytest.mark.parametrize(("spec", "message"), [
    ("0-3", "error: --ablate takes layer:head pairs separated by commas, e.g. 0:3,2:5; got '0-3'"),
    ("0:3,x", "error: --ablate takes layer:head pairs separated by commas, e.g. 0:3,2:5; got '0:3,x'"),
])
def test_a_bad_ablate_spec_exits_2_with_one_line(spec, message, tmp_path):
    result = run_cli("--text", TEXT, "--view", "ablation", "--ablate", spec, "-o", tmp_path / "a.png")
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stderr


def test_analysis_errors(saved, tmp_path, capsys):
    def error(*argv) -> str:
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        return err

    out = str(tmp_path / "x.html")
    assert error("--trace", saved, "--view", "noise", "-o", out) == (
        "error: view 'noise' re-runs the model, so it needs --text (and --model), not --trace")
    assert "view 'importance' re-runs the model" in error("--trace", saved, "--view", "importance", "-o", out)
    assert "view 'ablation' re-runs the model" in error("--trace", saved, "--view", "ablation", "--ablate", "0:1",
                                                        "-o", out)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("A cat.\n", encoding="utf-8")
    assert error("--trace", saved, "--corpus", corpus, "--view", "report", "-o", out) == (
        "error: --corpus re-runs the model on every sentence, so it takes --model, not --trace")
    assert error("--text", TEXT, "--corpus", corpus, "--view", "report", "-o", out) == (
        "error: give either --corpus or --text/--pair, not both")
    assert "does not exist" in error("--corpus", tmp_path / "none.txt", "--view", "clusters", "-o", out)
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    assert "has no sentences" in error("--corpus", tmp_path / "blank.txt", "--view", "report", "-o", out)
    assert error("--text", TEXT, "--view", "ablation", "-o", out) == (
        "error: view 'ablation' needs --ablate (heads to silence together, e.g. 0:3,2:5)")
    assert error("--text", TEXT, "--view", "ablation", "--ablate", "6:0", "-o", out) == (
        "error: layer 6 is out of range: the model has 6 layers (0-5)")
    assert error("--trace", saved, "--view", "rollout", "--layer", 6, "-o", out) == (
        "error: layer 6 is out of range: the model has 6 layers (0-5)")
    assert error("--trace", saved, "--view", "rollout", "--residual", 1.5, "-o", out) == (
        "error: --residual must be between 0 and 1, got 1.5")
    assert error("--trace", saved, "--view", "rollout", "--head", 1, "--hide-special", "-o", out) == (
        "error: view 'rollout' does not take --head, --hide-special")
    assert error("--trace", saved, "--view", "flow", "--corpus", corpus, "-o", out) == (
        "error: view 'flow' does not take --corpus")
    assert error("--trace", saved, "--view", "heatmap", "--residual", 0.2, "--statistic", "cls", "-o", out) == (
        "error: view 'heatmap' does not take --residual, --statistic (analysis settings)")
    assert error("--trace", saved, "--view", "rollout", "-o", tmp_path / "x.npz").startswith(
        "error: view 'rollout' writes png, svg, pdf, html, csv, json, not npz")
    assert error("--trace", saved, "--view", "clusters", "--clusters", 0, "-o", out) == (
        "error: --clusters must be at least 1, got 0")
    assert error("--text", TEXT, "--view", "noise", "--samples", 0, "-o", out) == (
        "error: --samples must be at least 1, got 0")
    assert error("--text", TEXT, "--view", "noise", "--sigma", -0.1, "-o", out) == (
        "error: --sigma must be at least 0, got -0.1")
    assert "is not a Plotly named colour scale" in error("--trace", saved, "--view", "report", "--colorscale",
                                                         "Rainbowish", "-o", tmp_path / "x.csv")
    assert not list(tmp_path.glob("x.*"))


def test_help_groups_the_analysis_settings(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "analysis settings:" in text and "analysis views (csv and json hold the analysis numbers" in text
    for flag in ("--residual R", "--statistic NAME", "--corpus FILE", "--clusters K", "--samples N", "--sigma S",
                 "--ablate L:H,..."):
        assert flag in text.split("analysis settings:")[1]
    for view in ANALYSIS_VIEWS:
        assert f"\n  {view} " in text
