"""Trace files: golden names (fields, NPZ keys, JSON keys), exact NPZ/JSON/CSV round trips, and clear errors."""

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from encoder.errors import ExportError
from encoder.trace import EncoderTrace, trace_text
from encoder.trace_io import (
    CSV_HEADER,
    attention_from_csv,
    load_npz,
    save_npz,
    trace_from_json,
    trace_from_npz,
    trace_to_csv,
    trace_to_json,
    trace_to_npz,
    write_attention_csv,
)
from tests.support.traces import assert_same_trace, synthetic_trace

TEXT = "The cat sat on the mat because the cat was tired."
RENAMED = ("Saved NPZ and JSON traces and the README use these names: a rename breaks every file already written. "
           "Keep the old name, or teach encoder/trace_fields.py to read it, then update this golden list.")

FIELDS = ("model", "tokens", "token_ids", "segment_ids", "special", "attention", "positional", "positional_table",
          "hidden", "outputs", "text", "pair", "truncated", "untruncated_length", "labels", "words", "visible",
          "token_style", "logit_terms", "position_scheme", "generated", "vocab_ids", "vocab_tokens", "key_value_heads",
          "target", "decoder_tokens", "decoder_token_ids", "decoder_special", "decoder_attention", "cross_attention",
          "decoder_hidden")
NPZ_KEYS = {"model", "tokens", "token_ids", "segment_ids", "special", "attention", "positional", "positional_table",
            "hidden", "outputs/probabilities", "outputs/embedding", "text", "pair", "has_pair", "truncated",
            "untruncated_length", "labels", "words", "visible", "token_style", "logit_terms/content",
            "logit_terms/position", "position_scheme/bias_by_distance", "vocab_tokens", "key_value_heads",
            "target", "has_target", "decoder_tokens"}
LM_NPZ_KEYS = {"outputs/next_ids", "outputs/next_probs", "outputs/next_logprob", "outputs/step_ids",
               "outputs/step_probs", "generated", "vocab_ids"}
JSON_KEYS = {"format", "version", "shapes", "dtypes", "model", "tokens", "token_ids", "segment_ids", "special",
             "attention", "positional", "positional_table", "hidden", "outputs", "text", "pair", "truncated",
             "untruncated_length", "labels", "words", "visible", "token_style", "logit_terms", "position_scheme",
             "vocab_tokens", "key_value_heads", "target", "decoder_tokens"}
LM_JSON_KEYS = {"generated", "vocab_ids"}
OPTIONAL_ARRAYS = {"words", "visible"}  # None: no NPZ entry, no JSON key (also generated and vocab_ids)

# A file as trace_to_json wrote it before the writer iterated over the fields (another key order): it must load.
OLD_JSON = (
    '{"format":"headlight-trace","version":1,"model":"synthetic","text":"[CLS] -","pair":"B","truncated":false,'
    '"untruncated_length":0,"labels":["neg","pos"],"tokens":["[CLS]","-"],"shapes":{"layers":1,"heads":1,'
    '"tokens":2},"token_ids":[0, 1],"segment_ids":[0, 0],"special":[true, false],"dtypes":{"probabilities":'
    '"float32"},"attention":[[[[0.75,0.25],[0.5,0.5]]]],"positional":[[0.5,-1.25],[0.1,0.2]],"positional_table":'
    '[[0.5,-1.25],[0.1,0.2],[0.3,0.4]],"hidden":[[[-0.54,0.36],[1.3,0.95]],[[-0.7,-1.27],[-0.62,0.04]]],'
    '"outputs":{"probabilities":[0.25,0.75]}}'
)


def full_trace() -> EncoderTrace:
    """A synthetic trace using every field: a pair, outputs of two dtypes, labels, truncation, words, a causal
    mask, a token style."""
    trace = synthetic_trace(["[CLS]", "=SUM(A1)", "-", "a,b", '"q"', "[SEP]", "b", "[SEP]"], layers=2, heads=3,
                            segment_ids=[0, 0, 0, 0, 0, 0, 1, 1], words=[-1, 0, 1, 1, 2, -1, 3, -1],
                            visible="causal", token_style="wordpiece")
    outputs = {"probabilities": np.array([0.25, 0.75], np.float32), "embedding": np.arange(4) / np.float64(3)}
    rng = np.random.default_rng(1)
    terms = {"content": rng.normal(size=trace.attention.shape).astype(np.float32),
             "position": rng.normal(size=trace.attention.shape).astype(np.float32)}
    scheme = {"bias_by_distance": rng.normal(size=(3, 9)).astype(np.float32)}
    return trace.replace(outputs=outputs, pair="b", labels=("neg", "pos"), truncated=True, untruncated_length=9,
                         logit_terms=terms, position_scheme=scheme)


