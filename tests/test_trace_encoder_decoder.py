"""The encoder-decoder fields of ``EncoderTrace`` (the decoder's tokens, causal self-attention, cross-attention and
hidden states): built from transformers' own T5 and BART outputs (tests/fixtures/families/{t5,bart}/reference.npz),
checked on construction, picked by kind, saved to NPZ and JSON and read back unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.errors import ExportError, InputError
from encoder.trace import EncoderTrace
from encoder.trace_io import trace_from_json, trace_from_npz, trace_to_json, trace_to_npz
from tests.support.encoder_decoder import reference_trace


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_kinds_pick_each_attention(family):
    trace = reference_trace(family)
    assert trace.is_encoder_decoder and trace.attention_kinds == ("encoder", "decoder", "cross")
    source, target = trace.num_tokens, len(trace.decoder_tokens)
    assert trace.attention_of("encoder").shape[2:] == (source, source)
    assert trace.attention_of("decoder").shape[2:] == (target, target)
    assert trace.attention_of("cross").shape[2:] == (target, source)  # decoder tokens down, encoder tokens across
    decoder = trace.decoder_trace()
    assert decoder.tokens == trace.decoder_tokens and not decoder.is_encoder_decoder
    np.testing.assert_array_equal(decoder.attention, trace.decoder_attention)
    assert np.all(decoder.attention[:, :, ~decoder.visible[0]] == 0)  # causal: nothing above the diagonal


def test_single_stack_trace_has_only_encoder_attention():
    trace = reference_trace()
    plain = EncoderTrace(model="m", tokens=trace.tokens, token_ids=trace.token_ids, segment_ids=trace.segment_ids,
                         special=trace.special, attention=trace.attention, positional=trace.positional,
                         positional_table=trace.positional_table, hidden=trace.hidden)
    assert plain.attention_kinds == ("encoder",)
    with pytest.raises(InputError, match="no 'cross' attention"):
        plain.attention_of("cross")
    with pytest.raises(InputError, match="no decoder"):
        plain.decoder_trace()


def test_fields_are_all_or_none_and_shapes_agree():
    trace = reference_trace()
    with pytest.raises(ValueError, match="missing: cross_attention"):
        trace.replace(cross_attention=None)
    with pytest.raises(ValueError, match="cross_attention has shape"):
        trace.replace(cross_attention=trace.cross_attention[..., :-1])  # one encoder token short
    with pytest.raises(ValueError, match="decoder_hidden has shape"):
        trace.replace(decoder_hidden=trace.decoder_hidden[:-1])


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_npz_and_json_round_trip(family):
    trace = reference_trace(family, "unicode")
    for back in (trace_from_npz(trace_to_npz(trace)), trace_from_json(trace_to_json(trace))):
        assert back.target == trace.target and back.decoder_tokens == trace.decoder_tokens
        for name in ("decoder_token_ids", "decoder_special", "decoder_attention", "cross_attention",
                     "decoder_hidden"):
            np.testing.assert_allclose(getattr(back, name), getattr(trace, name), rtol=0, atol=0)
            assert getattr(back, name).dtype == getattr(trace, name).dtype


def test_a_file_with_half_a_decoder_is_refused():
    trace = reference_trace()
    text = trace_to_json(trace).replace('"cross_attention"', '"cross_attention_"')
    with pytest.raises(ExportError, match="not a valid trace"):
        trace_from_json(text)
