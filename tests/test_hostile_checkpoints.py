"""Hostile checkpoint folders: a few hundred bytes that ask for an absurd model are refused with our error before
anything is allocated, in a fresh process, in under a second and 50 MB; the checks of ``encoder.limits`` one by
one; and ``parameter_count`` pinned to the built model of every family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from encoder.checkpoints import convert_config
from encoder.errors import CheckpointError
from encoder.limits import parameter_count
from encoder.model import TransformerEncoder
from encoder.sources import load_path
from tests.support.families import FAMILIES_DIR
from tests.support.models import tiny_config, write_tiny_bert_folder

ROOT = Path(__file__).resolve().parent.parent
TINY_BERT = dict(model_type="bert", vocab_size=14, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=16, type_vocab_size=2, hidden_act="gelu")
# A refusal is quick and allocates nothing of what the folder claims: memory growth is the bound that matters; the
# time bound only catches work proportional to the claimed sizes (minutes), loosely enough for any loaded CPU.
MAX_SECONDS, MAX_GROWTH_MB = 10.0, 50
# Loads ``sys.argv[1]`` in a fresh process after the imports (TensorFlow's included); prints the seconds and the peak
# memory growth. The peak after the imports may lie above the memory then in use ("slack", 0 today), which a load
# could fill unseen; the test adds it to the growth.
PROBE = """
import json, sys, time
import encoder.model  # TensorFlow: encoder.sources imports it only when a model is built, so it is loaded first
import encoder.sources
from encoder.errors import CheckpointError


def status(field):  # kB. VmHWM is this process's own peak (reset by exec; ru_maxrss keeps the forking parent's)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


before, in_use = status("VmHWM"), status("VmRSS")
start = time.perf_counter()
try:
    encoder.sources.load_path(sys.argv[1])
    outcome = "loaded"
except CheckpointError as error:
    outcome = f"CheckpointError: {error}"
seconds = time.perf_counter() - start
growth = status("VmHWM") - before
print(json.dumps({"outcome": outcome, "seconds": seconds, "growth_mb": growth / 1024,
                  "slack_mb": max(before - in_use, 0) / 1024}))
"""


def hostile_folder(folder: Path, weights: dict[str, np.ndarray] | None = None, **changes) -> Path:
    """A config.json (the tiny BERT with ``changes``) and a tiny model.safetensors (the embeddings only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**TINY_BERT, **changes}))
    if weights is None:
        weights = {"embeddings.word_embeddings.weight": np.zeros((14, 8), np.float32),
                   "embeddings.LayerNorm.weight": np.ones(8, np.float32)}
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def write_header(path: Path, header: dict, data: bytes = b"") -> None:
    """A safetensors file written by hand: 8-byte little-endian header length, JSON header, ``data``."""
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def giant_header_folder(folder: Path) -> Path:
    """The tiny BERT's config.json with a header claiming a (10^9, 1000) float32 table, and no data."""
    hostile_folder(folder)
    write_header(folder / "model.safetensors", {"embeddings.word_embeddings.weight": {
        "dtype": "F32", "shape": [1_000_000_000, 1000], "data_offsets": [0, 4_000_000_000_000]}})
    return folder