def generated_trace() -> EncoderTrace:
    """A synthetic causal trace of a decoder's generation: 5 prompt tokens and 3 generated ones, the LM head's
    outputs (next_logprob NaN at the last position), each step's candidates, the candidates' vocabulary and 2
    key/value heads for 4 heads."""
    tokens = ["<s>", "▁The", "▁cat", "▁sat", "▁on", "▁the", "▁mat", "."]
    trace = synthetic_trace(tokens, layers=2, heads=4, visible="causal", token_style="metaspace")
    rng = np.random.default_rng(2)
    count, k = len(tokens), 3
    next_ids = np.stack([rng.permutation(40)[:k] for _ in range(count)]).astype(np.int32)
    next_probs = np.sort(rng.dirichlet(np.ones(k + 2), size=count)[:, :k], axis=1)[:, ::-1].astype(np.float32)
    logprob = np.log(rng.uniform(0.01, 1.0, count)).astype(np.float32)
    logprob[-1] = np.nan
    generated = np.arange(count) >= 5
    outputs = {"next_ids": next_ids, "next_probs": np.ascontiguousarray(next_probs), "next_logprob": logprob,
               "step_ids": next_ids[4:7].copy(), "step_probs": next_probs[4:7].copy()}
    vocab = np.unique(next_ids).astype(np.int32)
    return trace.replace(outputs=outputs, generated=generated, vocab_ids=vocab,
                         vocab_tokens=tuple(f"▁w{i}" for i in vocab.tolist()), key_value_heads=2)


@pytest.fixture(scope="module")
def trace(minilm):
    return trace_text(minilm, TEXT)


# --- golden names ----------------------------------------------------------------------------------------------


def test_golden_field_names():
    names = tuple(field.name for field in dataclasses.fields(EncoderTrace))
    assert names == FIELDS, f"EncoderTrace fields changed from {FIELDS} to {names}. {RENAMED}"


def test_golden_npz_keys():
    keys = set(np.load(io.BytesIO(trace_to_npz(full_trace()))).files)
    assert keys == NPZ_KEYS, f"NPZ keys changed: added {keys - NPZ_KEYS}, removed {NPZ_KEYS - keys}. {RENAMED}"


def test_golden_json_keys():
    keys = set(json.loads(trace_to_json(full_trace())))
    assert keys == JSON_KEYS, f"JSON keys changed: added {keys - JSON_KEYS}, removed {JSON_KEYS - keys}. {RENAMED}"


def test_golden_keys_of_a_generated_trace():
    trace = generated_trace()
    keys = set(np.load(io.BytesIO(trace_to_npz(trace))).files)
    expected = (NPZ_KEYS - {"outputs/probabilities", "outputs/embedding", "logit_terms/content",
                            "logit_terms/position", "position_scheme/bias_by_distance", "words"}) | LM_NPZ_KEYS
    assert keys == expected, f"added {keys - expected}, removed {expected - keys}"
    assert set(json.loads(trace_to_json(trace))) == JSON_KEYS - {"words"} | LM_JSON_KEYS


def test_a_generated_trace_round_trips_with_its_nan(tmp_path):
    trace = generated_trace()
    assert np.isnan(trace.outputs["next_logprob"][-1])
    for back in (trace_from_npz(trace_to_npz(trace)), trace_from_json(trace_to_json(trace)),
                 load_npz(save_npz(trace, tmp_path / "g.npz"))):
        assert_same_trace(back, trace)
        assert back.generated.tolist() == [False] * 5 + [True] * 3
        assert back.vocab_text(back.outputs["step_ids"][0]).tolist() == [
            f"w{i}" for i in trace.outputs["next_ids"][4].tolist()]
    assert '"next_logprob":[' in trace_to_json(trace) and ",null]" in trace_to_json(trace)


def test_an_infinite_value_is_still_refused_by_json():
    trace = generated_trace()
    logprob = trace.outputs["next_logprob"].copy()
    logprob[0] = -np.inf
    with pytest.raises(ExportError, match="infinite"):
        trace_to_json(trace.replace(outputs={**trace.outputs, "next_logprob": logprob}))


