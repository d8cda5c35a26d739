"""What decoders add to the views: attention sinks, grouped-query head labels, the Next-token view, the logit lens
and generated tokens marked."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import cli
from analysis import merge_words, rows_to_csv, to_json, word_starts
from analysis.inputs import TraceInputs
from analysis.lens import LENS_WINDOW, LogitLens, lens_limit, lens_window, logit_lens
from analysis.report import SINK_FROM, SINK_THRESHOLD, head_report, sink_queries
from encoder.errors import ExportError, ViewError
from encoder.sources import load_path
from encoder.tokenizer import TextTokenizer
from encoder.trace import EncoderTrace, causal_visible, trace_text
from tests.conftest import FIXTURES
from tests.support.floats import approx_f32, assert_close_f32
from tests.support.traces import synthetic_trace
from viz.analysis_figures import build_report_heatmap
from viz.attention import build_attention_heatmap, build_head_grid
from viz.layout import HIGHLIGHT, display_token, percent
from viz.lens import build_logit_lens
from viz.model_view import build_model_view
from viz.next_token import GENERATED_NOTE, build_next_token_view, candidate_labels, next_token_rows
from viz.registry import ANALYSES, VIEWS, build_view, view_tabs
from viz.render import figure_to_bytes
from viz.selection import head_label

WORDS = ("The", "cat", "sat", "on", "the", "mat", "today")


def sink_trace(key_value_heads: int = 0):
    """A causal 7-token trace of 1 layer x 4 heads: head 0 puts everything on the first token (a sink), head 1 on
    the token itself, head 2 splits evenly between the first token and itself, head 3 is uniform over what it
    sees."""
    t = len(WORDS)
    first = np.zeros((t, t))
    first[:, 0] = 1
    own = np.eye(t)
    half = (first + own) / 2
    half[0, 0] = 1
    uniform = np.tri(t) / np.arange(1, t + 1)[:, None]
    attention = np.stack([first, own, half, uniform])[None].astype(np.float32)
    return synthetic_trace(WORDS, attention=attention, visible="causal").replace(key_value_heads=key_value_heads)


def test_sink_statistic_averages_the_queries_after_the_first_few():
    assert (SINK_FROM, SINK_THRESHOLD) == (4, 0.5)
    assert sink_queries(7) == slice(4, 7) and sink_queries(3) == slice(2, 3) and sink_queries(1) == slice(0, 1)
    report = head_report(sink_trace())
    uniform = np.mean([1 / 5, 1 / 6, 1 / 7])  # queries 4, 5 and 6 see 5, 6 and 7 keys
    assert report["sink"][0].tolist() == [approx_f32(1.0), 0.0, approx_f32(0.5), approx_f32(uniform)]
    assert report.sinks() == [(0, 0, approx_f32(1.0)), (0, 2, approx_f32(0.5))]  # 0.5 counts: at least
    assert report["cls"][0, 2] > report["sink"][0, 2]  # "cls" counts the first queries too


def test_report_card_names_the_sinks_and_the_key_value_heads():
    plain = head_report(sink_trace())
    subtitle = build_report_heatmap(plain, "sink").layout.title.subtitle.text.replace("<br>", " ")
    assert "Attention sinks (≥ 0.5 of attention from queries 4+ on the first token): L0 H0 (1.00), L0 H2 (0.50)." \
        in subtitle
    assert "kv" not in subtitle and "kv_head" not in plain.rows()[0]
    grouped = head_report(sink_trace(key_value_heads=2))
    subtitle = build_report_heatmap(grouped, "entropy").layout.title.subtitle.text.replace("<br>", " ")
    assert "query heads 0-1 share kv head 0; heads 2-3 share kv head 1." in subtitle
    assert [row["kv_head"] for row in grouped.rows()] == [0, 0, 1, 1]
    assert [shape.x0 for shape in build_report_heatmap(grouped, "sink").layout.shapes] == [1.5]
    assert not build_report_heatmap(plain, "sink").layout.shapes
    assert list(grouped.rows()[0])[:3] == ["layer", "head", "kv_head"]


def test_no_sinks_is_said():
    t = len(WORDS)
    attention = np.eye(t, dtype=np.float32)[None, None]
    report = head_report(synthetic_trace(WORDS, attention=attention, visible="causal"))
    assert report.sinks() == []
    assert "on the first token): none." in build_report_heatmap(report, "sink").layout.title.subtitle.text


def test_model_view_marks_the_sinks():
    trace = sink_trace()
    fig = build_model_view(trace, sinks=True)
    sinks = next(t for t in fig.data if t.name == "sinks")
    assert len(sinks.x) == 2 and ["head 0:" in text or "head 2:" in text for text in sinks.text] == [True, True]
    assert "red dots: 2 attention sinks" in fig.layout.title.subtitle.text
    assert "sinks" not in [t.name for t in build_model_view(trace).data]
    calm = synthetic_trace([f"w{i}" for i in range(7)], attention=np.full((1, 4, 7, 7), 1 / 7, np.float32))
    none = build_model_view(calm, sinks=True)  # asked for, none found: said, not left to guess
    assert "attention sinks (red dots): none" in none.layout.title.subtitle.text.replace("<br>", " ")
    assert len(next(t for t in none.data if t.name == "sinks").x) == 0


def test_grouped_query_heads_are_labelled_and_grouped():
    trace = sink_trace(key_value_heads=2)
    assert [head_label(trace, h) for h in range(4)] == ["head 0 (kv 0)", "head 1 (kv 0)", "head 2 (kv 1)",
                                                        "head 3 (kv 1)"]
    assert head_label(sink_trace(), 3) == "head 3"
    heatmap = build_attention_heatmap(trace, 0, head=3)
    assert "head 3 (kv 1)" in heatmap.layout.title.text
    assert [step.label for step in heatmap.layout.sliders[0].steps] == ["0 (kv 0)", "1 (kv 0)", "2 (kv 1)", "3 (kv 1)"]
    grid = build_head_grid(trace, 0)
    assert [a.text for a in grid.layout.annotations][:4] == [head_label(trace, h) for h in range(4)]
    # One key/value head a row: head 2 starts the second row, under head 0.
    layout = grid.layout
    assert layout.xaxis3.domain == layout.xaxis.domain and layout.yaxis3.domain[1] < layout.yaxis.domain[0]
    model = build_model_view(trace)
    assert len(model.layout.shapes) == 1 and "2 key/value heads, each shared by 2" in model.layout.title.subtitle.text
    assert "layer 0, head 3 (kv 1)" in next(t for t in model.data if t.name == "heads").text[3]


def test_key_value_heads_must_divide_the_heads():
    with pytest.raises(ValueError, match=r"key_value_heads \(3\) must divide the 4 heads"):
        sink_trace(key_value_heads=3)


# ---------------------------------------------------------------------------------------------------------------
# The Next-token view, on the llama fixture's arrays as transformers computed them (the reference of
# tests/fixtures/families); the end-to-end tests below trace the same fixture with Headlight.

LLAMA = FIXTURES / "families" / "llama"


def reference_trace(case: str = "gen") -> EncoderTrace:
    """The llama fixture's reference ``case`` as an EncoderTrace with the LM fields of the trace contract:
    attention, hidden states and logits from transformers; the top-10, next_logprob and the candidates' pieces
    computed here from the logits; in the "gen" case the generated tokens marked."""
    ref = np.load(LLAMA / "reference.npz")
    ids = ref[f"{case}/input_ids"].astype(np.int32)
    logits = ref[f"{case}/logits"].astype(np.float64)  # (T, V)
    logprobs = logits - logits.max(-1, keepdims=True)
    logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
    top = np.argsort(-logprobs, axis=-1, kind="stable")[:, :10].astype(np.int32)  # (T, 10)
    following = np.append(logprobs[np.arange(len(ids) - 1), ids[1:]], np.nan).astype(np.float32)
    tokenizer = TextTokenizer.from_folder(LLAMA, 64)
    vocab = np.unique(top).astype(np.int32)
    hidden = ref[f"{case}/hidden_states"]
    text = str(ref["gen/prompt"]) + str(ref["gen/generated_text"]) if case == "gen" else str(ref[f"{case}/text"])
    encoded = tokenizer.encode(text)
    generated = None
    if case == "gen":
        generated = np.arange(len(ids)) >= len(ref["gen/prompt_ids"])
    count = len(ids)
    return EncoderTrace(
        model="llama", tokens=tuple(str(t) for t in ref[f"{case}/tokens"]), token_ids=ids,
        segment_ids=np.zeros(count, np.int32), special=ids == ids[0], attention=ref[f"{case}/attention"],
        positional=np.zeros((count, 1), np.float32), positional_table=np.zeros((count, 1), np.float32),
        hidden=hidden, visible=causal_visible(2, count), token_style="bytelevel", text=text,
        words=encoded.words if encoded.token_ids.tolist() == ids.tolist() else None,
        outputs={"next_ids": top, "next_probs": np.exp(np.take_along_axis(logprobs, top, -1)).astype(np.float32),
                 "next_logprob": following},
        generated=generated, vocab_ids=vocab, vocab_tokens=tuple(tokenizer.id_to_token(int(i)) for i in vocab),
        key_value_heads=2,
    )


def test_next_token_view_shades_surprisal_and_lists_the_candidates():
    trace = reference_trace()
    logprob = trace.outputs["next_logprob"]
    fig = build_next_token_view(trace, query=12)
    tokens = next(t for t in fig.data if t.name == "tokens")
    first = next(t for t in fig.data if t.name == "first")
    assert first.customdata[0, 0] == 0 and tokens.customdata[:, 0].tolist() == list(range(1, trace.num_tokens))
    assert_close_f32(tokens.marker.color, -logprob[:-1], ulps=0)  # token j: -ln p(token j | before), nats
    assert_close_f32(tokens.customdata[:, 2], -logprob[:-1] / math.log(2), ulps=4)  # bits in the hover data
    assert "nats" in tokens.hovertext[0] and "bits" in tokens.hovertext[0]
    bars = next(t for t in fig.data if t.name == "candidates")
    assert_close_f32(bars.x, trace.outputs["next_probs"][12], ulps=0)
    assert bars.customdata[:, 0].tolist() == trace.outputs["next_ids"][12].tolist()
    assert list(fig.layout.yaxis2.ticktext) == [display_token(t) for t in trace.vocab_text(
        trace.outputs["next_ids"][12])]
    # Greedy generation: each generated token was the top candidate at the position before it, drawn red.
    assert trace.token_ids[13] == trace.outputs["next_ids"][12, 0] and bars.marker.color[0] == HIGHLIGHT
    generated = np.flatnonzero(trace.generated)
    assert all(tokens.text[j - 1].startswith("<i>") for j in generated)  # italics mark what the model wrote
    assert GENERATED_NOTE in fig.layout.title.subtitle.text
    last = build_next_token_view(trace)  # default: the last token, what the model would write next
    assert "the text ends here" in last.layout.annotations[0].text
    # The strip's two bar traces (grey first token, shaded others) share each line instead of splitting it.
    assert fig.layout.barmode == "overlay" and first.y[0] == tokens.y[0] == 0
    assert fig.layout.coloraxis.colorbar.title.text.startswith("surprisal")


def test_next_token_hover_names_the_character_of_byte_tokens():
    trace = reference_trace("unicode")  # "Café ...": the fixture's vocabulary cuts "é" into <0xC3> <0xA9>
    first = trace.readable_tokens.index("<0xC3>")
    assert trace.readable_tokens[first + 1] == "<0xA9>"
    bars = next(t for t in build_next_token_view(trace).data if t.name == "tokens")
    hover = dict(zip(bars.customdata[:, 0].astype(int).tolist(), bars.hovertext))
    assert "a byte of “é”" in hover[first] and "a byte of “é”" in hover[first + 1]


def test_next_token_candidates_are_told_apart_and_readable():
    found = [("the", 5, 0.5), ("cat", 7, 0.2), ("the", 9, 0.1)]  # " the" and "the" both read "the"
    assert candidate_labels(found) == ["the (id 5)", "cat", "the (id 9)"]
    assert [percent(p) for p in (0.342, 0.0342, 3.12e-5)] == ["34.2%", "3.42%", "0.00312%"]


def test_next_token_view_exports_control_character_pieces(image_browser):
    """A byte-level vocabulary has a piece for each control byte: shown as bytes, the image export works."""
    trace = reference_trace()
    outputs = dict(trace.outputs)
    outputs["next_ids"] = outputs["next_ids"].copy()
    outputs["next_ids"][-1, 1] = 1  # the fixture's id 1 is <s>; its piece below is a control byte
    vocab_ids = np.union1d(trace.vocab_ids, [1]).astype(np.int32)
    pieces = dict(zip(trace.vocab_ids.tolist(), trace.vocab_tokens)) | {1: "\x01"}
    odd = dataclasses.replace(trace, outputs=outputs, vocab_ids=vocab_ids,
                              vocab_tokens=tuple(pieces[int(i)] for i in vocab_ids), token_style="")
    fig = build_next_token_view(odd)
    assert "&lt;0x01&gt;" in list(fig.layout.yaxis2.ticktext)
    assert figure_to_bytes(fig, "svg").startswith(b"<svg")


def test_next_token_numbers():
    trace = reference_trace()
    rows, document = next_token_rows(trace)
    assert len(rows) == trace.num_tokens and rows[0]["surprisal_nats"] is None
    assert rows[5]["surprisal_nats"] == approx_f32(-trace.outputs["next_logprob"][4])
    assert rows[5]["surprisal_bits"] == approx_f32(-trace.outputs["next_logprob"][4] / math.log(2))
    assert [rows[5][f"p_{k}"] for k in range(1, 11)] == trace.outputs["next_probs"][5].tolist()
    assert rows[-1]["generated"] and not rows[0]["generated"]
    assert document["positions"][5]["candidates"][0]["id"] == int(trace.outputs["next_ids"][5, 0])
    json.loads(to_json(document))  # valid JSON: no NaN
    assert rows_to_csv(rows).splitlines()[0].startswith("position,token,generated,probability,surprisal_nats")


def test_next_token_view_is_only_offered_with_an_lm_head():
    plain = sink_trace()
    assert not VIEWS["next-token"].available(plain) and VIEWS["next-token"].available(reference_trace())
    assert "Next token" not in view_tabs(plain) and "Next token" in view_tabs(reference_trace())
    with pytest.raises(ViewError, match="needs a model that predicts the next token"):
        build_view(plain, "next-token")


def test_merged_words_keep_the_predictions():
    trace = reference_trace("unicode")
    merged = merge_words(trace)
    starts = word_starts(trace)
    last = np.append(starts[1:], trace.num_tokens) - 1
    assert merged.outputs["next_ids"].tolist() == trace.outputs["next_ids"][last].tolist()
    logprob = trace.outputs["next_logprob"].astype(np.float64)
    assert merged.outputs["next_logprob"][0] == approx_f32(logprob[last[0]:last[1]].sum())
    assert np.isnan(merged.outputs["next_logprob"][-1])
    build_next_token_view(merged)
    generated = reference_trace()
    words = merge_words(generated)
    starts = word_starts(generated)
    assert words.generated.tolist() == np.logical_or.reduceat(generated.generated, starts).tolist()
    assert "Ġ" not in "".join(words.vocab_tokens) and words.token_style == ""  # candidates as plain text too


def test_cli_writes_the_next_token_numbers(tmp_path):
    trace = reference_trace()
    saved = trace.save(tmp_path / "llama.npz")
    written = cli.run(["--trace", str(saved), "--view", "next-token", "-o", str(tmp_path / "next.csv")])
    rows = list(csv.DictReader(written.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == trace.num_tokens and float(rows[3]["p_1"]) == approx_f32(trace.outputs["next_probs"][3, 0])
    page = cli.run(["--trace", str(saved), "--view", "next-token", "--query", "3", "-o", str(tmp_path / "n.html")])
    assert "Plotly.newPlot" in page.read_text(encoding="utf-8")
    document = json.loads(cli.run(["--trace", str(saved), "--view", "next-token", "-o",
                                   str(tmp_path / "next.json")]).read_text(encoding="utf-8"))
    assert document["kind"] == "NextToken" and document["units"] == "nats"
    plain = sink_trace().save(tmp_path / "plain.npz")
    with pytest.raises(ExportError, match="needs a model that predicts the next token"):
        cli.run(["--trace", str(plain), "--view", "next-token", "-o", str(tmp_path / "plain.csv")])


# ---------------------------------------------------------------------------------------------------------------
# The logit lens


def numpy_lens(trace: EncoderTrace, positions: np.ndarray, folder: Path = LLAMA) -> tuple[np.ndarray, np.ndarray]:
    """The lens computed here in float64 from the checkpoint's own weights: RMSNorm (the config's eps; Gemma's
    scales by 1 + w) with ``model.norm.weight`` on hidden[0..L-1], none on hidden[L], then ``lm_head.weight`` (or the
    token embeddings when they are tied) and Gemma 2's final soft-cap; (ids, probs) (L + 1, W, 10)."""
    weights = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    norm = weights["model.norm.weight"].astype(np.float64) + (1.0 if config["model_type"].startswith("gemma") else 0.0)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"]).astype(np.float64)
    streams = trace.hidden[:, positions].astype(np.float64)  # (L + 1, W, D)
    normed = streams[:-1] / np.sqrt((streams[:-1] ** 2).mean(-1, keepdims=True) + config["rms_norm_eps"]) * norm
    logits = np.concatenate([normed, streams[-1:]]) @ head.T  # (L + 1, W, V)
    cap = config.get("final_logit_softcapping")
    if cap:
        logits = np.tanh(logits / cap) * cap
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[..., :10]
    return ids.astype(np.int32), np.take_along_axis(probs, ids, -1)