HOSTILE = {
    "vocab 1e12": lambda f: hostile_folder(f, vocab_size=10**12),
    "10,000 layers": lambda f: hostile_folder(f, num_hidden_layers=10_000),
    "ALBERT 1e12 layers": lambda f: hostile_folder(f, model_type="albert", num_hidden_layers=10**12),
    "hidden 16384": lambda f: hostile_folder(f, hidden_size=16_384),
    "GPT-2 width 16384": lambda f: hostile_folder(f, model_type="gpt2", n_embd=16_384, n_layer=1, n_head=16),
    "positions 2^22": lambda f: hostile_folder(f, max_position_embeddings=2**22),
    "0 heads": lambda f: hostile_folder(f, num_attention_heads=0),
    "negative hidden size": lambda f: hostile_folder(f, hidden_size=-8),
    "negative vocabulary": lambda f: hostile_folder(f, vocab_size=-5),
    "intermediate 1e9": lambda f: hostile_folder(f, intermediate_size=10**9),
    "embedding_size 1e9": lambda f: hostile_folder(f, model_type="electra", embedding_size=10**9),
    "1e9 labels": lambda f: hostile_folder(f, num_labels=10**9, architectures=["BertForSequenceClassification"]),
    "layers Infinity": lambda f: hostile_folder(f, num_hidden_layers=float("inf")),
    "24 wide layers, embeddings only": lambda f: hostile_folder(  # 300M parameters, under the cap; a 57 kB file
        f, {"embeddings.word_embeddings.weight": np.zeros((14, 1024), np.float32)}, hidden_size=1024,
        num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "header claims a giant tensor": giant_header_folder,
}


def measure_load(folder: Path) -> dict:
    """``encoder.sources.load_path(folder)`` in a fresh process: outcome, seconds and peak growth (MB)."""
    env = {**os.environ, "HEADLIGHT_MAX_PARAMETERS": "500000000"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(folder)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measurements(tmp_path_factory) -> dict[str, dict]:
    """Every HOSTILE folder loaded in its own fresh process, up to four at once."""
    root = tmp_path_factory.mktemp("hostile")
    folders = [make(root / str(index)) for index, make in enumerate(HOSTILE.values())]
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        return dict(zip(HOSTILE, pool.map(measure_load, folders)))


@pytest.mark.slow
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_folder_is_refused_fast_and_small_in_a_fresh_process(measurements, case):
    measured = measurements[case]
    print(f"{case}: {measured['seconds'] * 1000:.1f} ms, +{measured['growth_mb']:.1f} MB "
          f"(slack {measured['slack_mb']:.1f} MB); {measured['outcome']}")
    assert measured["outcome"].startswith("CheckpointError"), measured
    assert measured["seconds"] < MAX_SECONDS, measured
    assert measured["growth_mb"] + measured["slack_mb"] < MAX_GROWTH_MB, measured


def test_a_normal_tiny_folder_still_loads(tmp_path):
    model = load_path(write_tiny_bert_folder(tmp_path / "tiny"))
    assert model.config.num_layers == 2 and model.num_parameters() == parameter_count(model.config)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_hidden_layers": 97}, r"more layers than Headlight runs \(num_hidden_layers: at most 96\)"),
        ({"num_attention_heads": 0}, r"num_attention_heads must be at least 1 \(attention heads\)"),
        ({"vocab_size": "1e12"}, "more tokens in the vocabulary"),  # text is read as a number by the families
        ({"num_hidden_layers": float("nan")}, "num_hidden_layers is not a whole number"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers is not a whole number"),
        ({"max_position_embeddings": 2**19 + 1}, "more positions"),
        ({"type_vocab_size": 5000}, "more token types"),
        ({"pad_token_id": float("inf")}, "wrong kind"),  # int(Infinity) is an OverflowError
    ],
)
def test_config_sizes_are_bounded_before_the_family_maps_them(changes, message):
    with pytest.raises(CheckpointError, match=message):
        convert_config({**TINY_BERT, **changes})


def test_albert_layer_groups_are_bounded_before_its_group_loop():
    hf = {**TINY_BERT, "model_type": "albert", "embedding_size": 4, "num_hidden_layers": 96,
          "num_hidden_groups": 10**12}
    with pytest.raises(CheckpointError, match="more layer groups"):
        convert_config(hf)


def test_derived_sizes_are_bounded_after_the_mapping(tmp_path):
    labels = {str(i): f"label {i}" for i in range(100_001)}  # num_classes from id2label, no num_labels
    folder = hostile_folder(tmp_path / "m", architectures=["BertForSequenceClassification"], id2label=labels)
    with pytest.raises(CheckpointError, match=r"more classes than Headlight runs \(at most 100,000\)"):
        load_path(folder)


def test_the_parameter_cap_is_the_operators_setting(tmp_path, monkeypatch):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    monkeypatch.setenv("HEADLIGHT_MAX_PARAMETERS", "1000")
    with pytest.raises(CheckpointError, match=r"larger than this server runs \(at most 1,000 parameters"):
        load_path(folder)
    monkeypatch.setenv("HEADLIGHT_MAX_PARAMETERS", "2000")
    assert load_path(folder).num_parameters() <= 2000


def test_word_embeddings_must_match_the_config(tmp_path):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 15}))
    with pytest.raises(CheckpointError, match="word embeddings' shape disagrees"):
        load_path(folder)
    hostile_folder(folder, weights={"embeddings.LayerNorm.weight": np.ones(8, np.float32)})
    with pytest.raises(CheckpointError, match="no word embeddings"):
        load_path(folder)
    hostile_folder(folder, weights={"embeddings.word_embeddings.weight": np.zeros((14, 8), np.int32)})
    with pytest.raises(CheckpointError, match="word embeddings are not floats"):
        load_path(folder)