def test_old_files_have_no_generation_fields():
    back = trace_from_json(OLD_JSON)
    assert (back.generated, back.vocab_ids, back.vocab_tokens, back.key_value_heads) == (None, None, (), 0)


def test_optional_arrays_that_are_none_are_not_written_and_read_back_as_none():
    trace = full_trace().replace(words=None, visible=None)
    assert set(np.load(io.BytesIO(trace_to_npz(trace))).files) == NPZ_KEYS - OPTIONAL_ARRAYS
    assert set(json.loads(trace_to_json(trace))) == JSON_KEYS - OPTIONAL_ARRAYS
    for back in (trace_from_npz(trace_to_npz(trace)), trace_from_json(trace_to_json(trace))):
        assert back.words is None and back.visible is None
        assert_same_trace(back, trace)


def test_a_json_file_in_the_old_key_order_loads():
    back = trace_from_json(OLD_JSON)
    assert back.tokens == ("[CLS]", "-") and back.pair == "B" and back.labels == ("neg", "pos")
    assert back.attention.dtype == np.float32 and back.token_ids.dtype == np.int32 and back.special.dtype == bool
    assert back.outputs["probabilities"].tolist() == [0.25, 0.75]
    assert back.hidden[0, 1, 0] == np.float32(1.3)
    assert (back.words, back.visible, back.token_style) == (None, None, "")  # fields newer than the file
    assert json.loads(trace_to_json(back)) == {**json.loads(OLD_JSON), "token_style": "", "logit_terms": {},
                                                "position_scheme": {}, "vocab_tokens": [], "key_value_heads": 0,
                                                "target": None, "decoder_tokens": []}


# --- NPZ and JSON round trips ----------------------------------------------------------------------------------


def test_npz_round_trip_of_a_real_pair(minilm, tmp_path):
    pair = trace_text(minilm, TEXT, "A pair.")
    assert pair.outputs and pair.is_pair
    assert_same_trace(EncoderTrace.load(pair.save(tmp_path / "trace")), pair)
    assert not (tmp_path / "trace.npz").exists()  # the name is kept as given
    assert_same_trace(trace_from_npz(trace_to_npz(pair)), pair)


def test_every_format_round_trips_every_field(tmp_path):
    trace = full_trace()
    assert_same_trace(trace_from_npz(trace_to_npz(trace)), trace)
    assert_same_trace(load_npz(save_npz(trace, tmp_path / "t.npz")), trace)
    assert_same_trace(trace_from_json(trace_to_json(trace)), trace)
    unpaired = trace.replace(pair=None, outputs={}, labels=())
    assert_same_trace(trace_from_npz(trace_to_npz(unpaired)), unpaired)
    assert_same_trace(trace_from_json(trace_to_json(unpaired)), unpaired)


def test_json_round_trip_of_a_real_trace_is_exact(trace, minilm):
    assert_same_trace(trace_from_json(trace_to_json(trace)), trace)
    pair = trace_text(minilm, "A cat.", "A dog.")
    back = trace_from_json(trace_to_json(pair))
    assert back.pair == "A dog." and back.is_pair


def test_fields_with_defaults_may_be_missing_from_a_file():
    trace = full_trace()
    document = json.loads(trace_to_json(trace))
    for name in ("labels", "truncated", "untruncated_length", "pair", "text", "words", "visible", "token_style"):
        del document[name]
    back = trace_from_json(json.dumps(document))
    assert (back.labels, back.truncated, back.untruncated_length, back.pair, back.text) == ((), False, 0, None, "")
    assert (back.words, back.visible, back.token_style) == (None, None, "")
    np.testing.assert_array_equal(back.attention, trace.attention)


