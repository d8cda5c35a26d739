"""Train the classic encoder (sinusoidal positions, ReLU) as a text classifier and save it as a Headlight folder.

``python -m tutorial.train`` (``make train``) trains on the committed sentiment data (``data/``) and writes
``models/tutorial/``: config.json (with the seed, so ``initial_model(config, seed)`` rebuilds the exact weights
training started from, in a quiet process), initial.safetensors (those weights, which ``tutorial-initial``
loads), model.safetensors, tokenizer.json (WordPiece trained on the training split only),
metrics.json (accuracy, per-source accuracy, majority-class and bag-of-words baselines on the same test split) and
training_curve.png. ``--data my.tsv`` trains on your own ``label<TAB>text`` file instead (split 80/10/10).

Example:
    $ python -m tutorial.train --epochs 3 --layers 2 --data reviews.tsv --out models/reviews
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from encoder.compiled import CompiledEncoder
from encoder.config import EncoderConfig
from encoder.errors import ExportError
from encoder.model import TransformerEncoder
from encoder.saving import initial_model, model_state, save_folder, save_initial_weights
from encoder.sources import MODELS_DIR, TUTORIAL_DIR
from encoder.trace import pad_batch
from tutorial.baselines import accuracy, accuracy_by_source, bag_of_words_baseline, majority_baseline
from tutorial.dataset import (
    DATA_DIR,
    SPLIT_NAMES,
    DataError,
    Example,
    file_sha256,
    load_splits,
    read_labelled_file,
    split_labelled,
)
from tutorial.predict import batch_probabilities
from viz.render import figure_to_bytes
from viz.training import build_training_curve

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] is id 0
MAX_POSITIONS = 512  # the app traces up to 512 tokens; training may use shorter sequences


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run (stored in metrics.json).

    Args:
        epochs: int, most passes over the training split (early stopping may end sooner); 0 saves the initial model.
        layers, heads, d_model, dff: the encoder's size.
        max_len: int, tokens per training sentence, [CLS] and [SEP] included (longer ones are truncated).
        batch_size: int, sentences per step.
        vocab_size: int, WordPiece vocabulary size.
        learning_rate: float, peak Adam learning rate (linear warm-up over the first epoch, cosine decay after).
        patience: int, epochs without a better validation accuracy before stopping.
        dropout: float, dropout rate everywhere in the encoder.
        seed: int, the initial weights' seed (``initial_model(config, seed)``) and the shuffling seed.
    """

    epochs: int = 3
    layers: int = 4
    heads: int = 4
    d_model: int = 128
    dff: int = 512
    max_len: int = 128
    batch_size: int = 32
    vocab_size: int = 8000
    learning_rate: float = 5e-4
    patience: int = 3
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "heads", "d_model", "dff", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.max_len < 3:
            raise ValueError(f"max_len must be at least 3 ([CLS], a token, [SEP]), got {self.max_len}")
        if self.vocab_size < 100:
            raise ValueError(f"vocab_size must be at least 100, got {self.vocab_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A BERT-style WordPiece tokenizer learned from ``texts``.

    Lower-cased BERT normalizer (accents stripped, CJK characters spaced apart), BERT pre-tokenizer, specials
    [PAD]=0 [UNK] [CLS] [SEP] [MASK], "[CLS] $A [SEP]" (pair "[CLS] $A [SEP] $B:1 [SEP]:1"), WordPiece decoder.
    The same texts always give the same tokenizer. The trainer breaks ties between equally frequent merges by
    symbol id, and gives "##x" continuation symbols ids in hash-map order, so the last few vocabulary entries
    varied from run to run; registering every continuation symbol up front (sorted) fixes their ids. The final
    ids are then reassigned: specials, whole-word pieces, "##" continuations, each sorted.
    """
    learner = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    continuations = sorted({"##" + c for text in texts for word, _ in
                            learner.pre_tokenizer.pre_tokenize_str(learner.normalizer.normalize_str(text))
                            for c in word[1:]})
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *continuations],
                                        show_progress=False)
    learner.train_from_iterator(texts, trainer)
    pieces = sorted(set(learner.get_vocab()) - set(SPECIAL_TOKENS), key=lambda t: (t.startswith("##"), t))
    vocab = {token: index for index, token in enumerate([*SPECIAL_TOKENS, *pieces])}
    tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: ids unchanged
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _bert_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> list[np.ndarray]:
    """Token ids (T_i,) int32 per text, specials included, truncated to ``max_len`` tokens."""
    tokenizer.enable_truncation(max_len)
    try:
        return [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(list(texts))]
    finally:
        tokenizer.no_truncation()


def classic_config(settings: TrainSettings, vocab_size: int, num_classes: int) -> EncoderConfig:
    """The classic Keras-tutorial encoder: sinusoidal positions, scaled embeddings, ReLU, no token types.

    Token types are off: the training sentences come alone, so a second segment embedding would never be trained
    (sentence pairs still trace; their segment ids are simply not used).
    """
    return EncoderConfig(
        vocab_size=vocab_size, num_layers=settings.layers, num_heads=settings.heads, d_model=settings.d_model,
        dff=settings.dff, max_positions=max(MAX_POSITIONS, settings.max_len), positional="sinusoidal",
        activation="relu", type_vocab_size=0, scale_embeddings=True, embedding_layer_norm=False,
        dropout=settings.dropout, pad_token_id=SPECIAL_TOKENS.index("[PAD]"), num_classes=num_classes,
        pooling="mean",
    )


@keras.saving.register_keras_serializable(package="headlight")
class TextClassifier(keras.Model):
    """The training wrapper: (token ids (B, T), padding mask (B, T) bool) -> logits (B, C).

    It owns no weights of its own, so training it trains exactly the wrapped encoder's variables.
    """

    def __init__(self, encoder: TransformerEncoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder

    def call(self, inputs, training=None):
        token_ids, padding_mask = inputs
        return self.encoder(token_ids, padding_mask=padding_mask, training=training)["logits"]


def length_batches(
    sequences: Sequence[np.ndarray], labels: np.ndarray, batch_size: int, seed: int, shuffle: bool,
    pad_id: int = 0,
) -> tf.data.Dataset:
    """((ids (B, W) int32, mask (B, W) bool), labels (B,) int32) batches of similar-length sequences.

    Shuffled (differently each epoch, from ``seed``) sequences are sorted by length within windows of 20 batches,
    cut into batches, and the batches shuffled, so little compute goes into padding. Widths W are multiples of 8.
    """
    lengths = np.array([len(s) for s in sequences])
    window = batch_size * 20
    epoch = [0]

    def batches():
        rng = np.random.default_rng([seed, epoch[0]])
        epoch[0] += 1
        order = rng.permutation(len(sequences)) if shuffle else np.argsort(lengths, kind="stable")
        groups = []
        for start in range(0, len(order), window):
            part = order[start:start + window]
            part = part[np.argsort(lengths[part], kind="stable")]
            groups += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        for g in rng.permutation(len(groups)) if shuffle else range(len(groups)):
            chunk = groups[g]
            width = 8 * math.ceil(lengths[chunk].max() / 8)
            ids, _, mask = pad_batch([sequences[i] for i in chunk], pad_id, width=width)
            yield (ids, mask), labels[chunk]

    spec = ((tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.bool)),
            tf.TensorSpec([None], tf.int32))
    count = sum(math.ceil(min(window, len(sequences) - start) / batch_size)
                for start in range(0, len(sequences), window))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(2)


def state_sha256(model: TransformerEncoder) -> str:
    """sha256 over every weight (name and float32 bytes, names sorted): equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, value in sorted(model_state(model).items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def config_sha256(config: EncoderConfig) -> str:
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()


def write_training_curve(history: dict[str, list[float]], best_epoch: int | None, path: str | Path) -> Path:
    """``viz.training.build_training_curve`` as a PNG at ``path`` (through the app's image export).

    Raises:
        ExportError: no Chromium to draw it with, or the browser failed.
    """
    path = Path(path)
    path.write_bytes(figure_to_bytes(build_training_curve(history, best_epoch), "png"))
    return path


@dataclass(frozen=True, eq=False)
class Trained:
    """What ``train`` made: the trained encoder, its tokenizer, and the metrics written to metrics.json."""

    encoder: TransformerEncoder
    tokenizer: Tokenizer
    metrics: dict[str, Any]
    folder: Path


def train(
    splits: dict[str, Sequence[Example]],
    out: str | Path,
    settings: TrainSettings = TrainSettings(),
    data_description: dict[str, Any] | None = None,
    verbose: int = 1,
) -> Trained:
    """Train a tokenizer and the classic encoder on ``splits`` (train/validation/test); save everything to ``out``.

    The model starts from exactly ``initial_model(config, settings.seed)`` (its digest is stored as
    ``initial_weights_sha256``), trains with Adam under early stopping on validation accuracy (best epoch's
    weights kept), and is evaluated on test through the same compiled forward pass the app uses.

    Raises:
        DataError: an empty split, fewer than two labels, or a validation/test label never seen in training.
    """
    for name in SPLIT_NAMES:
        if not splits.get(name):
            raise DataError(f"the {name} split is empty: give more examples (every label needs at least 5)")
    started = time.perf_counter()
    labels = tuple(sorted({e.label for e in splits["train"]}))
    unknown = {e.label for name in ("validation", "test") for e in splits[name]} - set(labels)
    if len(labels) < 2 or unknown:
        raise DataError(f"training needs at least two labels, all seen in training; got {labels}, "
                        f"and {sorted(unknown)} only outside training")
    tokenizer = train_tokenizer([e.text for e in splits["train"]], settings.vocab_size)
    sequences = {name: encode_texts(tokenizer, [e.text for e in part], settings.max_len)
                 for name, part in splits.items()}
    targets = {name: np.array([labels.index(e.label) for e in part], dtype=np.int32) for name, part in splits.items()}

    config = classic_config(settings, tokenizer.get_vocab_size(), len(labels))
    encoder = initial_model(config, seed=settings.seed)
    initial_state, initial_sha256 = model_state(encoder), state_sha256(encoder)
    classifier = TextClassifier(encoder)
    train_data = length_batches(sequences["train"], targets["train"], settings.batch_size, settings.seed, True,
                                config.pad_token_id)
    validation_data = length_batches(sequences["validation"], targets["validation"], 64, settings.seed, False,
                                     config.pad_token_id)
    steps = int(train_data.cardinality()) * max(settings.epochs, 1)
    warmup = min(int(train_data.cardinality()), steps // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(steps - warmup, 1), warmup_target=settings.learning_rate, warmup_steps=warmup
    )
    classifier.compile(
        optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=settings.patience,
                                             restore_best_weights=True)
    fit_started = time.perf_counter()
    history: dict[str, list[float]] = {}
    if settings.epochs:
        result = classifier.fit(train_data, validation_data=validation_data, epochs=settings.epochs,
                                callbacks=[stopping], shuffle=False, verbose=verbose)
        history = {k: [float(v) for v in values] for k, values in result.history.items()}
    training_seconds = time.perf_counter() - fit_started
    best_epoch = stopping.best_epoch + 1 if history else None

    compiled = CompiledEncoder(encoder)
    predictions = {name: [labels[i] for i in batch_probabilities(compiled, sequences[name]).argmax(-1)]
                   for name in ("validation", "test")}
    out = Path(out)
    metadata = {
        "seed": settings.seed,
        "initial_weights_sha256": initial_sha256,
        "description": f"Classic encoder ({settings.layers} layers x {settings.heads} heads, d_model "
                       f"{settings.d_model}) trained by tutorial.train to predict {', '.join(labels)}",
        "max_train_tokens": settings.max_len,
    }
    save_folder(out, encoder, tokenizer.to_str(), labels, metadata)
    save_initial_weights(out, initial_state)
    metrics = {
        "labels": list(labels),
        "test_accuracy": accuracy(splits["test"], predictions["test"]),
        "test_accuracy_by_source": accuracy_by_source(splits["test"], predictions["test"]),
        "validation_accuracy": accuracy(splits["validation"], predictions["validation"]),
        "baselines": {
            "majority_class": majority_baseline(splits["train"], splits["test"]),
            "bag_of_words_logistic_regression": bag_of_words_baseline(tokenizer, splits, labels),
        },
        "examples": {name: len(part) for name, part in splits.items()},
        "test_examples_by_source": dict(Counter(e.source for e in splits["test"])),
        "epochs_run": len(history.get("loss", [])),
        "best_epoch": best_epoch,
        "training_seconds": round(training_seconds, 1),
        "total_seconds": None,
        "parameters": int(sum(np.prod(v.shape) for v in encoder.weights)),
        "settings": dataclasses.asdict(settings),
        "config_sha256": config_sha256(config),
        "initial_weights_sha256": initial_sha256,
        "weights_sha256": state_sha256(encoder),
        "data": data_description or {},
        "history": history,
        "machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    write_training_curve(history, best_epoch, out / "training_curve.png")
    metrics["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return Trained(encoder, tokenizer, metrics, out)


def _parser() -> argparse.ArgumentParser:
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(prog="python -m tutorial.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="your own label<TAB>text file (default: the committed "
                        "sentiment split in data/)")
    parser.add_argument("--out", type=Path, help="output folder (default: models/tutorial, or models/<file name> "
                        "with --data)")
    for field in dataclasses.fields(TrainSettings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name),
                            help=f"default {getattr(defaults, field.name)}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = TrainSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)})
    except ValueError as error:
        parser.error(str(error))
    try:
        if args.data is None:
            splits = load_splits(DATA_DIR)
            description = {"folder": "data/", "sha256": {n: file_sha256(DATA_DIR / f"{n}.tsv") for n in SPLIT_NAMES}}
            out = args.out or TUTORIAL_DIR
        else:
            splits = split_labelled(read_labelled_file(args.data))
            description = {"file": str(args.data), "sha256": file_sha256(args.data), "split": "80/10/10 by label"}
            out = args.out or MODELS_DIR / args.data.stem
        tf.config.experimental.enable_op_determinism()  # with the fixed seeds: the same run gives the same weights
        metrics = train(splits, out, settings, description).metrics
    except (DataError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    baselines = metrics["baselines"]
    print(f"test accuracy {metrics['test_accuracy']:.3f} (majority class "
          f"{baselines['majority_class']['test_accuracy']:.3f}, bag of words "
          f"{baselines['bag_of_words_logistic_regression']['test_accuracy']:.3f}); "
          f"{metrics['epochs_run']} epochs in {metrics['training_seconds']:.0f} s; saved to {out}")
    for source, value in metrics["test_accuracy_by_source"].items():
        print(f"  {source:<16} {value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