def test_8_bit_and_other_unread_types_are_refused_from_the_header(tmp_path):
    folder = hostile_folder(tmp_path / "m")
    write_header(folder / "model.safetensors", {
        "embeddings.word_embeddings.weight": {"dtype": "F8_E4M3", "shape": [14, 8], "data_offsets": [0, 112]}},
        bytes(112))
    with pytest.raises(CheckpointError, match="a type Headlight does not read"):
        load_path(folder)


def test_integer_buffers_beside_the_weights_are_allowed(tmp_path):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    from safetensors.numpy import load_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]  # as MiniLM's checkpoint has
    save_file(weights, str(folder / "model.safetensors"))
    assert load_path(folder).config.vocab_size == 14


@pytest.mark.parametrize(
    "content",
    [
        b"\x01\x02",  # shorter than the length prefix
        (10**6).to_bytes(8, "little") + b"{}",  # header longer than the file
        (2**40).to_bytes(8, "little"),  # header longer than we parse
        (4).to_bytes(8, "little") + b"[1] ",  # not an object
        (3).to_bytes(8, "little") + b"{\xff}",  # not UTF-8
    ],
)
def test_damaged_headers_are_refused(tmp_path, content):
    folder = hostile_folder(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_path(folder)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [14, 8], "data_offsets": [0, 0]},  # fewer bytes than the shape needs
        {"dtype": "F32", "shape": [14, -8], "data_offsets": [0, 448]},
        {"dtype": "F32", "shape": [14, 8], "data_offsets": [448, 0]},
        {"dtype": "F32", "shape": "14x8", "data_offsets": [0, 448]},
        {"dtype": "F32", "shape": [14, 8]},
        "F32",
    ],
)
def test_malformed_header_entries_are_refused(tmp_path, entry):
    folder = hostile_folder(tmp_path / "m")
    write_header(folder / "model.safetensors", {"embeddings.word_embeddings.weight": entry}, bytes(448))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_path(folder)


def test_an_oversized_or_deeply_nested_config_json_is_refused(tmp_path):
    folder = hostile_folder(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({**TINY_BERT, "padding": "x" * (5 * 2**20)}))
    with pytest.raises(CheckpointError, match="larger than a model's config can be"):
        load_path(folder)


@pytest.mark.parametrize("name", ["albert", "albert-cls", "bert-cls", "distilbert", "distilbert-cls", "electra",
                                  "electra-cls", "gpt2", "roberta", "roberta-cls", "xlm-roberta"])
def test_parameter_count_is_the_built_models_for_every_family(name):
    config = convert_config(json.loads((FAMILIES_DIR / name / "config.json").read_text()))
    assert parameter_count(config) == TransformerEncoder(config).count_params()


@pytest.mark.parametrize("overrides", [{}, {"positional": "learned", "type_vocab_size": 3, "num_classes": 4},
                                       {"embedding_size": 4, "num_layers": 4, "num_layer_groups": 2}])
def test_parameter_count_of_tiny_configs(overrides):
    config = tiny_config(**overrides)
    assert parameter_count(config) == TransformerEncoder(config).count_params()


def test_minilm_header_check_agrees_with_its_weights(minilm):
    from encoder.checkpoints import _canonical_names, safetensors_files
    from encoder.families import bert
    from encoder.limits import check_tensors, read_headers

    headers = _canonical_names(read_headers(safetensors_files(minilm.folder)), bert.PREFIXES)
    assert headers["embeddings.position_ids"].dtype == "I64"
    check_tensors(headers, minilm.config)
    assert parameter_count(minilm.config) == minilm.num_parameters()