def test_files_that_are_not_traces_are_export_errors():
    with pytest.raises(ExportError, match="not a Headlight trace"):
        trace_from_json('{"format": "other"}')
    with pytest.raises(ExportError, match="not a JSON trace"):
        trace_from_json("{")
    with pytest.raises(ExportError, match="version 2 is not 1"):
        trace_from_json('{"format": "headlight-trace", "version": 2}')
    with pytest.raises(ExportError, match="the JSON is not a Headlight trace: it has no 'model'"):
        trace_from_json('{"format": "headlight-trace", "version": 1}')
    text = trace_to_json(full_trace())
    with pytest.raises(ExportError, match="'model' cannot be read \\(model must be str, got int\\)"):
        trace_from_json(text.replace('"model":"synthetic"', '"model":3'))
    with pytest.raises(ExportError, match=r"not a valid trace: token_ids has shape \(8,\), while 7 tokens need"):
        trace_from_json(text.replace('"tokens":["[CLS]",', '"tokens":['))
    other = io.BytesIO()
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(ExportError, match="the NPZ data is not a Headlight trace: it has no 'model'"):
        trace_from_npz(other.getvalue())
    single = io.BytesIO()
    np.save(single, np.zeros(3))
    for data in (b"", b"not an archive", trace_to_npz(full_trace())[:200], single.getvalue()):
        with pytest.raises(ExportError, match="the NPZ data is not an NPZ archive"):
            trace_from_npz(data)


def test_loading_a_file_that_is_not_a_trace_names_it(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello", encoding="utf-8")
    with pytest.raises(ExportError, match=f"{path} is not an NPZ archive"):
        EncoderTrace.load(path)


# --- CSV -------------------------------------------------------------------------------------------------------


def test_csv_long_format_round_trip(trace):
    text = trace_to_csv(trace)
    lines = text.splitlines()
    assert lines[0] == ",".join(CSV_HEADER)
    count = trace.num_tokens
    assert len(lines) == 1 + trace.num_layers * trace.num_heads * count * count
    weight = trace.attention[0, 0, 0, 2]
    assert lines[3].rsplit(",", 1)[0] == "0,0,0,[CLS],2,cat"
    assert np.float32(lines[3].rsplit(",", 1)[1]) == weight
    tokens, attention, layers, heads = attention_from_csv(text)
    assert tokens == trace.tokens
    np.testing.assert_array_equal(attention, trace.attention)
    assert layers == list(range(6)) and heads == list(range(12))


def test_csv_subset_and_quoting():
    trace = synthetic_trace(["[CLS]", 'say "hi", ok', "a,b", "[SEP]"], layers=3, heads=4)
    buffer = io.StringIO()
    rows = write_attention_csv(trace, buffer, layers=[2], heads=[1, 3])
    assert rows == 2 * 16
    tokens, attention, layers, heads = attention_from_csv(buffer.getvalue())
    assert tokens == trace.tokens
    assert layers == [2] and heads == [1, 3]
    np.testing.assert_array_equal(attention[0], trace.attention[2, [1, 3]])
    with pytest.raises(ExportError, match="CSV header is"):
        attention_from_csv("a,b\n1,2\n")


def test_csv_cells_never_start_a_formula_and_read_back_exactly():
    tokens = ["=SUM(A1:A9)", "+1", "-", "@cmd", "\tx", "\rx", "'=quoted", "''-", "'", "plain", "it's", "a-b", "a\nb"]
    trace = synthetic_trace(tokens, layers=1, heads=1)
    text = trace_to_csv(trace)
    cells = {row[3] for row in csv.reader(io.StringIO(text))} - {"query_token"}
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    assert {"'=SUM(A1:A9)", "'+1", "'-", "'@cmd", "'\tx", "'\rx", "''=quoted", "'''-"} <= cells
    assert {"'", "plain", "it's", "a-b", "a\nb"} <= cells  # nothing a spreadsheet runs: left as it is
    assert attention_from_csv(text)[0] == trace.tokens


def test_csv_layer_and_head_errors_name_the_value_and_the_range():
    trace = synthetic_trace(["[CLS]", "a", "[SEP]"], layers=6, heads=4)
    with pytest.raises(ExportError, match=r"^layer 9 is out of range: the model has 6 layers \(0-5\)$"):
        trace_to_csv(trace, layers=[9])
    with pytest.raises(ExportError, match=r"^head 4 is out of range: the model has 4 heads \(0-3\)$"):
        trace_to_csv(trace, heads=[0, 4])
    with pytest.raises(ExportError, match="layer must be an integer, got 'x'"):
        trace_to_csv(trace, layers=["x"])
    with pytest.raises(ExportError, match="lists a head twice"):
        trace_to_csv(trace, heads=[1, 1])
    with pytest.raises(ExportError, match="heads is empty"):
        trace_to_csv(trace, heads=[])
    assert attention_from_csv(trace_to_csv(trace, layers=np.int64(2), heads=3))[2:] == ([2], [3])
