"""Export: figures to PNG/SVG/PDF (Chromium) and HTML, and the CLI (trace files: tests/test_trace_io.py).

Image tests need Chrome/Chromium; they skip with the reason where none is found, except in CI (CI=true), where
they must run.
"""

import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from plotly.offline import get_plotlyjs_version

from cli import main
from encoder.errors import ExportError
from encoder.trace import EncoderTrace
from encoder.trace_io import attention_from_csv, trace_from_json
from tests.support.traces import assert_same_trace, synthetic_trace
from viz import VIEWS, build_attention_heatmap, build_model_view
from viz.render import figure_to_bytes, figure_to_html, find_browser

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The cat sat on the mat because the cat was tired."


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# --- images ----------------------------------------------------------------------------------------------------


def test_png_has_the_figure_size_times_scale(trace, image_browser):
    fig = build_attention_heatmap(trace, layer=2, head=5, scrub=False)  # the head slider's room: tests/test_scrub.py
    data = figure_to_bytes(fig, "png")
    assert png_size(data) == (fig.layout.width, fig.layout.height)
    assert len(data) > 10_000
    assert png_size(figure_to_bytes(fig, "png", width=400, height=300, scale=2)) == (800, 600)


def test_svg_parses_and_holds_the_token_labels(trace, image_browser):
    fig = build_attention_heatmap(trace, layer=2, head=5, selected=(1, 2))
    data = figure_to_bytes(fig, "svg")
    # The click layer (one invisible marker per cell) is dropped; the selected cell's outline stays.
    assert len(fig.data[1].customdata) == trace.num_tokens ** 2
    assert data.count(b'class="point"') == 1
    root = ET.fromstring(data)
    assert root.tag.endswith("svg")
    text = [t for t in root.itertext() if t.strip()]
    for token in ("[CLS]", "cat", "because", "tired", "[SEP]"):
        assert token in text
    assert "Layer 2, head 5" in text


def test_pdf_export(trace, image_browser):
    data = figure_to_bytes(build_model_view(trace), "pdf")
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-1024:]
    assert len(data) > 5_000


def test_unknown_image_format_is_an_export_error(trace):
    with pytest.raises(ExportError, match="format 'gif' is not one of png, svg, pdf"):
        figure_to_bytes(build_attention_heatmap(trace), "gif")


def test_missing_browser_says_how_to_get_one(monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    with pytest.raises(ExportError, match=r"BROWSER_PATH='/nonexistent/chromium' is not an executable file"):
        find_browser()


def test_no_browser_anywhere_says_how_to_get_one(monkeypatch):
    from choreographer.browsers import Chromium

    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kwargs: None))  # a machine without one
    with pytest.raises(ExportError, match=r"apt-get install chromium.*BROWSER_PATH.*HTML export") as error:
        find_browser()
    assert "none was found" in str(error.value)


def test_a_browser_that_does_not_start_fails_fast_instead_of_hanging():
    code = (
        "import plotly.graph_objects as go\n"
        "from viz.render import ExportError, figure_to_bytes\n"
        "try:\n"
        "    figure_to_bytes(go.Figure(), 'png')\n"
        "except ExportError as error:\n"
        "    print(error)\n"
    )
    env = {**os.environ, "BROWSER_PATH": "/bin/false"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert "Chromium at /bin/false did not start" in result.stdout
    assert "BROWSER_PATH" in result.stdout


# --- HTML ------------------------------------------------------------------------------------------------------


def test_html_is_self_contained(trace):
    page = figure_to_html(build_attention_heatmap(trace, layer=1, head=1))
    assert page.lower().startswith("<!doctype html>")
    assert f"plotly.js v{get_plotlyjs_version()}" in page
    assert "Plotly.newPlot" in page
    assert re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.IGNORECASE) is None
    assert len(page) > 1_000_000  # the library itself is inlined
    assert "Layer 1, head 1" in page
    assert '"showSendToCloud": false' in page  # no "share to Plotly cloud" button in an offline page


# --- command line ----------------------------------------------------------------------------------------------


def test_cli_with_the_real_model_writes_an_svg(tmp_path, image_browser):
    out = tmp_path / "fig.svg"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--model", "minilm", "--text", TEXT, "--view", "heatmap",
         "--layer", "2", "--head", "5", "--format", "svg", "-o", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    text = list(ET.fromstring(out.read_bytes()).itertext())
    assert "because" in text and "Layer 2, head 5" in text


