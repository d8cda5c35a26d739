"""Long traces against transformers (issue 22): at 4,096 tokens a lazily kept head's whole (T, T) attention,
materialised, equals the weights of Hugging Face ``transformers``' eager attention (PyTorch) within float32
rounding, for a few (layer, head) pairs drawn at random.

Two tiny random models made here by transformers and opened by Headlight as folders: a Llama decoder (grouped-query
attention, rotary, causal) and a ModernBERT encoder (a global layer and a windowed one, rotary), each with 4,096
positions and widths of 32, so that transformers' ``output_attentions`` (every L x H x T x T float32 weight) stays
at 2 x 4 x 64 MB = 0.5 GB. The pairs come from a fresh seed each run, named in any failure message; set
``HEADLIGHT_TEST_SEED`` to draw the same pairs again."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from bench.encoder import TEXT
from encoder.attention_store import LazyAttention
from tests.support.families import FAMILIES_DIR, TOLERANCE
from tests.support.floats import F32_EPS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

TOKENS = 4096
PAIRS = 3  # (layer, head) pairs compared per model
# Weights within the families' bar against transformers (``TOLERANCE``, 1e-5: 84 float32 units of 1, the largest
# weight): the two sides compute the same logits with float32 sums in another order (our row blocks against one
# (T, T) product), after hidden states that already differ by rounding (up to 5e-6 on ModernBERT's, which reach 8.6
# in size), and normalise rows of up to 4,096 weights. Measured: 2.4e-7 (2 units, decoder), 1.8e-6 (15, encoder).
# A row of the materialised map, summed in float64, is 1 within 16 units: its weights are exp(logits) over their
# float32 sum of up to 4,096 terms, which the vectorised reduction rounds about log2(4,096) = 12 times (at most half a
# unit each), and each weight is rounded once more (half a unit over the row). Measured: at most 3.2 units.
ROW_SUM_ULPS = 16
SHAPES = {
    "llama": dict(vocab_size=1500, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=TOKENS, initializer_range=0.15,
                  bos_token_id=1495, eos_token_id=1496, rope_parameters={"rope_type": "default",
                                                                       "rope_theta": 10000.0}),
    "modernbert": dict(vocab_size=1500, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=TOKENS, initializer_range=0.3,
                       global_attn_every_n_layers=2, local_attention=128, pad_token_id=1498, cls_token_id=1496,
                       sep_token_id=1497, bos_token_id=1496, eos_token_id=1497),
}
CLASSES = {"llama": ("LlamaConfig", "AutoModelForCausalLM"), "modernbert": ("ModernBertConfig", "AutoModel")}


def make_folder(family: str, folder):
    """A random transformers model of ``family``'s ``SHAPES`` (seeded), saved by ``save_pretrained`` in ``folder``
    with the family fixture's tokenizer (vocabulary 1,500); returns the model, eager attention, in eval mode."""
    transformers.logging.set_verbosity_error()
    config_class, model_class = (getattr(transformers, name) for name in CLASSES[family])
    torch.manual_seed(22)
    model = model_class.from_config(config_class(**SHAPES[family]), attn_implementation="eager").eval()
    model.save_pretrained(folder)
    shutil.copyfile(FAMILIES_DIR / family / "tokenizer.json", folder / "tokenizer.json")
    return model


def drawn_pairs(layers: int, heads: int) -> tuple[int, list[tuple[int, int]]]:
    """(seed, ``PAIRS`` distinct (layer, head) pairs drawn with it): the seed from ``HEADLIGHT_TEST_SEED``, else
    fresh."""
    seed = int(os.environ.get("HEADLIGHT_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    flat = np.random.default_rng(seed).choice(layers * heads, size=min(PAIRS, layers * heads), replace=False)
    return seed, [divmod(int(index), heads) for index in flat]


@pytest.mark.parametrize("family", sorted(SHAPES))
def test_a_long_traces_heads_equal_transformers_eager_attention(family, tmp_path):
    from encoder.sources import load_path
    from encoder.trace import trace_text

    theirs = make_folder(family, tmp_path)
    trace = trace_text(load_path(tmp_path, name=family), TEXT * 200, max_tokens=TOKENS, lazy=True)
    assert isinstance(trace.attention, LazyAttention) and trace.num_tokens == TOKENS
    with torch.no_grad():
        expected = theirs(torch.tensor(trace.token_ids[None].astype(np.int64)), output_attentions=True).attentions
    assert len(expected) == trace.num_layers and expected[0].shape == (1, trace.num_heads, TOKENS, TOKENS)
    seed, pairs = drawn_pairs(trace.num_layers, trace.num_heads)
    for layer, head in pairs:
        where = f"{family} layer {layer} head {head} (HEADLIGHT_TEST_SEED={seed})"
        ours, reference = trace.attention[layer, head], expected[layer][0, head].numpy()  # (T, T) each
        np.testing.assert_allclose(ours, reference, rtol=0, atol=TOLERANCE, err_msg=where)
        np.testing.assert_allclose(ours.sum(axis=1, dtype=np.float64), 1.0, rtol=0, atol=ROW_SUM_ULPS * F32_EPS,
                                   err_msg=where)
        np.testing.assert_array_equal(ours == 0, reference == 0, err_msg=f"{where}: masked keys")
        assert reference.max() > 0.25, where  # far from uniform (1 / T): weights a wrong rotation would move
    if family == "modernbert":  # its second layer is windowed: 64 keys on each side at most
        assert np.count_nonzero(trace.attention[1, 0][TOKENS // 2]) == 129