def reference_lens(trace: EncoderTrace) -> LogitLens:
    positions = lens_window(trace)
    ids, probs = numpy_lens(trace, positions)
    texts = trace.vocab_text(ids) if np.isin(ids, trace.vocab_ids).all() else ids.astype(str)
    following = np.append(trace.token_ids[positions[1:]], -1).astype(np.int32)
    return LogitLens(positions, ids, probs.astype(np.float32), np.asarray(texts).tolist(), following)


def test_logit_lens_figure():
    trace = reference_trace()
    lens = reference_lens(trace)
    assert lens.ids[-1, :, 0].tolist() == trace.outputs["next_ids"][:, 0].tolist()  # the model's own output row
    fig = build_logit_lens(lens, trace)
    heatmap = fig.data[0]
    assert heatmap.name == "lens" and np.asarray(heatmap.z).shape == (3, trace.num_tokens)
    assert_close_f32(heatmap.z, lens.probs[:, :, 0], ulps=0)
    assert list(fig.layout.yaxis.ticktext) == ["embeddings", "after layer 0", "after layer 1 (output)"]
    generated = np.flatnonzero(trace.generated)  # greedy: the output row predicted each generated token
    assert all(heatmap.text[2][j - 1].startswith("<b>") for j in generated)
    # Generated tokens are in italics on the position axis, and the subtitle says so.
    assert [str(t).startswith("<i>") for t in fig.layout.xaxis.ticktext] == trace.generated.tolist()
    assert GENERATED_NOTE in fig.layout.title.subtitle.text
    assert "3. " in heatmap.hovertext[1][4] and "10. " in heatmap.hovertext[1][4]
    last_prompt = generated[0] - 1  # the output row's top candidate there is the first generated token
    assert f"1. {display_token(lens.texts[2][last_prompt][0])}: {percent(lens.probs[2, last_prompt, 0])} (follows)" \
        in heatmap.hovertext[2][last_prompt]
    rows = lens.rows()
    assert len(rows) == 3 * trace.num_tokens * 10 and rows[0] == {
        "layer": 0, "position": 0, "rank": 1, "candidate": lens.texts[0][0][0], "id": int(lens.ids[0, 0, 0]),
        "probability": float(lens.probs[0, 0, 0])}


