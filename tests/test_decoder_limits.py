"""Decoders' config.json within limits: hostile configs next to a real (fixture) checkpoint are refused with our
error from config.json alone, before any tensor is read or any layer built; published decoder shapes pass the
bounds and ``parameter_count`` counts them as transformers builds them (key/value heads, explicit head_dim, gated
MLPs, q/k norms, sandwich norms, tied or untied LM heads, vocabularies of 128k-256k), the parameter cap being the
operator's."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from encoder.checkpoints import convert_config, read_hf_config
from encoder.errors import CheckpointError
from encoder.limits import POSITIONS, check_config, check_config_fields, parameter_count, read_headers
from encoder.model import TransformerEncoder
from encoder.settings import settings
from encoder.sources import load_path
from tests.support.families import FAMILIES_DIR
from tests.test_hostile_checkpoints import MAX_GROWTH_MB, MAX_SECONDS, measure_load

DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
# Published decoders as transformers writes their config.json, and the parameters transformers builds for each
# (tests/fixtures/make_decoder_shapes.py).
SHAPES = {name: shape for name, shape in json.loads(
    (FAMILIES_DIR.parent / "decoder_shapes.json").read_text()).items() if not name.startswith("_")}


def decoder_folder(family: str, folder: Path, **changes) -> Path:
    """A copy of the decoder fixture ``family`` (its weights and tokenizer) whose config.json has ``changes``."""
    shutil.copytree(FAMILIES_DIR / family, folder, ignore=shutil.ignore_patterns("*.npz"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


WIDE_HEADS = dict(hidden_size=1024, num_attention_heads=128, num_key_value_heads=128, head_dim=1024,
                  num_hidden_layers=8, intermediate_size=64)  # 4.3e9 weights through head_dim; 3.4e7 without it
UNTIED_256K = dict(vocab_size=262_144, hidden_size=1024, num_attention_heads=8, num_key_value_heads=8, head_dim=128,
                   intermediate_size=64, tie_word_embeddings=False)  # 2 x 268M: over the cap only when counted twice
HOSTILE = {  # case -> (fixture, changes to its config.json, the refusal)
    "key/value heads 3 of 4": ("llama", {"num_key_value_heads": 3},
                               "num_key_value_heads must divide num_attention_heads"),
    "sliding window 10^6": ("mistral", {"sliding_window": 10**6}, r"more positions in a sliding window than "
                            r"Headlight runs \(sliding_window: at most 524,288\)"),
    "rope scaling yarn": ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}},
                          "rope_type 'yarn', which Headlight does not run"),
    "old rope_scaling dynamic": ("qwen2", {"rope_parameters": None, "rope_theta": 1e6,
                                           "rope_scaling": {"type": "dynamic", "factor": 2.0}},
                                 "rope_type 'dynamic', which Headlight does not run"),
    "rope type of no name": ("gemma2", {"rope_parameters": {"rope_type": "<script>", "rope_theta": 1e4}},
                             "asks for a rope_type, which Headlight does not run"),
    "vocabulary 2^40": ("qwen2", {"vocab_size": 2**40}, r"more tokens in the vocabulary than Headlight runs"),
    "head_dim 2^20": ("qwen3", {"head_dim": 2**20}, r"more dimensions per head than Headlight runs \(head_dim"),
    "intermediate 10^9": ("gemma2", {"intermediate_size": 10**9}, "more feed-forward width than Headlight runs"),
    "layers true": ("phi3", {"num_hidden_layers": True}, "num_hidden_layers is not a whole number"),
    "key/value heads 1.5": ("llama", {"num_key_value_heads": 1.5}, "num_key_value_heads is not a whole number"),
    "key/value heads 0": ("gemma3", {"num_key_value_heads": 0}, "num_key_value_heads must be at least 1"),
    "positions 2^40": ("llama", {"max_position_embeddings": 2**40}, "more positions than Headlight runs"),
    "wide heads": ("llama", WIDE_HEADS, r"larger than this server runs \(at most 500,000,000 parameters"),
    "untied 256k vocabulary": ("llama", UNTIED_256K, r"larger than this server runs"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_decoder_config_is_refused_from_config_json_alone(case, tmp_path, monkeypatch):
    """The refusal comes from the pure config stage (``convert_config``, ``check_config``), which
    ``load_hf_folder`` runs before it reads a tensor or builds a layer; the message echoes no path."""
    monkeypatch.setenv("HEADLIGHT_MAX_PARAMETERS", "500000000")
    family, changes, message = HOSTILE[case]
    folder = decoder_folder(family, tmp_path / "m", **changes)
    with pytest.raises(CheckpointError, match=message):
        check_config(convert_config(read_hf_config(folder)), settings().max_parameters)
    with pytest.raises(CheckpointError, match=message) as refused:
        load_path(folder)
    assert str(tmp_path) not in str(refused.value)


@pytest.mark.slow
def test_hostile_decoder_configs_are_refused_fast_and_small_in_a_fresh_process(tmp_path):
    """Loaded in a fresh process each: our error, in under a second and 50 MB (``measure_load``)."""
    folders = [decoder_folder(family, tmp_path / str(index), **changes)
               for index, (family, changes, _) in enumerate(HOSTILE.values())]
    with ThreadPoolExecutor(2) as pool:
        measured = dict(zip(HOSTILE, pool.map(measure_load, folders)))
    for case, result in measured.items():
        print(f"{case}: {result['seconds'] * 1000:.1f} ms, +{result['growth_mb']:.1f} MB; {result['outcome']}")
        assert result["outcome"].startswith("CheckpointError"), (case, result)
        assert result["seconds"] < MAX_SECONDS, (case, result)
        assert result["growth_mb"] + result["slack_mb"] < MAX_GROWTH_MB, (case, result)


@pytest.mark.parametrize("name", SHAPES)
def test_published_decoders_pass_the_bounds_and_count_as_transformers_builds_them(name):
    shape = SHAPES[name]
    config = convert_config(shape["config"])
    assert parameter_count(config) == shape["parameters"]
    check_config(config, shape["parameters"])  # the operator's cap, raised to the model: it runs
    with pytest.raises(CheckpointError, match="larger than this server runs"):
        check_config(config, shape["parameters"] - 1)


def test_long_contexts_and_windows_of_todays_decoders_pass():
    """Phi-3-mini-128k's 262,144-token window (beyond its 131,072 positions), Qwen 2.5's unused 131,072 window,
    Qwen2.5-1M-like positions up to the bound."""
    phi3 = {**SHAPES["Phi-3-mini-4k"]["config"], "max_position_embeddings": 131_072, "sliding_window": 262_144}
    check_config_fields(phi3)
    assert max(convert_config(phi3).attention.windows) == 262_144
    check_config_fields({**SHAPES["Qwen2.5-0.5B"]["config"], "max_position_embeddings": POSITIONS})
    assert not convert_config(SHAPES["Qwen2.5-0.5B"]["config"]).attention.windows


@pytest.mark.parametrize("family", DECODERS)
def test_parameter_count_is_the_built_model_and_the_checkpoints_for_every_decoder(family):
    """The count of the built model, and of the numbers the fixture's model.safetensors holds (transformers saved
    every parameter once: a tied LM head is not in the file)."""
    config = convert_config(json.loads((FAMILIES_DIR / family / "config.json").read_text()))
    stored = sum(tensor.size for tensor in read_headers([FAMILIES_DIR / family / "model.safetensors"]).values())
    assert parameter_count(config) == TransformerEncoder(config).count_params() == stored


def test_an_untied_lm_head_counts_its_own_vocabulary_by_width():
    tied = convert_config({**json.loads((FAMILIES_DIR / "llama" / "config.json").read_text()),
                           "tie_word_embeddings": True})
    untied = convert_config(json.loads((FAMILIES_DIR / "llama" / "config.json").read_text()))
    assert parameter_count(untied) - parameter_count(tied) == 1500 * 32
    assert np.prod(TransformerEncoder(untied).lm_head.kernel.shape) == 1500 * 32
