"""Checkpoints as people have them: weights stored in bfloat16 or float16, and sharded safetensors with their
index; an LM head tied to the embeddings or not.

Each copy is made here from a float32 fixture, as `save_pretrained` would write it: a bfloat16 copy reads exactly
the bfloat16 values (the 16 bits shifted up, no rounding), a float16 copy its float16 values, and a sharded copy
gives the same model as the single file it was split from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from encoder.checkpoints import INDEX
from encoder.errors import CheckpointError
from encoder.sources import load_source
from encoder.trace import trace_text
from tests.support.families import FAMILIES_DIR
from tests.support.floats import assert_close_f32

TEXT = "The cat sat on the mat because it was tired."


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """A safetensors file written byte by byte: name -> (dtype, shape, little-endian bytes)."""
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def copy_fixture(family: str, folder: Path) -> dict[str, np.ndarray]:
    """The fixture's files but its weights in ``folder``; returns the weights."""
    shutil.copytree(FAMILIES_DIR / family, folder, ignore=shutil.ignore_patterns("model.safetensors", "*.npz"))
    return load_file(str(FAMILIES_DIR / family / "model.safetensors"))


def to_bfloat16(weights: np.ndarray) -> np.ndarray:
    """The upper 16 bits of each float32 (bfloat16 by truncation), as uint16."""
    return (np.ascontiguousarray(weights, np.float32).view(np.uint32) >> 16).astype("<u2")


HALVES = {  # safetensors dtype -> (float32 -> its bytes, float32 -> the float32 of the same value)
    "BF16": (lambda w: to_bfloat16(w).tobytes(), lambda w: (to_bfloat16(w).astype(np.uint32) << 16).view(np.float32)),
    "F16": (lambda w: w.astype("<f2").tobytes(), lambda w: w.astype(np.float16).astype(np.float32)),
}


def write_half_copy(family: str, folder: Path, dtype: str) -> dict[str, np.ndarray]:
    """The fixture with its float32 weights stored as ``dtype`` (bfloat16 by truncation, float16 by rounding);
    returns the float32 weights of exactly the stored values."""
    weights = copy_fixture(family, folder)
    to_bytes, rounded = HALVES[dtype]
    write_safetensors(folder / "model.safetensors", {
        name: (dtype, w.shape, to_bytes(w)) if w.dtype == np.float32 else ("I64", w.shape, w.astype("<i8").tobytes())
        for name, w in weights.items()})
    return {name: rounded(w) if w.dtype == np.float32 else w for name, w in weights.items()}


@pytest.mark.parametrize(("family", "dtype"), [("gpt2", "BF16"), ("bert-cls", "BF16"), ("llama", "BF16"),
                                               ("gpt2", "F16"), ("llama", "F16")])
def test_a_half_precision_checkpoint_reads_exactly_its_values(family, dtype, tmp_path):
    values = write_half_copy(family, tmp_path / "half", dtype)
    assert all(np.isfinite(w).all() for w in values.values())
    copy_fixture(family, tmp_path / "f32")
    save_file(values, str(tmp_path / "f32" / "model.safetensors"))  # the same values, stored as float32

    half, f32 = load_source(str(tmp_path / "half")), load_source(str(tmp_path / "f32"))
    for ours, theirs in zip(half.model.weights, f32.model.weights, strict=True):
        assert ours.path == theirs.path
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())  # a copy of the same bits: exact by construction
    a, b = trace_text(half, TEXT), trace_text(f32, TEXT)
    assert_close_f32(a.attention, b.attention, ulps=0)
    assert_close_f32(a.hidden, b.hidden, ulps=0)
    for name in a.outputs:
        assert_close_f32(a.outputs[name], b.outputs[name], ulps=0)
    original = trace_text(load_source(str(FAMILIES_DIR / family)), TEXT)
    assert np.abs(a.attention - original.attention).max() > 0  # the half type really dropped bits


