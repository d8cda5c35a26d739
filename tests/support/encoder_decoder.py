"""Encoder-decoder traces without a model: transformers' own T5 and BART outputs
(tests/fixtures/families/{t5,bart}/reference.npz) as an ``EncoderTrace``."""

from __future__ import annotations

import numpy as np

from encoder.trace import EncoderTrace
from tests.support.families import FAMILIES_DIR

STYLES = {"t5": "metaspace", "bart": "bytelevel"}  # how each family's tokenizer marks words
SPECIAL = frozenset({"<s>", "</s>", "<pad>"})


def reference_trace(family: str = "t5", case: str = "simple") -> EncoderTrace:
    """A trace holding exactly the reference's arrays of one case (no model run): the encoder's tokens (source,
    T), the decoder's (target, Td, its start token first), attention of every kind; special tokens marked."""
    with np.load(FAMILIES_DIR / family / "reference.npz") as data:
        ref = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith(f"{case}/")}
    tokens, decoder_tokens = ref["tokens"].tolist(), ref["decoder_tokens"].tolist()
    n, width = len(tokens), ref["encoder_hidden_states"].shape[-1]
    return EncoderTrace(
        model=family, tokens=tuple(tokens), token_ids=ref["input_ids"].astype(np.int32),
        segment_ids=np.zeros(n, np.int32), special=np.isin(tokens, list(SPECIAL)),
        attention=ref["encoder_attention"], positional=np.zeros((n, width), np.float32),
        positional_table=np.zeros((1, width), np.float32), hidden=ref["encoder_hidden_states"],
        text=str(ref["text"]), target=str(ref["target"]), decoder_tokens=tuple(decoder_tokens),
        decoder_token_ids=ref["decoder_input_ids"].astype(np.int32),
        decoder_special=np.isin(decoder_tokens, list(SPECIAL)),
        decoder_attention=ref["decoder_attention"], cross_attention=ref["cross_attention"],
        decoder_hidden=ref["decoder_hidden_states"], token_style=STYLES.get(family, ""),
    )