def test_logit_lens_window_is_bounded():
    trace = synthetic_trace([f"w{i}" for i in range(LENS_WINDOW + 12)])
    assert lens_window(trace).tolist() == list(range(12, LENS_WINDOW + 12))
    assert lens_window(trace, until=20).tolist() == list(range(0, 21))
    with pytest.raises(ViewError, match="until 99 is out of range: the text has 60 tokens"):
        lens_window(trace, until=99)
    assert lens_limit(trace) == ANALYSES["lens"].limit(trace) and "needs a model that predicts" in lens_limit(trace)
    assert lens_limit(reference_trace()) is None


@pytest.fixture(scope="module")
def llama():
    return load_path(LLAMA)


def test_logit_lens_of_the_llama_fixture(llama):
    """End to end: Headlight's llama, its trace and ``CompiledEncoder.lens_top_k``, against the lens computed from
    the checkpoint in NumPy; the last row is the model's own prediction."""
    text = str(np.load(LLAMA / "reference.npz")["joined/text"])
    trace = trace_text(llama, text)
    assert trace.key_value_heads == 2 and trace.has_lm_head
    lens = ANALYSES["lens"].compute(TraceInputs(trace, llama), {})
    assert lens.ids[-1, :, 0].tolist() == trace.outputs["next_ids"][:, 0].tolist()
    ids, probs = numpy_lens(trace, lens.positions)
    assert_close_f32(lens.probs, probs, ulps=84)  # 84 float32 units: 1e-5, the bound of the issue
    clear = probs[..., 0] - probs[..., 1] > 2e-5  # the top two differ by more than twice the tolerance
    assert (lens.ids[..., 0][clear] == ids[..., 0][clear]).all() and clear.mean() > 0.5
    figures = ANALYSES["lens"].figures(lens, trace, {})
    assert figures[0][0] == "lens"
    short = ANALYSES["lens"].compute(TraceInputs(trace, llama), {"until": 5})
    assert short.positions.tolist() == list(range(6)) and (short.ids == lens.ids[:, :6]).all()


