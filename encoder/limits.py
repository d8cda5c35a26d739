"""What a checkpoint folder may ask for, checked before anything is allocated: a 240-byte folder must not make the
server build a model of a trillion parameters.

Three checks, in the order ``encoder.checkpoints.load_hf_folder`` runs them, each cheap and pure:

1. ``check_config_fields``: the sizes ``config.json`` gives, before a family maps them (ALBERT's mapping loops over
   the layers), within ``BOUNDS``.
2. ``check_config``: the mapped ``EncoderConfig`` within ``BOUNDS`` (sizes a family derives, such as GPT-2's
   ``4 * n_embd``) and its ``parameter_count`` at most the operator's ``HEADLIGHT_MAX_PARAMETERS``.
3. ``read_headers`` + ``check_tensors``: the safetensors headers (names, dtypes, shapes; no tensor read) agree
   with the file sizes and with the config: the word embeddings have its vocabulary and width, and the files hold
   at least half the numbers the config implies, so a tiny file cannot make us allocate a big model.

The bounds are generous: the largest published encoders (XLM-RoBERTa-XL: 36 layers, width 2560, 250,002 tokens),
GPT-3-sized shapes (96 layers, 96 heads, width 12,288) and today's decoders (Gemma's 256k vocabularies and head
size 256, Llama 3.1's 131,072 positions, Phi-3's 262,144-token window) pass; the parameter cap is what limits a real
model (``parameter_count`` counts what decoders have: key/value heads, an explicit head size, gated MLPs, RMSNorms,
q/k norms, sandwich norms, an untied LM head).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encoder.config import EncoderConfig
from encoder.errors import CheckpointError

CONFIG_BYTES = 4 * 2**20  # largest config.json read (a classifier with 100,000 labels fits)


@dataclass(frozen=True)
class Bound:
    """What a size counts (for messages) and the smallest and largest value ``config.json`` may give."""

    what: str
    low: int
    high: int


POSITIONS = 524_288  # the longest context (and sliding window) a config may give: 2^19


BOUNDS = {  # a size of the mapped config (an EncoderConfig attribute, or ``GROUPED``) -> its bound
    "num_layers": Bound("layers", 1, 96),
    "num_heads": Bound("attention heads", 1, 128),
    "key_value_heads": Bound("key/value heads", 1, 128),
    "head_dim": Bound("dimensions per head", 1, 1_024),
    "d_model": Bound("hidden width", 1, 16_384),
    "dff": Bound("feed-forward width", 1, 65_536),
    "embedding_size": Bound("embedding width", 1, 16_384),
    "vocab_size": Bound("tokens in the vocabulary", 1, 1_000_000),
    "max_positions": Bound("positions", 1, POSITIONS),
    "window": Bound("positions in a sliding window", 0, POSITIONS),
    "type_vocab_size": Bound("token types", 0, 1_024),
    "num_layer_groups": Bound("layer groups", 1, 96),
    "num_classes": Bound("classes", 0, 100_000),
    "relative_attention_buckets": Bound("relative-position buckets", 0, 4_096),
    "max_distance": Bound("positions of relative distance", 1, POSITIONS),
    "projection": Bound("dimensions of the text projection", 0, 16_384),
}
GROUPED = {  # the bounded sizes an EncoderConfig has no flat attribute for
    "key_value_heads": lambda config: config.attention.key_value_heads,
    "head_dim": lambda config: config.head_dim,
    "window": lambda config: max(config.attention.windows, default=0),
    "max_distance": lambda config: getattr(config.positions, "max_distance", 1),
    "projection": lambda config: config.head.projection,
}
CONFIG_FIELDS = {  # config.json name (every family's) -> the bounded size it sets
    "num_hidden_layers": "num_layers", "n_layer": "num_layers", "n_layers": "num_layers",
    "num_attention_heads": "num_heads", "n_head": "num_heads", "n_heads": "num_heads",
    "num_key_value_heads": "key_value_heads", "head_dim": "head_dim",
    "hidden_size": "d_model", "n_embd": "d_model", "dim": "d_model",
    "intermediate_size": "dff", "n_inner": "dff", "hidden_dim": "dff",
    "embedding_size": "embedding_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_positions", "n_positions": "max_positions",
    "sliding_window": "window", "local_attention": "window",
    "type_vocab_size": "type_vocab_size",
    "num_hidden_groups": "num_layer_groups",
    "num_labels": "num_classes",
    "num_layers": "num_layers", "num_decoder_layers": "num_layers", "num_heads": "num_heads",  # T5
    "encoder_layers": "num_layers", "decoder_layers": "num_layers",  # BART
    "encoder_attention_heads": "num_heads", "decoder_attention_heads": "num_heads",
    "encoder_ffn_dim": "dff", "decoder_ffn_dim": "dff",
    "d_kv": "head_dim", "d_model": "d_model", "d_ff": "dff",
    "relative_attention_num_buckets": "relative_attention_buckets",
    "relative_attention_max_distance": "max_distance",
    "projection_dim": "projection",  # CLIP
}
WORD_EMBEDDINGS = ("embeddings.word_embeddings.weight", "wte.weight",  # BERT-like families, GPT-2 (prefix stripped)
                   "embeddings.tok_embeddings.weight",  # ModernBERT
                   "embed_tokens.weight",  # the decoders (Llama, Qwen, Gemma, ...), T5's encoder (prefix stripped)
                   "embeddings.token_embedding.weight",  # CLIP's text model
                   "shared.weight")  # T5
MIN_STORED_FRACTION = 0.5  # of the config's parameters that the safetensors files must hold
HEADER_BYTES = 4 * 2**20  # largest safetensors header we parse (a 96-layer model's is under 100 kB)
# The float types read (bfloat16, which NumPy lacks, by ``encoder.checkpoints``: exactly, its 16 bits shifted up).
FLOAT_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
# Integer buffers some checkpoints keep beside the weights (BERT's ``embeddings.position_ids``); never ported.
BUFFER_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8}


@dataclass(frozen=True)
class TensorHeader:
    """One tensor as a safetensors header describes it (nothing read from the data): its dtype, its shape and where
    its bytes lie in the file (``start`` counts from the file's first byte)."""

    dtype: str
    shape: tuple[int, ...]
    start: int = 0

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def check_config_fields(hf: Mapping[str, Any]) -> None:
    """Refuse a size in ``config.json`` outside ``BOUNDS``, not a whole number (``true`` included), or key/value
    heads that do not divide the attention heads, before a family maps them.

    Values that are no number at all (text, lists; ``null`` where a family allows it) are left to the family, which
    reports a field of the wrong kind.
    """
    for name, field in CONFIG_FIELDS.items():
        if isinstance(hf.get(name), bool):
            raise CheckpointError(f"config.json's {name} is not a whole number ({BOUNDS[field].what}).")
        value = _number(hf.get(name))
        if value is None:
            continue
        bound = BOUNDS[field]
        if value < bound.low:
            raise CheckpointError(f"config.json's {name} must be at least {bound.low} ({bound.what}).")
        if value > bound.high:
            raise CheckpointError(
                f"config.json asks for more {bound.what} than Headlight runs ({name}: at most {bound.high:,}).")
        if not float(value).is_integer():
            raise CheckpointError(f"config.json's {name} is not a whole number ({bound.what}).")
    heads, groups = _number(hf.get("num_attention_heads")), _number(hf.get("num_key_value_heads"))
    if heads is not None and groups is not None and heads % groups:
        raise CheckpointError("config.json's num_key_value_heads must divide num_attention_heads (each key/value "
                              "head serves the same number of query heads).")


def _number(value: Any) -> int | float | None:
    """``value`` as a number when it is one (or text of one: the families read "12" as 12), else None."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parameter_count(config: EncoderConfig) -> int:
    """The number of weights ``TransformerEncoder(config)`` creates, from the config alone (shared layer groups
    counted once); tests pin it to the built model's count for every family."""
    d, e, f = config.d_model, config.embedding_width, config.dff
    h, kv, dh = config.num_heads, config.key_value_heads, config.head_dim
    rows = config.table_rows if config.positional == "learned" else 0
    embeddings = (config.vocab_size + rows + config.type_vocab_size) * e
    b = 1 if config.use_bias else 0  # ModernBERT's dense layers and norms have no biases
    rms = config.block.norm == "rmsnorm"  # an RMS norm has a weight and no bias
    norm = d if rms else (1 + b) * d
    embeddings += (e if rms else (1 + b) * e) if config.embedding_layer_norm else 0
    embeddings += e * d + d if e != d else 0
    qkv_bias, output_bias = config.attention_biases
    attention = d * (h + 2 * kv) * dh + h * dh * d + qkv_bias * (h + 2 * kv) * dh + output_bias * d
    attention += 2 * dh if config.attention.qk_norm else 0  # the query and key norms (one weight over dh each)
    inner = 2 * f if config.gated_feed_forward else f  # a gated MLP's input projection is twice as wide
    feed_forward = d * inner + b * inner + f * d + b * d
    layer = attention + feed_forward + (4 if config.block.sandwich_norms else 2) * norm
    layer += attention + norm if config.attention.cross else 0  # a decoder's cross-attention and its norm
    tables = config.num_layers if getattr(config.positions, "per_layer", False) else 1  # umT5: one per layer
    embeddings += config.relative_attention_buckets * config.num_heads * tables  # MPNet's and T5's bias tables
    if config.relative_attention:  # DeBERTa's relative embeddings (+ norm), own position projections per layer
        embeddings += 2 * config.relative_span * d + (2 * d if config.norm_rel_ebd else 0)
        layer += 0 if config.share_att_key else len(config.pos_att_type) * (d * d + d)
    embeddings -= 0 if config.first_attention_norm else norm  # ModernBERT's first layer has no attention norm
    heads = norm if config.final_norm else 0
    if config.num_classes:
        heads += d * d + d if config.classifier_activation else 0
        heads += d * config.num_classes + config.num_classes
    heads += d * config.head.projection  # CLIP's text projection (no bias)
    if config.head.lm_head and not config.head.tie_embeddings:
        heads += d * config.vocab_size
    heads += config.vocab_size if config.head.logit_bias else 0  # BART's final_logits_bias
    return embeddings + (config.num_layer_groups or config.num_layers) * layer + heads


def check_config(config: EncoderConfig, max_parameters: int, others: int = 0) -> None:
    """Refuse a mapped config beyond ``BOUNDS`` or with more than ``max_parameters`` weights (counting ``others``
    besides: the other stack of an encoder-decoder)."""
    for field, bound in BOUNDS.items():
        size = GROUPED[field](config) if field in GROUPED else getattr(config, field)
        if size > bound.high:
            raise CheckpointError(f"config.json asks for more {bound.what} than Headlight runs "
                                  f"(at most {bound.high:,}).")
    if parameter_count(config) + others > max_parameters:
        raise CheckpointError(
            f"config.json describes a model larger than this server runs (at most {max_parameters:,} parameters; "
            "the operator sets the limit with HEADLIGHT_MAX_PARAMETERS).")


def read_headers(files: list[Path]) -> dict[str, TensorHeader]:
    """Every tensor's dtype and shape from the headers of ``files`` (no tensor is read).

    Raises:
        CheckpointError: a header that is damaged, or describes data beyond the end of its file.
    """
    tensors: dict[str, TensorHeader] = {}
    for file in files:
        tensors.update(_read_header(file))
    return tensors


def _read_header(file: Path) -> dict[str, TensorHeader]:
    """One file's header: an 8-byte little-endian length, then that many bytes of JSON, then the data."""
    damaged = CheckpointError(f"{file.name} is not a readable safetensors file: its header is damaged or the file "
                              "is cut short; save the weights again (safetensors).")
    try:
        with file.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little")
            data_bytes = file.stat().st_size - 8 - length
            if len(prefix) < 8 or length > HEADER_BYTES or data_bytes < 0:
                raise damaged
            header = json.loads(handle.read(length))
    except (OSError, ValueError, RecursionError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise damaged from error
    if not isinstance(header, dict):
        raise damaged
    header.pop("__metadata__", None)
    tensors = {}
    for name, entry in header.items():
        tensor = _tensor(entry, data_bytes, 8 + length)
        if tensor is None:
            raise damaged
        tensors[name] = tensor
    return tensors


def _tensor(entry: Any, data_bytes: int, data_start: int) -> TensorHeader | None:
    """A header entry as a TensorHeader, or None when it is malformed or its bytes are not all in the file.

    Raises:
        CheckpointError: a dtype Headlight does not read.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        return None
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _whole_numbers(shape) or not _whole_numbers(offsets) or len(offsets) != 2:
        return None
    width = FLOAT_BYTES.get(entry["dtype"]) or BUFFER_BYTES.get(entry["dtype"])
    if width is None:
        raise CheckpointError(
            "The safetensors files hold a tensor of a type Headlight does not read (it reads bfloat16, float16, "
            "float32 and float64); save the weights as float32 (8-bit and other quantised weights included).")
    begin, end = offsets
    tensor = TensorHeader(entry["dtype"], tuple(shape), data_start + begin)
    return tensor if begin <= end <= data_bytes and end - begin == tensor.size * width else None


def _whole_numbers(values: Any) -> bool:
    return isinstance(values, list) and all(type(value) is int and value >= 0 for value in values)


def check_tensors(tensors: Mapping[str, TensorHeader], config: EncoderConfig,
                  decoder: EncoderConfig | None = None) -> None:
    """Refuse headers (names without the family's prefix) that cannot fill ``config``'s model (and an
    encoder-decoder's ``decoder``): word embeddings missing, of another shape or not floats, or far fewer stored
    numbers than the models have (the decoder's token table and LM head may be the stored shared embedding)."""
    name = next((name for name in WORD_EMBEDDINGS if name in tensors), None)
    if name is None:
        raise CheckpointError("The safetensors files have no word embeddings; they do not hold this model.")
    embeddings = tensors[name]
    if embeddings.shape != (config.vocab_size, config.embedding_width):
        raise CheckpointError("The word embeddings' shape disagrees with config.json's vocabulary size and width; "
                              "config.json and the weights do not belong together.")
    if embeddings.dtype not in FLOAT_BYTES:
        raise CheckpointError("The word embeddings are not floats; save the weights again (float32).")
    stored = sum(tensor.size for tensor in tensors.values() if tensor.dtype in FLOAT_BYTES)
    needed = parameter_count(config)
    if decoder is not None:
        needed += max(parameter_count(decoder) - 2 * decoder.vocab_size * decoder.d_model, 0)
    if stored < MIN_STORED_FRACTION * needed:
        raise CheckpointError(
            "The safetensors files hold far fewer weights than config.json describes (less than half): they are "
            "incomplete, or config.json belongs to another model.")
