"""Which attention a view shows of an encoder-decoder's trace (T5, BART): the encoder's self-attention, the decoder's
causal self-attention, or cross-attention from every decoder token (query) to every encoder token (key).

``of_kind(trace, kind)`` is what a view draws: the trace itself ("encoder"), ``trace.decoder_trace()`` ("decoder"),
or a ``CrossTrace`` ("cross"): a rectangular trace whose queries are the decoder's tokens (``query_side``) and whose
keys are the encoder's. The registry picks it once for every view (``viz.registry.build_view``) and names the kind in
the figure's title (``name_kind``). NumPy and Plotly only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import plotly.graph_objects as go

from encoder.errors import ViewError
from encoder.trace import ATTENTION_KINDS, EncoderTrace
from encoder.trace_io import write_attention_csv
from viz.layout import title_width

ENCODER, DECODER, CROSS = ATTENTION_KINDS
KIND_TITLES = {ENCODER: "Encoder", DECODER: "Decoder (causal)", CROSS: "Cross-attention (decoder → encoder)"}  # titles
KIND_NAMES = {ENCODER: "the encoder's self-attention", DECODER: "the decoder's self-attention",
              CROSS: "cross-attention"}  # in sentences
KIND_HELP = ("encoder-decoders: which attention every view shows: encoder (the source's self-attention, the "
             "default), decoder (the target's causal self-attention) or cross (decoder tokens attending to encoder "
             "tokens)")


@dataclass(frozen=True, eq=False)
class CrossTrace:
    """Cross-attention as the views read a trace: ``attention`` (Ld, H, Td, T), decoder queries down and encoder
    keys across. The token fields (``tokens``, ``readable_tokens``, ``special``, ``num_tokens``, ``segment_ids``)
    are the keys' (the encoder's); ``queries`` is the decoder's side as a trace (``query_side``). Every key is
    visible to every query (no mask); no sentence pair, no generated tokens, no shared key/value heads."""

    source: EncoderTrace

    visible = None
    generated = None
    key_value_heads = 0
    is_pair = False

    @property
    def attention(self) -> np.ndarray:
        return self.source.cross_attention

    @cached_property
    def queries(self) -> EncoderTrace:
        """The decoder's side (its tokens, as the queries)."""
        return self.source.decoder_trace()

    @property
    def model(self) -> str:
        return self.source.model

    @property
    def tokens(self) -> tuple[str, ...]:
        return self.source.tokens

    @property
    def readable_tokens(self) -> tuple[str, ...]:
        return self.source.readable_tokens

    @property
    def special(self) -> np.ndarray:
        return self.source.special

    @property
    def segment_ids(self) -> np.ndarray:
        return self.source.segment_ids

    @property
    def token_style(self) -> str:
        return self.source.token_style

    @property
    def num_tokens(self) -> int:
        return self.source.num_tokens

    @property
    def num_layers(self) -> int:
        """The decoder's layers: each has a cross-attention block."""
        return len(self.source.decoder_attention)

    @property
    def num_heads(self) -> int:
        return self.source.num_heads  # the decoder's heads: every stack has as many (EncoderTrace checks it)


def query_side(trace: EncoderTrace | CrossTrace) -> EncoderTrace:
    """The trace whose tokens are the queries (the heatmap's rows): the decoder's for cross-attention, else the
    trace itself."""
    return trace.queries if isinstance(trace, CrossTrace) else trace


def is_cross(trace: EncoderTrace | CrossTrace) -> bool:
    """Whether ``trace`` is cross-attention (queries and keys from different texts)."""
    return isinstance(trace, CrossTrace)


def check_kind(trace: EncoderTrace, kind: str) -> str:
    """``kind`` if ``trace`` holds that attention, else ViewError listing the kinds it holds."""
    if kind not in ATTENTION_KINDS:
        raise ViewError(f"attention {kind!r} is not one of {', '.join(ATTENTION_KINDS)}")
    if kind not in trace.attention_kinds:
        raise ViewError(f"this trace has no {kind} attention (not an encoder-decoder); it has: "
                        f"{', '.join(trace.attention_kinds)}")
    return kind


def of_kind(trace: EncoderTrace, kind: str = ENCODER) -> EncoderTrace | CrossTrace:
    """What a view of ``kind`` attention draws: ``trace`` (encoder), ``trace.decoder_trace()`` (decoder) or
    ``CrossTrace(trace)`` (cross). ViewError when the trace has no such attention."""
    kind = check_kind(trace, kind)
    if kind == DECODER:
        return trace.decoder_trace()
    return CrossTrace(trace) if kind == CROSS else trace


def kind_suffix(kind: str) -> str:
    """What file names add for a kind: "" for the encoder's attention, "-decoder" or "-cross" otherwise."""
    return "" if kind == ENCODER else f"-{kind}"


def name_kind(fig: go.Figure, trace: EncoderTrace, kind: str) -> go.Figure:
    """``fig`` (a view of ``trace``'s ``kind`` attention) with the kind before its title ("Cross-attention (decoder
    → encoder) · Layer 0, head 3"), in the head slider's steps too; a single stack's figure is left as it is."""
    if not trace.is_encoder_decoder:
        return fig
    prefix = KIND_TITLES[kind] + " · "
    title = prefix + (fig.layout.title.text or "")
    fig.update_layout(title_text=title)
    if fig.layout.width:
        fig.update_layout(width=title_width(title, fig.layout.width))
    for slider in fig.layout.sliders:
        for step in slider.steps:
            layout = step.args[1] if step.args and len(step.args) > 1 else None
            if isinstance(layout, dict) and "title.text" in layout:
                step.args = [step.args[0], {**layout, "title.text": prefix + layout["title.text"]}, *step.args[2:]]
    return fig


def write_kind_csv(trace: EncoderTrace, kind: str, handle, layers=None, heads=None) -> int:
    """``encoder.trace_io.write_attention_csv`` of ``trace``'s ``kind`` attention (cross-attention: decoder tokens
    as the queries, encoder tokens as the keys); returns the number of data rows."""
    shown = of_kind(trace, kind)
    return write_attention_csv(shown, handle, layers, heads, query_side(shown).tokens if is_cross(shown) else None)
