"""Training end to end on a slice of the real data, the saved folder's round trip, the tokenizer, the baselines."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from encoder.compiled import CompiledEncoder
from encoder.saving import initial_model, model_state, read_folder_config
from encoder.sources import LoadedModel, load_path
from encoder.tokenizer import TextTokenizer
from encoder.trace import EncoderTrace, class_probabilities, trace_text
from tests.support.floats import approx_f32, assert_close_f32
from tutorial.baselines import accuracy, bag_of_words_baseline, majority_baseline
from tutorial.dataset import DataError, Example, load_splits
from tutorial.predict import predict_texts
from tutorial.train import SPECIAL_TOKENS, TrainSettings, state_sha256, train, train_tokenizer
from viz.training import build_training_curve

TINY = TrainSettings(epochs=1, layers=1, heads=2, d_model=16, dff=32, max_len=32, batch_size=16, vocab_size=400,
                     seed=3)
SENTENCES = ["a wonderful, moving film", "a dull and lifeless mess", "I loved it!", "It is, well, a film."]


def _slice(splits, sizes):
    """Every k-th example, so the slice mixes all sources and both labels."""
    return {name: part[:: len(part) // size][:size] for (name, part), size in zip(splits.items(), sizes)}


@pytest.fixture(scope="module")
def tiny_splits():
    return _slice(load_splits(), (400, 60, 60))


@pytest.fixture(scope="module")
def trained(tiny_splits, tmp_path_factory):
    return train(tiny_splits, tmp_path_factory.mktemp("tiny") / "model", TINY, {"slice": "test"}, verbose=0)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([e.text for e in load_splits()["train"][:3000]], vocab_size=600)


@pytest.mark.slow
def test_one_epoch_runs_end_to_end_and_saves(trained):
    folder = trained.folder
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "training_curve.png"):
        assert (folder / name).is_file(), name
    assert (folder / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config, data = read_folder_config(folder)
    assert data["format"] == "headlight" and data["labels"] == ["negative", "positive"] and data["seed"] == 3
    assert (config.positional, config.activation, config.scale_embeddings, config.embedding_layer_norm) == (
        "sinusoidal", "relu", True, False)
    assert (config.num_layers, config.num_heads, config.d_model, config.num_classes) == (1, 2, 16, 2)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(trained.metrics))
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1 and len(metrics["history"]["val_accuracy"]) == 1
    assert set(metrics["test_accuracy_by_source"]) == {"movie_reviews", "tweets", "nyt_editorials", "amazon_reviews"}
    assert metrics["examples"] == {"train": 400, "validation": 60, "test": 60}
    assert metrics["data"] == {"slice": "test"}
    assert 0.0 <= metrics["baselines"]["bag_of_words_logistic_regression"]["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_training_starts_from_the_seeded_initial_model_and_changes_it(trained):
    config, data = read_folder_config(trained.folder)
    fresh = initial_model(config, seed=data["seed"])
    assert data["initial_weights_sha256"] == state_sha256(fresh) == trained.metrics["initial_weights_sha256"]
    assert state_sha256(trained.encoder) != state_sha256(fresh)


@pytest.mark.slow
def test_zero_epochs_saves_exactly_the_seeded_initial_model(tiny_splits, tmp_path):
    result = train(tiny_splits, tmp_path / "initial", dataclasses.replace(TINY, epochs=0), verbose=0)
    config, data = read_folder_config(result.folder)
    saved = model_state(load_path(result.folder).model)
    fresh = model_state(initial_model(config, seed=data["seed"]))
    assert saved.keys() == fresh.keys()
    for name, value in fresh.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    assert result.metrics["epochs_run"] == 0 and result.metrics["best_epoch"] is None


@pytest.mark.slow
def test_saved_model_reloads_with_identical_predictions_and_attention(trained, tiny_splits):
    reloaded = load_path(trained.folder)
    in_memory = LoadedModel("in-memory", "", CompiledEncoder(trained.encoder),
                            TextTokenizer(Tokenizer.from_str(trained.tokenizer.to_str()), 512),
                            ("negative", "positive"))
    for text in SENTENCES:
        a, b = trace_text(in_memory, text), trace_text(reloaded, text)
        assert a.tokens == b.tokens
        assert_close_f32(b.attention, a.attention, ulps=16)
        assert_close_f32(b.outputs["probabilities"], a.outputs["probabilities"], ulps=16)
        assert [label for label, _ in class_probabilities(b)] == [label for label, _ in class_probabilities(a)]
    # The accuracy in metrics.json is what the reloaded model scores on the same test examples.
    test = tiny_splits["test"]
    predicted = predict_texts(reloaded, [e.text for e in test], max_tokens=TINY.max_len)
    assert accuracy(test, predicted) == trained.metrics["test_accuracy"]


@pytest.mark.slow
def test_a_pair_and_512_tokens_trace(trained):
    model = load_path(trained.folder)
    pair = trace_text(model, "good film", "bad ending")
    assert pair.is_pair and pair.tokens.count("[SEP]") == 2
    long = trace_text(model, "good " * 600)
    assert long.num_tokens == 512 and long.truncated
    np.testing.assert_allclose(long.attention.sum(-1), 1.0, atol=1e-4)


def test_tokenizer_specials_template_and_determinism(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.get_vocab_size() == 600
    encoding = tokenizer.encode("Good film", "bad ending")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens.count("[SEP]") == 2
    assert encoding.type_ids == [0, 0, 0, 0] + [1] * (len(encoding.ids) - 4)
    again = train_tokenizer([e.text for e in load_splits()["train"][:3000]], vocab_size=600)
    assert again.to_str() == tokenizer.to_str()


def test_tokenizer_round_trips_cjk_and_emoji(tokenizer, tmp_path):
    text = "我爱电影 😀 Great film!"
    encoding = tokenizer.encode(text)
    # Every CJK character is its own token; characters never seen in training are [UNK], one per character.
    assert encoding.tokens[:7] == ["[CLS]", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "[UNK]", "great"]
    # Each token maps back to exactly the characters it came from.
    pieces = [text[start:end] for start, end in encoding.offsets]
    assert pieces[1:6] == ["我", "爱", "电", "影", "😀"]
    assert "".join(pieces).lower().replace(" ", "") == text.lower().replace(" ", "")
    decoded = tokenizer.decode(encoding.ids, skip_special_tokens=False)
    assert decoded == "[CLS] [UNK] [UNK] [UNK] [UNK] [UNK] great film! [SEP]"
    assert tokenizer.decode(encoding.ids) == "great film!"
    accented = tokenizer.encode("Naïve café")
    assert tokenizer.decode(accented.ids) == "naive cafe" and "[UNK]" not in accented.tokens
    # Through the app's wrapper, saved and reloaded: CJK-only text still traces (the [UNK]s are not special).
    (tmp_path / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    wrapped = TextTokenizer.from_folder(tmp_path, 512).encode("中文")
    assert wrapped.tokens == ("[CLS]", "[UNK]", "[UNK]", "[SEP]")
    assert wrapped.special.tolist() == [True, False, False, True]


def test_baselines_on_a_clear_toy_problem(tokenizer):
    def part(n, offset):
        return [Example("pos" if (i + offset) % 2 else "neg", f"s{i % 3}",
                        f"{'great' if (i + offset) % 2 else 'awful'} item number {i}") for i in range(n)]

    splits = {"train": part(60, 0), "validation": part(10, 1), "test": part(11, 0)}
    bow = bag_of_words_baseline(tokenizer, splits, ("neg", "pos"))
    assert bow["test_accuracy"] == 1.0 and bow["validation_accuracy"] == 1.0
    majority = majority_baseline(splits["train"], splits["test"])
    assert majority["label"] == "neg" and majority["test_accuracy"] == 6 / 11  # 30/30 tie: first in sorted order


def test_training_curve_figure_has_both_panels_and_the_kept_epoch():
    history = {"loss": [0.7, 0.5, 0.45], "val_loss": [0.6, 0.55, 0.58], "accuracy": [0.6, 0.7, 0.8],
               "val_accuracy": [0.65, 0.72, 0.7]}
    fig = build_training_curve(history, best_epoch=2)
    assert [a.text for a in fig.layout.annotations] == ["Loss", "Accuracy"]
    assert len(fig.data) == 4 and [t.showlegend for t in fig.data] == [True, True, False, False]
    assert list(fig.data[1].y) == history["val_loss"] and list(fig.data[3].x) == [1, 2, 3]
    assert [shape.x0 for shape in fig.layout.shapes] == [2, 2] and "kept epoch 2" in fig.layout.title.text
    empty = build_training_curve({}, best_epoch=None)
    assert not empty.layout.shapes and empty.layout.title.text == "Training curve"


def test_class_probabilities_sorted_with_labels():
    t = 3
    trace = EncoderTrace(
        model="m", tokens=("[CLS]", "x", "[SEP]"), token_ids=np.arange(t, dtype=np.int32),
        segment_ids=np.zeros(t, np.int32), special=np.array([True, False, True]),
        attention=np.full((1, 1, t, t), 1 / t, np.float32), positional=np.zeros((t, 2), np.float32),
        positional_table=np.zeros((8, 2), np.float32), hidden=np.zeros((2, t, 2), np.float32),
        outputs={"probabilities": np.array([0.2, 0.7, 0.1], np.float32)}, labels=("a", "b", "c"),
    )
    assert [label for label, _ in class_probabilities(trace)] == ["b", "a", "c"]
    assert class_probabilities(trace)[0][1] == approx_f32(0.7, ulps=1)  # float32(0.7), copied
    assert class_probabilities(trace.replace(labels=()))[0][0] == "class 1"
    assert class_probabilities(trace.replace(outputs={}, labels=())) == []


def test_bad_settings_and_data_fail_clearly(tiny_splits, tmp_path):
    with pytest.raises(ValueError, match="heads must be at least 1, got 0"):
        TrainSettings(heads=0)
    with pytest.raises(ValueError, match="max_len must be at least 3"):
        TrainSettings(max_len=2)
    with pytest.raises(DataError, match="the test split is empty"):
        train({**tiny_splits, "test": []}, tmp_path / "x", TINY, verbose=0)
    one_label = {name: [e for e in part if e.label == "positive"] for name, part in tiny_splits.items()}
    with pytest.raises(DataError, match="at least two labels"):
        train(one_label, tmp_path / "x", TINY, verbose=0)


def test_cli_reports_a_bad_data_file(tmp_path, capsys):
    from tutorial.train import main

    path = tmp_path / "mine.tsv"
    path.write_text("positive\tgreat\nno tab on this line\n", encoding="utf-8")
    assert main(["--data", str(path), "--out", str(tmp_path / "out")]) == 1
    assert "line 2: expected 'label<TAB>text'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--heads", "0", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "heads must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_on_a_users_own_file_with_any_labels(tmp_path):
    topics = {"sport": "the team won the match", "food": "the soup tasted of garlic", "weather": "rain fell all day"}
    lines = [f"{label}\t{sentence} number {i}" for i in range(30) for label, sentence in topics.items()]
    data = tmp_path / "topics.tsv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "topics_model"
    args = ["--data", str(data), "--out", str(out), "--epochs", "1", "--layers", "1", "--heads", "2",
            "--d-model", "16", "--dff", "32", "--vocab-size", "200", "--max-len", "16"]
    result = subprocess.run([sys.executable, "-m", "tutorial.train", *args], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "test accuracy" in result.stdout
    config, data_json = read_folder_config(out)
    assert data_json["labels"] == ["food", "sport", "weather"] and config.num_classes == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == {"train": 72, "validation": 9, "test": 9}
    assert metrics["data"]["file"] == str(data)
    model = load_path(out)
    assert predict_texts(model, ["the team won"])[0] in topics