def test_logit_lens_exports_with_control_byte_candidates(llama, image_browser):
    """The llama fixture's lens of this text has control bytes (its byte-fallback pieces "<0x01>", ... read as
    "\\x01") among its top candidates: drawn as bytes, the figure exports (raw, they made the export fail)."""
    trace = trace_text(llama, "The cat sat on the mat because it was tired.")
    lens = logit_lens(llama, trace)
    assert any(ord(c) < 32 for row in lens.texts for cell in row for c in cell[0])  # the text covers it
    fig = build_logit_lens(lens, trace)
    assert not any(ord(c) < 32 for row in fig.data[0].text for cell in row for c in cell)
    assert figure_to_bytes(fig, "svg").startswith(b"<svg")


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def test_logit_lens_of_other_decoder_fixtures(family):
    """Untied (mistral, phi3) and tied (qwen2, qwen3, gemma2, gemma3) LM heads, Gemma's (1 + w) norm and Gemma 2's
    final soft-cap: the lens against NumPy, the last row the model's own prediction."""
    folder = FIXTURES / "families" / family
    model = load_path(folder)
    trace = trace_text(model, str(np.load(folder / "reference.npz")["simple/text"]))
    lens = logit_lens(model, trace)
    assert lens.ids[-1, :, 0].tolist() == trace.outputs["next_ids"][:, 0].tolist()
    ids, probs = numpy_lens(trace, lens.positions, folder)
    assert_close_f32(lens.probs, probs, ulps=84)  # 1e-5
    clear = probs[..., 0] - probs[..., 1] > 2e-5
    assert (lens.ids[..., 0][clear] == ids[..., 0][clear]).all()


