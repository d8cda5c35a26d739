"""The shipped tutorial model: its files, its predictions, its reported numbers, and its seeded initial state."""

import hashlib
import json
import threading

import keras
import numpy as np
import pytest

from encoder.config import EncoderConfig
from encoder.saving import initial_model, model_state, read_folder_config
from encoder.sources import TUTORIAL_DIR, load_source
from encoder.trace import class_probabilities, trace_text
from tutorial.baselines import accuracy
from tutorial.dataset import DATA_DIR, SPLIT_NAMES, file_sha256, load_splits
from tutorial.predict import predict_texts
from tutorial.train import state_sha256

CLEAR = {
    "a wonderful, moving film": "positive",
    "a dull and lifeless mess": "negative",
    "I love this phone, it works great.": "positive",
    "This is the worst service I have ever had.": "negative",
    "An absolute joy from start to finish.": "positive",
    "Terrible acting and a boring plot.": "negative",
    "Highly recommended!": "positive",
    "The battery died after two days; total waste of money.": "negative",
}


@pytest.fixture(scope="module")
def tutorial():
    return load_source("tutorial")


@pytest.fixture(scope="module")
def metrics():
    return json.loads((TUTORIAL_DIR / "metrics.json").read_text(encoding="utf-8"))


def test_files_are_complete_and_small():
    names = {"config.json", "model.safetensors", "initial.safetensors", "tokenizer.json", "metrics.json",
             "training_curve.png"}
    assert names <= {p.name for p in TUTORIAL_DIR.iterdir()}
    total = sum(p.stat().st_size for p in TUTORIAL_DIR.iterdir())
    assert total < 16 * 1024 * 1024, f"models/tutorial is {total / 2**20:.1f} MB"  # two 7 MB weight files


def test_it_is_the_classic_encoder_with_two_labels(tutorial):
    config = tutorial.config
    assert (config.positional, config.activation, config.scale_embeddings, config.embedding_layer_norm) == (
        "sinusoidal", "relu", True, False)
    assert config.num_classes == 2 and tutorial.labels == ("negative", "positive")
    assert config.max_positions == 512 and tutorial.tokenizer.token_to_id("[PAD]") == config.pad_token_id == 0
    assert tutorial.tokenizer.vocab_size == config.vocab_size


@pytest.mark.parametrize(("text", "label"), CLEAR.items())
def test_clear_sentences_are_classified_right(tutorial, text, label):
    prediction = class_probabilities(trace_text(tutorial, text))
    assert prediction[0][0] == label
    assert sum(p for _, p in prediction) == pytest.approx(1.0, abs=1e-5)


def test_reported_test_accuracy_is_what_the_model_scores(tutorial, metrics):
    test = load_splits()["test"]
    predicted = predict_texts(tutorial, [e.text for e in test], max_tokens=metrics["settings"]["max_len"])
    # Same examples, same compiled forward pass: at most a float32 tie may flip between machines.
    assert abs(accuracy(test, predicted) - metrics["test_accuracy"]) <= 1 / len(test)
    assert metrics["test_accuracy"] >= 0.75
    assert metrics["test_accuracy"] > metrics["baselines"]["majority_class"]["test_accuracy"]


def test_it_was_trained_on_the_committed_data_with_its_config(tutorial, metrics):
    """The recorded config hash is that of config.json's ``encoder`` section, which reads back as the model's
    config."""
    assert metrics["data"]["sha256"] == {name: file_sha256(DATA_DIR / f"{name}.tsv") for name in SPLIT_NAMES}
    _, data = read_folder_config(TUTORIAL_DIR)
    saved = hashlib.sha256(json.dumps(data["encoder"], sort_keys=True).encode()).hexdigest()
    assert metrics["config_sha256"] == saved
    assert EncoderConfig.from_dict(data["encoder"]) == tutorial.config
    assert EncoderConfig.from_dict(json.loads(tutorial.config.to_json())) == tutorial.config
    assert metrics["weights_sha256"] == state_sha256(tutorial.model)


def test_tutorial_initial_is_the_seeded_start_of_training(tutorial):
    config, data = read_folder_config(TUTORIAL_DIR)
    initial = load_source("tutorial-initial")
    assert data["initial_weights_sha256"] == state_sha256(initial.model)
    fresh = model_state(initial_model(config, seed=data["seed"]))
    for name, value in model_state(initial.model).items():
        np.testing.assert_array_equal(value, fresh[name], err_msg=name)
    assert state_sha256(initial.model) != state_sha256(tutorial.model)
    assert initial.tokenizer.to_str() == tutorial.tokenizer.to_str() and initial.labels == tutorial.labels


def test_tutorial_initial_is_the_stored_state_while_other_threads_build_layers():
    """Its weights are read from initial.safetensors, not re-derived from a process-wide seed: Keras layers built
    (and seeds set) by other sessions at the same moment cannot change them."""
    _, data = read_folder_config(TUTORIAL_DIR)
    stop = threading.Event()

    def build_layers(seed: int) -> None:
        while not stop.is_set():
            keras.utils.set_random_seed(seed)
            keras.layers.Dense(64).build((None, 128))
            keras.layers.Embedding(100, 32).build((None, 8))

    threads = [threading.Thread(target=build_layers, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    try:
        digests = [state_sha256(load_source("tutorial-initial").model) for _ in range(3)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert digests == [data["initial_weights_sha256"]] * 3


def test_pairs_cjk_and_long_text_trace(tutorial):
    pair = trace_text(tutorial, "The plot was thin.", "The acting was superb.")
    assert pair.is_pair and pair.outputs["probabilities"].shape == (2,)
    cjk = trace_text(tutorial, "我爱电影 great")
    assert cjk.tokens[1:6] == ("[UNK]", "[UNK]", "[UNK]", "[UNK]", "great")
    long = trace_text(tutorial, "good " * 600)
    assert long.num_tokens == 512
    np.testing.assert_allclose(long.attention.sum(-1), 1.0, atol=1e-4)
