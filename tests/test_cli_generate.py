"""``python -m cli generate``: a decoder continues a prompt; the command writes the generated trace and any view of
it, and refuses bad input with one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cli import main
from encoder.trace import EncoderTrace
from tests.support.families import FAMILIES_DIR, reference

LLAMA = str(FAMILIES_DIR / "llama")
ROOT = FAMILIES_DIR.parent.parent.parent


def test_greedy_generation_writes_the_trace_with_the_reference_continuation(tmp_path, capsys):
    case = reference("llama")["gen"]
    out = tmp_path / "gen.npz"
    assert main(["generate", "--model", LLAMA, "--prompt", str(case["prompt"]), "--max-new-tokens", "10",
                 "--out", str(out)]) == 0
    trace = EncoderTrace.load(out)
    np.testing.assert_array_equal(trace.token_ids, case["input_ids"])  # the ids transformers' generate chose
    prompt = len(case["prompt_ids"])
    assert trace.generated.tolist() == [False] * prompt + [True] * 10
    printed = capsys.readouterr().out
    assert printed.startswith("generated 10 tokens: ") and f"wrote {out}" in printed


def test_a_view_of_the_generation_and_of_one_step(tmp_path):
    whole, step = tmp_path / "whole.json", tmp_path / "step.json"
    common = ["generate", "--model", LLAMA, "--prompt", "Once upon a time", "--max-new-tokens", "5"]
    assert main([*common, "--format", "json", "-o", str(whole)]) == 0
    assert main([*common, "--step", "2", "--format", "json", "-o", str(step), "--out", str(tmp_path / "t.npz")]) == 0
    from encoder.trace_io import trace_from_json

    full, cut = trace_from_json(whole.read_text("utf-8")), trace_from_json(step.read_text("utf-8"))
    assert cut.num_tokens == full.num_tokens - 3 and cut.tokens == full.tokens[:-3]
    assert int(cut.generated.sum()) == 2
    assert EncoderTrace.load(tmp_path / "t.npz").num_tokens == full.num_tokens  # --out holds the whole generation


def test_sampling_with_a_seed_repeats_and_a_figure_is_written(tmp_path):
    paths = [tmp_path / f"{i}.npz" for i in range(2)]
    for path in paths:
        assert main(["generate", "--model", LLAMA, "--prompt", "The cat", "--max-new-tokens", "6", "--temperature",
                     "1.5", "--top-k", "50", "--top-p", "0.9", "--seed", "7", "--out", str(path)]) == 0
    first, second = (EncoderTrace.load(path) for path in paths)
    np.testing.assert_array_equal(first.token_ids, second.token_ids)
    figure = tmp_path / "heatmap.html"
    assert main(["generate", "--model", LLAMA, "--prompt", "The cat", "--max-new-tokens", "3", "--view", "heatmap",
                 "--layer", "1", "--head", "2", "-o", str(figure)]) == 0
    assert "plotly" in figure.read_text("utf-8")[:5000].lower()


@pytest.mark.parametrize(
    "argv, message",
    [(["--prompt", "The cat"], "give --out"),
     (["--prompt", "The cat", "--max-new-tokens", "0", "--out", "x.npz"], "at least 1"),
     (["--prompt", "The cat", "--out", "x.png"], "--out writes a trace"),
     (["--prompt", "The cat", "--step", "1", "--out", "x.npz"], "--step chooses what -o draws"),
     (["--prompt", "The cat", "--max-new-tokens", "2", "--step", "3", "-o", "x.html"], "steps 0 to 2")],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", LLAMA, *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_subcommand_runs_as_a_module_and_explains_itself():
    done = subprocess.run([sys.executable, "-m", "cli", "generate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("--prompt", "--max-new-tokens", "--temperature", "--top-k", "--top-p", "--seed", "--step", "--out"):
        assert flag in done.stdout
    refused = subprocess.run([sys.executable, "-m", "cli", "generate", "--prompt", "The cat", "--out", "x.npz"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # minilm has no LM head
    last = refused.stderr.strip().splitlines()[-1]  # after TensorFlow's start-up lines
    assert refused.returncode == 2 and last.startswith("error: ") and "cannot continue a text" in last
    assert "Traceback" not in refused.stderr


def test_the_decoder_views_of_a_generation(tmp_path):
    """The Next-token view's numbers say which tokens were generated; the logit lens (an analysis that re-runs the
    model) runs on the generated sequence."""
    import csv
    import json

    common = ["generate", "--model", LLAMA, "--prompt", "The cat", "--max-new-tokens", "3"]
    rows_file, lens_file = tmp_path / "next.csv", tmp_path / "lens.json"
    assert main([*common, "--view", "next-token", "-o", str(rows_file)]) == 0
    with rows_file.open(encoding="utf-8", newline="") as handle:
        flags = [row["generated"] for row in csv.DictReader(handle)]
    assert flags[-3:] == ["True"] * 3 and "True" not in flags[:-3]
    assert main([*common, "--view", "lens", "-o", str(lens_file)]) == 0
    assert json.loads(lens_file.read_text("utf-8"))
