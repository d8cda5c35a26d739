"""Hugging Face import: config mapping, weight port, and a clear error for every broken folder."""

import json
import shutil

import numpy as np
import pytest

from encoder.checkpoints import convert_config
from encoder.errors import CheckpointError, SourceError
from encoder.saving import initial_model, load_folder, model_state, save_folder
from encoder.sources import builtin_sources, load_path, load_source
from encoder.trace import trace_text
from tests.support.floats import assert_close_f32
from tests.support.models import tiny_config, write_tiny_bert_folder


def test_convert_config_maps_every_field(minilm):
    hf = json.loads((minilm.folder / "config.json").read_text())
    config = convert_config(hf)
    assert (config.num_layers, config.num_heads, config.d_model, config.dff) == (6, 12, 384, 1536)
    assert config.positional == "learned" and config.activation == "gelu" and config.type_vocab_size == 2
    assert config.layer_norm_epsilon == 1e-12 and not config.scale_embeddings and config.embedding_layer_norm
    assert minilm.config.pooling == "mean" and minilm.config.normalize_embedding  # from modules.json


def test_tiny_bert_folder_loads_with_vocab_txt_and_traces(tmp_path):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    model = load_path(folder)
    trace = trace_text(model, "The cat sat on the mat.", "A dog sat.")
    assert trace.tokens[:4] == ("[CLS]", "the", "cat", "sat")
    assert trace.attention.shape == (2, 2, trace.num_tokens, trace.num_tokens)
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, atol=1e-5)
    assert trace.segment_ids.max() == 1


def test_ported_weights_are_the_checkpoint_values(tmp_path):
    from safetensors.numpy import load_file

    folder = write_tiny_bert_folder(tmp_path / "tiny")
    weights = load_file(str(folder / "model.safetensors"))
    model = load_path(folder).model
    query = model.encoder_layers[1].attention.query_dense.kernel.numpy()  # (D, H, dh)
    w = weights["encoder.layer.1.attention.self.query.weight"]  # (out, in)
    np.testing.assert_array_equal(query[:, 1, :], w[4:8].T)  # head 1 is output rows 4..7
    out = model.encoder_layers[0].attention.output_dense.kernel.numpy()  # (H, dh, D)
    np.testing.assert_array_equal(out[1], weights["encoder.layer.0.attention.output.dense.weight"][:, 4:8].T)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "config.json").unlink(), "no config.json"),
        (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "convert"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\x00garbage" * 10), "not a readable safetensors"),
        (lambda f: (f / "vocab.txt").unlink(), "No tokenizer"),
        (lambda f: _edit_config(f, model_type="mamba"), "model_type is missing or not one Headlight runs"),
        (lambda f: _edit_config(f, hidden_act="swish"), "hidden_act is not an activation"),
        (lambda f: _edit_config(f, position_embedding_type="relative_key"), "position_embedding_type is not supported"),
        (lambda f: _edit_config(f, intermediate_size=20), "shape"),
        (lambda f: _edit_config(f, num_hidden_layers=3), "lacks 16 tensors"),
        (lambda f: _edit_config(f, num_attention_heads=3), "divisible"),
    ],
)
def test_broken_folders_raise_our_error_with_what_to_do(tmp_path, damage, message):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_path(folder)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_unknown_names_and_offline_hub_ids_fail_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLIGHT_HUB_IDS", "*")
    with pytest.raises(SourceError, match="Unknown model 'no such model': use 'minilm'"):
        load_source("no such model")
    with pytest.raises(SourceError, match="not available here"):
        load_source("no such model", restricted=True)
    for restricted in (False, True):
        with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
            load_source("someone/some-bert-that-is-not-cached", restricted=restricted)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_path(tmp_path / "missing")