def test_cli_bad_input_exits_2_with_a_message_and_no_traceback(saved, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "--trace", str(saved), "--layer", "9", "-o", str(tmp_path / "x.html")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: layer 9 is out of range: the model has 6 layers (0-5)"
    assert "Traceback" not in result.stderr


# The Next-token view needs an LM head: its html is written in tests/test_decoder_views.py.
@pytest.mark.parametrize("view", [name for name in VIEWS if name != "next-token"])
def test_cli_makes_every_view_as_html(view, saved, tmp_path, capsys):
    out = tmp_path / f"{view}.html"
    assert main(["--trace", str(saved), "--view", view, "-o", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in page and "<script src" not in page


def test_cli_data_formats_round_trip(saved, trace, tmp_path, capsys):
    assert main(["--trace", str(saved), "-o", str(tmp_path / "t.npz")]) == 0
    assert_same_trace(EncoderTrace.load(tmp_path / "t.npz"), trace)
    assert main(["--trace", str(saved), "-o", str(tmp_path / "t.json")]) == 0
    assert_same_trace(trace_from_json((tmp_path / "t.json").read_text(encoding="utf-8")), trace)
    assert main(["--trace", str(saved), "--layer", "3", "--head", "4", "-o", str(tmp_path / "t.csv")]) == 0
    _, attention, layers, heads = attention_from_csv((tmp_path / "t.csv").read_text(encoding="utf-8"))
    assert (layers, heads) == ([3], [4])
    np.testing.assert_array_equal(attention[0, 0], trace.attention[3, 4])
    assert main(["--trace", str(tmp_path / "t.json"), "--view", "tokens", "--query", "2", "-o",
                 str(tmp_path / "tokens.html")]) == 0


def test_cli_errors(saved, tmp_path, capsys):
    assert main(["--trace", str(saved), "--view", "model", "--layer", "1", "-o", str(tmp_path / "m.html")]) == 2
    assert "view 'model' does not take --layer" in capsys.readouterr().err
    assert main(["--trace", str(saved), "-o", str(tmp_path / "x.txt")]) == 2
    assert "cannot tell the format from 'x.txt'" in capsys.readouterr().err
    assert main(["-o", str(tmp_path / "x.png")]) == 2
    assert "give --text" in capsys.readouterr().err
    assert main(["--trace", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "x.png")]) == 2
    assert "missing.npz does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "positional-dimensions" in capsys.readouterr().out


def test_cli_merge_words_applies_to_every_view_and_to_the_data(tmp_path, capsys):
    pieces = synthetic_trace(["[CLS]", "play", "##ful", "cat", "[SEP]"], words=[-1, 0, 0, 1, -1],
                             token_style="wordpiece")
    saved = str(pieces.save(tmp_path / "pieces.npz"))
    words = ("[CLS]", "playful", "cat", "[SEP]")
    assert main(["--trace", saved, "--merge-words", "-o", str(tmp_path / "w.json")]) == 0
    assert trace_from_json((tmp_path / "w.json").read_text(encoding="utf-8")).tokens == words
    assert main(["--trace", saved, "--merge-words", "--layer", "1", "-o", str(tmp_path / "w.csv")]) == 0
    assert attention_from_csv((tmp_path / "w.csv").read_text(encoding="utf-8"))[0] == words
    assert main(["--trace", saved, "--merge-words", "--view", "tokens", "--query", "1", "-o",
                 str(tmp_path / "w.html")]) == 0
    assert "playful" in (tmp_path / "w.html").read_text(encoding="utf-8")
    assert main(["--trace", saved, "--merge-words", "--view", "rollout", "-o", str(tmp_path / "r.json")]) == 0
    assert '"playful"' in (tmp_path / "r.json").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["--text", "A cat.", "--merge-words", "--view", "noise", "-o", str(tmp_path / "n.json")]) == 2
    assert "--merge-words does not apply to view 'noise' here: it re-runs the model" in capsys.readouterr().err
    unknown = str(synthetic_trace(["[CLS]", "a", "[SEP]"]).save(tmp_path / "old.npz"))
    assert main(["--trace", unknown, "--merge-words", "-o", str(tmp_path / "x.json")]) == 2
    assert "does not say which word each token belongs to" in capsys.readouterr().err
