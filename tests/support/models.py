"""Tiny models for fast checks: an EncoderConfig and a complete Hugging Face BERT folder with random weights."""

import json
from pathlib import Path

import numpy as np

from encoder.config import EncoderConfig


def tiny_config(**overrides) -> EncoderConfig:
    values = dict(vocab_size=40, num_layers=2, num_heads=2, d_model=8, dff=16, max_positions=32, dropout=0.0)
    values.update(overrides)
    return EncoderConfig(**values)


def write_tiny_bert_folder(folder: Path, seed: int = 0, **config_overrides) -> Path:
    """A small but complete Hugging Face BERT folder (config.json, model.safetensors, vocab.txt), random weights."""
    from safetensors.numpy import save_file

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog", "##s", "."]
    hf = dict(model_type="bert", vocab_size=len(vocab), hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=16, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu",
              layer_norm_eps=1e-12, pad_token_id=0)
    hf.update(config_overrides)
    rng = np.random.default_rng(seed)
    d, f = hf["hidden_size"], hf["intermediate_size"]

    def r(*shape):
        return rng.normal(0, 0.5, shape).astype(np.float32)

    weights = {
        "embeddings.word_embeddings.weight": r(hf["vocab_size"], d),
        "embeddings.position_embeddings.weight": r(hf["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": r(hf["type_vocab_size"], d),
        "embeddings.LayerNorm.weight": 1 + r(d), "embeddings.LayerNorm.bias": r(d),
    }
    for i in range(hf["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            weights[f"{p}attention.self.{name}.weight"] = r(d, d)
            weights[f"{p}attention.self.{name}.bias"] = r(d)
        weights.update({
            f"{p}attention.output.dense.weight": r(d, d), f"{p}attention.output.dense.bias": r(d),
            f"{p}attention.output.LayerNorm.weight": 1 + r(d), f"{p}attention.output.LayerNorm.bias": r(d),
            f"{p}intermediate.dense.weight": r(f, d), f"{p}intermediate.dense.bias": r(f),
            f"{p}output.dense.weight": r(d, f), f"{p}output.dense.bias": r(d),
            f"{p}output.LayerNorm.weight": 1 + r(d), f"{p}output.LayerNorm.bias": r(d),
        })
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def tiny_loaded_model(tokenizer_folder: Path, name: str = "tiny", **overrides):
    """A LoadedModel of random ``tiny_config(**overrides)`` weights (vocabulary 1500) with the tokenizer of
    ``tokenizer_folder`` (a family fixture), e.g. ``causal=True`` with GPT-2's byte-level BPE."""
    from encoder.compiled import CompiledEncoder
    from encoder.model import TransformerEncoder
    from encoder.sources import LoadedModel
    from encoder.tokenizer import TextTokenizer

    config = tiny_config(**{"vocab_size": 1500, **overrides})
    tokenizer = TextTokenizer.from_folder(tokenizer_folder, config.max_positions)
    return LoadedModel(name, "a tiny random model", CompiledEncoder(TransformerEncoder(config)), tokenizer)