def test_minilm_checksum_is_verified(minilm, tmp_path):
    from encoder.sources import MINILM_SHA256, verify_checksums

    copy = tmp_path / "minilm"
    shutil.copytree(minilm.folder, copy)
    verify_checksums(copy, MINILM_SHA256)
    with (copy / "tokenizer.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(CheckpointError, match="does not match"):
        verify_checksums(copy, MINILM_SHA256)


def test_a_verified_checksum_is_not_read_again_until_the_file_changes(minilm, tmp_path, monkeypatch):
    """The checksum cache is keyed by each file's identity, size and times: a file changed in place (same size,
    even with its modification time set back) is read again and refused."""
    import os

    import encoder.sources as sources

    copy = tmp_path / "minilm"
    shutil.copytree(minilm.folder, copy)
    hashed: list[str] = []
    real_sha256 = sources._sha256
    monkeypatch.setattr(sources, "_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    sources.verify_checksums(copy, sources.MINILM_SHA256)
    assert sorted(hashed) == ["model.safetensors", "tokenizer.json"]
    hashed.clear()
    sources.verify_checksums(copy, sources.MINILM_SHA256)
    assert hashed == []  # verified once per process while unchanged
    weights = copy / "model.safetensors"
    before = weights.stat()
    with weights.open("r+b") as handle:  # corrupt one byte in the middle: same size
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the modification time set back
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match"):
        sources.verify_checksums(copy, sources.MINILM_SHA256)
    assert hashed == ["model.safetensors"]
    with pytest.raises(CheckpointError, match="does not match"):  # a refused file is never remembered as good
        sources.verify_checksums(copy, sources.MINILM_SHA256)


def test_minilm_is_the_default_source():
    assert builtin_sources()[0] == "minilm"


def test_our_folder_round_trip_is_exact(tmp_path):
    from tokenizers import Tokenizer, models

    config = tiny_config(num_classes=2)
    model = initial_model(config, seed=7)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    folder = save_folder(tmp_path / "m", model, tokenizer.to_str(), labels=("negative", "positive"))
    loaded, data = load_folder(folder)
    assert data["labels"] == ["negative", "positive"] and loaded.config == config
    for name, value in model_state(model).items():
        np.testing.assert_array_equal(model_state(loaded)[name], value)
    ids = np.array([[1, 2, 3, 4]], np.int32)
    assert_close_f32(loaded(ids)["attention"].numpy(), model(ids)["attention"].numpy(), ulps=16)


def test_a_folder_with_flat_config_and_model_level_position_paths_loads(tmp_path):
    """Folders whose config.json holds the flat form and whose position tables sit at the model's level
    (``position_embedding/embeddings``, not ``positions/...``) load with every weight in place."""
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer, models

    config = tiny_config(positional="learned", position_offset=2, relative_attention_buckets=8)
    model = initial_model(config, seed=3)
    folder = save_folder(tmp_path / "m", model, Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")).to_str())
    stored = load_file(str(folder / "model.safetensors"))
    assert {"positions/position_embedding/embeddings", "positions/relative_attention_bias/embeddings"} <= set(stored)
    save_file({name.removeprefix("positions/"): value for name, value in stored.items()},
              str(folder / "model.safetensors"))
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "encoder": config.flat()}))
    loaded, _ = load_folder(folder)
    assert loaded.config == config
    for name, value in model_state(model).items():
        np.testing.assert_array_equal(model_state(loaded)[name], value)


def test_seeded_initialisation_is_reproducible_and_seed_dependent():
    config = tiny_config()
    a, b, c = initial_model(config, 1), initial_model(config, 1), initial_model(config, 2)
    state_a, state_b, state_c = model_state(a), model_state(b), model_state(c)
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        np.testing.assert_array_equal(state_a[name], state_b[name])
    kernel = "layer_0/attention/query/kernel"
    assert kernel in state_a and not np.array_equal(state_a[kernel], state_c[kernel])


def test_keras_config_round_trip_keeps_the_encoder_config():
    from encoder.block import EncoderLayer
    from encoder.model import TransformerEncoder

    config = tiny_config(num_classes=3, activation="gelu")
    model = TransformerEncoder(config, name="encoder")
    rebuilt = TransformerEncoder.from_config(model.get_config())
    assert rebuilt.config == config and rebuilt.name == "encoder"
    layer = EncoderLayer(config, name="layer_0")
    assert EncoderLayer.from_config(layer.get_config()).config == config