def test_decoder_views_of_the_llama_fixture(llama):
    """The views and the report card on a real decoder trace: grouped heads, next-token candidates as text."""
    trace = trace_text(llama, "The cat sat on the mat because it was warm.")
    assert head_label(trace, 3) == "head 3 (kv 1)"
    fig = build_view(trace, "next-token", query=3)
    assert next(t for t in fig.data if t.name == "candidates").customdata[:, 0].tolist() == \
        trace.outputs["next_ids"][3].tolist()
    report = head_report(trace)
    assert [row["kv_head"] for row in report.rows()[:4]] == [0, 0, 1, 1]
    assert build_view(trace, "model", sinks=True).data


def test_generated_tokens_are_marked_where_tokens_are_drawn():
    trace = reference_trace()
    strip = build_view(trace, "tokens", layer=1, heads=[0], query=0, direction="to")  # every token sees token 0
    bars = next(t for t in strip.data if t.name == "tokens")
    assert [str(text).startswith("<i>") for text in bars.text] == trace.generated.tolist()
    assert GENERATED_NOTE in strip.layout.title.subtitle.text
    heatmap = build_view(trace, "heatmap", layer=0, head=1)
    ticks = list(heatmap.layout.xaxis.ticktext)
    assert [t.startswith("<i>") for t in ticks] == trace.generated.tolist()
    assert GENERATED_NOTE in heatmap.layout.title.subtitle.text
    grid = build_view(trace, "head-grid", layer=0)
    assert [t.startswith("<i>") for t in grid.layout.yaxis.ticktext] == trace.generated.tolist()
    assert GENERATED_NOTE in grid.layout.title.subtitle.text
    lines = build_view(trace, "lines", layer=0)
    assert any(str(t).startswith("<i>") for t in next(t for t in lines.data if t.name == "tokens").text)
    plain = reference_trace("simple")
    assert not any(t.startswith("<i>") for t in build_view(plain, "heatmap").layout.xaxis.ticktext)


def test_cli_writes_the_logit_lens(tmp_path):
    written = cli.run(["--model", str(LLAMA), "--text", "The cat sat on the mat.", "--view", "lens", "--until", "3",
                       "-o", str(tmp_path / "lens.csv")])
    rows = list(csv.DictReader(written.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 3 * 4 * 10 and rows[0].keys() == {"layer", "position", "rank", "candidate", "id",
                                                           "probability"}
    assert {int(row["position"]) for row in rows} == {0, 1, 2, 3}
    page = cli.run(["--model", str(LLAMA), "--text", "The cat sat on the mat.", "--view", "lens", "-o",
                    str(tmp_path / "lens.html")]).read_text(encoding="utf-8")
    assert "Logit lens: the top next-token candidate of each layer" in page