def shard(weights: dict[str, np.ndarray], folder: Path, shards: int = 2) -> dict[str, str]:
    """Split ``weights`` into ``shards`` files named as transformers names them, with the index; the weight map."""
    names = sorted(weights)
    weight_map = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        part = names[index::shards]
        save_file({name: weights[name] for name in part}, str(folder / file))
        weight_map.update(dict.fromkeys(part, file))
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return weight_map


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_sharded_checkpoint_gives_the_model_of_its_single_file(family, tmp_path):
    folder = tmp_path / "sharded"
    shard(copy_fixture(family, folder), folder, shards=3)
    sharded, single = load_source(str(folder)), load_source(str(FAMILIES_DIR / family))
    for ours, theirs in zip(sharded.model.weights, single.model.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())  # the same stored bits
    a, b = trace_text(sharded, TEXT), trace_text(single, TEXT)
    assert_close_f32(a.attention, b.attention, ulps=0)
    assert_close_f32(a.hidden, b.hidden, ulps=0)
    for name in a.outputs:
        assert_close_f32(a.outputs[name], b.outputs[name], ulps=0)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: {name: "../model.safetensors" for name in m}, "not a valid index"),
    (lambda m: {name: "/etc/passwd" for name in m}, "not a valid index"),
    (lambda m: {**m, "h.0.attn.c_attn.weight": "model-00003-of-00003.safetensors"}, "which the folder lacks"),
    (lambda m: {**m, "no.such.tensor": next(iter(m.values()))}, "not a valid index"),
    (lambda m: {}, "not a valid index"),
])
def test_a_damaged_or_hostile_index_is_refused_without_reading_outside_the_folder(tmp_path, edit, message):
    folder = tmp_path / "sharded"
    weight_map = shard(copy_fixture("gpt2", folder), folder)
    (folder / INDEX).write_text(json.dumps({"weight_map": edit(weight_map)}))
    with pytest.raises(CheckpointError, match=message) as refused:
        load_source(str(folder))
    assert str(tmp_path) not in str(refused.value)


def test_a_bfloat16_file_cut_short_is_refused_from_its_header(tmp_path):
    weights = copy_fixture("gpt2", tmp_path / "m")
    write_safetensors(tmp_path / "m" / "model.safetensors", {
        name: ("BF16", w.shape, to_bfloat16(w).tobytes()) for name, w in weights.items()})
    path = tmp_path / "m" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(CheckpointError, match="header is damaged or the file is cut short"):
        load_source(str(tmp_path / "m"))


def lm_logits(loaded, hidden: np.ndarray) -> np.ndarray:
    """The model's LM head on a last hidden state (T, D) -> (T, V)."""
    return np.asarray(loaded.model.lm_logits(hidden[None]))[0]


def test_an_untied_and_a_tied_lm_head_both_load():
    """llama keeps its own lm_head.weight; qwen2 has none (tie_word_embeddings): the logits are the last hidden
    state times that head, or times the token embedding."""
    for family, head in (("llama", "lm_head.weight"), ("qwen2", "model.embed_tokens.weight")):
        loaded = load_source(str(FAMILIES_DIR / family))
        weights = load_file(str(FAMILIES_DIR / family / "model.safetensors"))
        assert ("lm_head.weight" in weights) == (family == "llama")
        hidden = trace_text(loaded, TEXT).hidden[-1]
        assert_close_f32(lm_logits(loaded, hidden), hidden @ weights[head].T, ulps=16)


def test_a_tied_config_with_a_stored_lm_head_uses_the_embedding(tmp_path):
    """tie_word_embeddings true and an lm_head.weight in the file (as some checkpoints are saved): the embedding
    wins, as transformers ties them; the stored head is not read."""
    weights = copy_fixture("llama", tmp_path / "both")
    assert not np.array_equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])
    config = json.loads((FAMILIES_DIR / "llama" / "config.json").read_text())
    (tmp_path / "both" / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    save_file(weights, str(tmp_path / "both" / "model.safetensors"))
    shutil.copytree(tmp_path / "both", tmp_path / "tied")
    save_file({name: w for name, w in weights.items() if name != "lm_head.weight"},
              str(tmp_path / "tied" / "model.safetensors"))

    both, tied = load_source(str(tmp_path / "both")), load_source(str(tmp_path / "tied"))
    hidden = trace_text(both, TEXT).hidden[-1]
    np.testing.assert_array_equal(trace_text(tied, TEXT).hidden[-1], hidden)  # same weights, same graph
    logits = lm_logits(both, hidden)
    np.testing.assert_array_equal(logits, lm_logits(tied, hidden))
    assert_close_f32(logits, hidden @ weights["model.embed_tokens.weight"].T, ulps=16)
    assert not np.allclose(logits, hidden @ weights["lm_head.weight"].T, atol=1e-3)
