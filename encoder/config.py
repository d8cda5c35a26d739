"""EncoderConfig: every hyperparameter of an encoder, for every family we run.

The classic encoder of the Keras/TensorFlow tutorial and the Hugging Face families (BERT, RoBERTa, DistilBERT,
ELECTRA, ALBERT, GPT-2, MPNet) differ in a handful of switches (where positions come from and where they start, the
activation, token types, an embedding layer norm and projection, shared layers, pre- or post-layer-norm, a causal
mask, a relative attention bias, the classifier head); one frozen dataclass covers them all so every layer takes
``config`` rather than a dozen keyword arguments.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

Positional = Literal["sinusoidal", "learned", "rotary", "none"]
Activation = Literal["relu", "gelu", "gelu_new"]
ACTIVATIONS = ("relu", "gelu", "gelu_new")
CLASSIFIER_ACTIVATIONS = ("tanh", "relu", "gelu")
# Fields added after the first saved models: ``to_dict`` writes them only when they differ from the default, so
# configs (and their hashes) of models saved before stay exactly as they were.
_LATER_FIELDS = {"position_offset": 0, "embedding_size": 0, "num_layer_groups": 0, "norm_first": False,
                 "final_norm": False, "causal": False, "classifier_activation": None,
                 "relative_attention_buckets": 0, "rope_theta": 0.0, "rope_local_theta": 0.0, "local_attention": 0,
                 "global_attention_every": 0, "gated_feed_forward": False, "use_bias": True,
                 "first_attention_norm": True, "relative_attention": "", "position_buckets": 0,
                 "max_relative_positions": 0, "pos_att_type": (), "share_att_key": False, "norm_rel_ebd": False}
RELATIVE_ATTENTION = ("", "disentangled")
POSITION_TERMS = ("c2p", "p2c")


@dataclass(frozen=True)
class EncoderConfig:
    """Hyperparameters of a Transformer encoder.

    Args:
        vocab_size: int, number of token ids.
        num_layers: int, stacked encoder layers (L).
        num_heads: int, attention heads per layer (H).
        d_model: int, hidden width (D); must be divisible by ``num_heads``.
        dff: int, width of the feed-forward inner layer.
        max_positions: int, longest input the model accepts (P, the positional table's rows).
        positional: "sinusoidal" (fixed table, the classic encoder), "learned" (BERT) or "rotary" (ModernBERT: no
            table; queries and keys are rotated by position, see ``rope_theta``) or "none" (nothing added to the
            input: DeBERTa-v3's positions act only inside attention, see ``relative_attention``).
        activation: "relu" (classic), "gelu" (BERT, exact erf form) or "gelu_new" (tanh form: ALBERT, GPT-2).
        type_vocab_size: int, token-type (segment) embeddings; 0 for none.
        scale_embeddings: bool, multiply token embeddings by sqrt(d_model) (classic encoder).
        embedding_layer_norm: bool, layer-normalise the summed embeddings (BERT).
        layer_norm_epsilon: float, epsilon of every layer norm.
        dropout: float, dropout rate (only active in training).
        pad_token_id: int, the id used to pad batches.
        num_classes: int, size of a classification head on top (0 for none).
        pooling: "mean" or "cls", how the classification head / sentence embedding pools tokens.
        normalize_embedding: bool, L2-normalise the pooled sentence embedding (sentence-transformers models).
        position_offset: int, the first position id (RoBERTa: ``pad_token_id + 1``); the positional table has
            ``max_positions + position_offset`` rows and token i gets row ``position_offset + i``.
        embedding_size: int, width of the token/position/type embeddings when it differs from ``d_model``
            (ELECTRA, ALBERT: projected to ``d_model`` after the embedding norm); 0 means ``d_model``.
        num_layer_groups: int, ALBERT's shared layers: the L layers use G weight groups, layer i group
            ``i * G // L``; 0 means every layer has its own weights.
        norm_first: bool, pre-layer-norm blocks (GPT-2): ``x + f(norm(x))`` instead of ``norm(x + f(x))``.
        final_norm: bool, a layer norm on the last hidden state (GPT-2's ``ln_f``).
        causal: bool, each token attends only to itself and earlier tokens.
        classifier_activation: None (the classifier reads the pooled state directly), or "tanh"/"relu"/"gelu":
            a dense layer of width ``d_model`` and that activation first (BERT/ALBERT pooler, RoBERTa/ELECTRA
            head, DistilBERT pre-classifier).
        relative_attention_buckets: int, MPNet's relative attention bias: a learned (buckets, H) table, read at
            the bucket of each key's distance from the query (``encoder.positional.relative_position_buckets``)
            and added to every layer's scaled logits; 0 for none.
        relative_attention: str, "" (none) or "disentangled" (DeBERTa-v2/v3): each logit is content->content plus
            the ``pos_att_type`` terms between content and a learned table of relative-position embeddings
            (``encoder.attention.DisentangledAttention``).
        position_buckets: int, DeBERTa's log buckets of relative distance (``encoder.positional.log_bucket_position``)
            per side; 0 for none (distances clipped at ``max_relative_positions``).
        max_relative_positions: int, DeBERTa's longest relative distance (the log buckets reach their last at it).
        pos_att_type: tuple of "c2p" (content->position) and "p2c" (position->content), the position terms of
            disentangled attention; the logits are scaled by ``sqrt(head_dim * (1 + len(pos_att_type)))``.
        share_att_key: bool, the position terms project the relative embeddings with the content query and key
            projections (DeBERTa-v3) instead of their own ``pos_query``/``pos_key`` projections.
        norm_rel_ebd: bool, a layer norm on the relative embeddings (DeBERTa-v3's ``norm_rel_ebd: layer_norm``).
        rope_theta: float, the rotary base of global layers (``positional`` "rotary"): dimension pair i of
            position p turns by ``p * rope_theta ** (-2i / head_dim)``.
        rope_local_theta: float, the rotary base of local (sliding-window) layers.
        local_attention: int, ModernBERT's local window: in a local layer query i sees key j only when
            ``|i - j| <= local_attention // 2``; 0 for none (every layer global).
        global_attention_every: int, with a local window, layer i is global when ``i % global_attention_every == 0``
            and local otherwise.
        gated_feed_forward: bool, GeGLU (ModernBERT): the inner layer is ``2 * dff`` wide, its first half
            activated times its second half.
        use_bias: bool, dense layers and layer norms have biases (False: ModernBERT).
        first_attention_norm: bool, a pre-norm first layer normalises its input (False: ModernBERT, whose
            embeddings are normalised already).

    Example:
        >>> EncoderConfig(vocab_size=100, num_layers=2, num_heads=4, d_model=32, dff=64).head_dim
        8
    """

    vocab_size: int
    num_layers: int
    num_heads: int
    d_model: int
    dff: int
    max_positions: int = 512
    positional: Positional = "sinusoidal"
    activation: Activation = "relu"
    type_vocab_size: int = 0
    scale_embeddings: bool = True
    embedding_layer_norm: bool = False
    layer_norm_epsilon: float = 1e-6
    dropout: float = 0.1
    pad_token_id: int = 0
    num_classes: int = 0
    pooling: Literal["mean", "cls"] = "mean"
    normalize_embedding: bool = False
    position_offset: int = 0
    embedding_size: int = 0
    num_layer_groups: int = 0
    norm_first: bool = False
    final_norm: bool = False
    causal: bool = False
    classifier_activation: str | None = None
    relative_attention_buckets: int = 0
    rope_theta: float = 0.0
    rope_local_theta: float = 0.0
    local_attention: int = 0
    global_attention_every: int = 0
    gated_feed_forward: bool = False
    use_bias: bool = True
    first_attention_norm: bool = True
    relative_attention: str = ""
    position_buckets: int = 0
    max_relative_positions: int = 0
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_layers", "num_heads", "d_model", "dff", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.positional not in ("sinusoidal", "learned", "rotary", "none"):
            raise ValueError(f"positional must be 'sinusoidal', 'learned', 'rotary' or 'none', got {self.positional!r}")
        if self.positional == "rotary" and (self.head_dim % 2 or not self.rope_theta > 1.0
                                            or not self.rope_local_theta > 1.0):
            raise ValueError("rotary positions need an even head size and rope_theta and rope_local_theta above 1")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.classifier_activation not in (None, *CLASSIFIER_ACTIVATIONS):
            raise ValueError(f"classifier_activation must be None or one of {', '.join(CLASSIFIER_ACTIVATIONS)}")
        for name in ("position_offset", "embedding_size", "num_layer_groups", "relative_attention_buckets",
                     "local_attention", "global_attention_every", "position_buckets", "max_relative_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self._check_disentangled()
        if self.relative_attention_buckets and (self.relative_attention_buckets < 4
                                                or self.relative_attention_buckets % 2):
            raise ValueError(f"relative_attention_buckets must be 0 or an even number of at least 4, "
                             f"got {self.relative_attention_buckets!r}")
        if self.num_layer_groups > self.num_layers:
            raise ValueError(f"num_layer_groups ({self.num_layer_groups}) exceeds num_layers ({self.num_layers})")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.type_vocab_size < 0 or self.num_classes < 0:
            raise ValueError("type_vocab_size and num_classes must be >= 0")

    def _check_disentangled(self) -> None:
        """DeBERTa's switches: a known kind, known position terms (kept as a tuple, JSON gives a list), a span."""
        object.__setattr__(self, "pos_att_type", tuple(self.pos_att_type))
        if self.relative_attention not in RELATIVE_ATTENTION:
            raise ValueError(f"relative_attention must be '' or 'disentangled', got {self.relative_attention!r}")
        unknown = [term for term in self.pos_att_type if term not in POSITION_TERMS]
        if unknown or len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ValueError(f"pos_att_type must hold distinct terms of {', '.join(POSITION_TERMS)}, "
                             f"got {self.pos_att_type!r}")
        if self.relative_attention and self.max_relative_positions < 1:
            raise ValueError("disentangled attention needs max_relative_positions of at least 1, "
                             f"got {self.max_relative_positions!r}")
        if self.position_buckets % 2 or (self.position_buckets and
                                         self.max_relative_positions - 1 <= self.position_buckets // 2):
            raise ValueError(f"position_buckets must be 0 or an even number below 2 * (max_relative_positions - 1), "
                             f"got {self.position_buckets!r} (max_relative_positions {self.max_relative_positions!r})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def is_local(self, layer: int) -> bool:
        """Whether layer ``layer`` attends only within the local window (ModernBERT's sliding-window layers)."""
        return bool(self.local_attention) and layer % (self.global_attention_every or 1) != 0

    @property
    def embedding_width(self) -> int:
        """Width of the embeddings before any projection (``embedding_size`` or ``d_model``)."""
        return self.embedding_size or self.d_model

    @property
    def relative_span(self) -> int:
        """Disentangled attention's relative embeddings per side (S): ``position_buckets`` when bucketed, else
        ``max_relative_positions``; the table has 2S rows, row ``S + bucket`` for a (query - key) bucket."""
        return self.position_buckets or self.max_relative_positions

    @property
    def table_rows(self) -> int:
        """Rows of the positional table: the usable positions plus the offset rows before them."""
        return self.max_positions + self.position_offset

    def to_dict(self) -> dict[str, Any]:
        """Every field; fields added later only when set (so older configs and their hashes are unchanged)."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {', '.join(unknown)}")
        return cls(**data)
