"""Our Beam ``ModelHandler``: a Headlight model loaded once per worker (by the names and folders the command line
takes: ``encoder.sources.load_source``), and what one batch of sentences gives the index (``analyse_batch``).

``run_inference`` traces a ``corpus.sources.Batch`` with ``encoder.trace.trace_batch`` (the batch as the input
planned it, so every runner pads the same sentences together and gets the same floats) and returns one
``BatchResult``: per sentence its tokens and report-card sums (``analysis.report.trace_statistic_sums``), the
candidate top edges and query/key samples (bounded, see ``Floors``), and the chosen layers' contextual vectors.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import ModelHandler

from analysis.report import STATISTICS, trace_statistic_sums
from corpus.format import (
    DEFAULT_EXACT_MAX,
    DEFAULT_SHARD_ROWS,
    MAX_CONTEXT_ROWS,
    MAX_SAMPLE_PER_HEAD,
    MAX_TOP_K,
    CorpusError,
    model_checksum,
)
from corpus.sources import Batch, token_priority
from encoder.sources import LoadedModel, load_source

CELL_TOKENS = 64  # a forward pass pads at most batch_size sentences of this many tokens' worth (``cell_budget``)
MIN_WIDTH = 16  # the narrowest forward pass (``pass_shape``)
MAX_TOKENS_CAP = 512  # a longer trace holds its attention lazily (encoder.attention_store): not what a corpus needs
STATISTIC_LIST = tuple(STATISTICS)


@dataclass(frozen=True)
class CorpusOptions:
    """What a build computes (the manifest's ``options``).

    Args:
        model: a model name or folder, as ``python -m cli --model`` takes it.
        max_tokens: int, each sentence is cut to this many tokens (as ``analysis.report.iter_traces``).
        batch_size: int, sentences traced together.
        top_k: int, strongest edges kept per head.
        decile_statistic: str, the statistic of ``STATISTICS`` whose deciles get example sentences.
        sample_per_head: int, tokens whose queries and keys are sampled (every head samples the same tokens).
        context_layers: the hidden states indexed for nearest-context search (0: the embeddings); None: the last.
        exact_max: int, up to this many contexts a layer's FAISS index is exact (flat), past it IVF-PQ.
        shard_rows: int, past ``exact_max`` a layer's IVF-PQ index is written in files of at most this many contexts.
        bins: int, histogram bins per head and statistic for the deciles (``corpus.pipeline.HeadSummaryFn``).
        umap: bool, also the joint UMAP of each head's query/key sample (``qk_umap.parquet``; needs
            requirements-umap.txt).
    """

    model: str = "minilm"
    max_tokens: int = 128
    batch_size: int = 64
    top_k: int = 20
    decile_statistic: str = "entropy"
    sample_per_head: int = 2000
    context_layers: tuple[int, ...] | None = None
    exact_max: int = DEFAULT_EXACT_MAX
    shard_rows: int = DEFAULT_SHARD_ROWS
    bins: int = 1024
    umap: bool = False

    def __post_init__(self) -> None:
        for name, low, high in (("max_tokens", 2, MAX_TOKENS_CAP), ("batch_size", 1, 4096), ("top_k", 1, MAX_TOP_K),
                                ("sample_per_head", 0, MAX_SAMPLE_PER_HEAD), ("exact_max", 1, 10**9),
                                ("shard_rows", 1, MAX_CONTEXT_ROWS),
                                ("bins", 16, 1 << 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise CorpusError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        if not isinstance(self.umap, bool):
            raise CorpusError(f"umap must be True or False, got {self.umap!r}.")
        if self.decile_statistic not in STATISTICS:
            raise CorpusError(f"Unknown statistic {self.decile_statistic!r}: choose from {', '.join(STATISTICS)}.")

    def layers_of(self, num_layers: int) -> tuple[int, ...]:
        """The context layers, checked against a model of ``num_layers`` layers (hidden states 0 .. L)."""
        layers = (num_layers,) if self.context_layers is None else tuple(self.context_layers)
        for layer in layers:
            if not 0 <= layer <= num_layers:
                raise CorpusError(f"Context layer {layer} is out of range: the model has hidden states 0-{num_layers} "
                                  "(0: the embeddings).")
        return tuple(sorted(set(layers)))


@dataclass(frozen=True)
class ModelFacts:
    """What the manifest says of the model (``model`` there), without the model."""

    name: str
    checksum: str
    layers: int
    heads: int
    width: int
    key_value_heads: int
    head_dim: int
    first_special: bool


def model_facts(model: LoadedModel) -> ModelFacts:
    """The manifest's model entry: sizes, and the checksum of every weight (``corpus.format.model_checksum``), so
    an index names the exact weights that made it, whatever folder they were read from."""
    config = model.config
    first_special = bool(model.tokenizer.encode("a").special[0])
    return ModelFacts(model.name, model_checksum(model), config.num_layers, config.num_heads, config.d_model,
                      config.attention.key_value_heads or config.num_heads, config.head_dim, first_special)


def load_corpus_model(name: str) -> LoadedModel:
    """A model for a corpus build: any the command line opens, except an encoder-decoder (its decoder needs a
    target per sentence). Loaded once per process: the launcher's copy serves the in-memory runner's handler."""
    with _MODELS_LOCK:
        if name not in _MODELS:
            model = load_source(name)
            if model.is_encoder_decoder:
                raise CorpusError("A corpus index reads an encoder's (or decoder's) self-attention; an "
                                  "encoder-decoder's decoder needs a target per sentence: index its encoder's "
                                  "checkpoint instead.")
            _MODELS.clear()  # one model at a time
            _MODELS[name] = model
        return _MODELS[name]


_MODELS: dict[str, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


@dataclass
class Floors:
    """What a worker has seen so far, so a batch hands on only what can still make the corpus-wide cut: per head
    the ``top_k`` strongest edge weights (L * H, k), and the ``sample`` lowest token priorities. Anything below
    the running floor cannot be in the final top-k or sample, whatever other workers see; the final cut (``Top``)
    is then exact and the same on every runner."""

    top_k: int
    sample: int
    edges: np.ndarray | None = None  # (L * H, k) float32, -1 where nothing yet
    priorities: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def edge_floor(self, heads: int) -> np.ndarray:
        """(L * H,) the weight an edge needs to be handed on."""
        if self.edges is None:
            self.edges = np.full((heads, self.top_k), -1.0, dtype=np.float32)
        return self.edges.min(axis=1)

    def add_edges(self, weights: np.ndarray) -> None:
        """Fold in (L * H, n) candidate weights."""
        merged = np.concatenate([self.edges, weights], axis=1)
        self.edges = -np.partition(-merged, self.top_k - 1, axis=1)[:, :self.top_k]

    def sampled(self, priority: np.ndarray) -> np.ndarray:
        """(N,) bool: which of these tokens' priorities can still be among the ``sample`` lowest; folds them in."""
        if self.sample == 0:
            return np.zeros(len(priority), dtype=bool)
        keep = (np.ones(len(priority), dtype=bool) if len(self.priorities) < self.sample
                else priority < self.priorities[-1])
        self.priorities = np.sort(np.concatenate([self.priorities, priority[keep]]))[:self.sample]
        return keep


@dataclass
class BatchResult:
    """What one batch gives the index (S sentences, N tokens in all; L layers, H heads, K stats = 9).

    - ``index``: the batch's place in the input (``Batch.index``).
    - ``sentence`` (S,) int64, ``text`` S str, ``tokens`` S tuples of str, ``special`` S (T_i,) bool,
      ``n_tokens`` (S,) int32.
    - ``sums`` (S, K, L, H) float64 and ``counts`` (S, K) int64: each statistic's sum over the queries where it is
      defined, and how many they are (``trace_statistic_sums``); ``values`` = sums / max(counts, 1) (S, K, L, H),
      the sentence's own ``head_report``.
    - ``edges``: candidate top edges, a dict of (E,) arrays ``head`` (flat l * H + h), ``weight``, ``sentence``,
      ``query``, ``key``.
    - ``qk``: sampled tokens, a dict of (M,) arrays ``priority`` (uint64), ``sentence``, ``position``, ``token``,
      and ``queries`` (M, L, H, dh), ``keys`` (M, L, Hkv, dh) float32.
    - ``contexts``: {layer: (N, D) float32}, the hidden states of every token; ``positions`` (N,) int32 and
      ``token_sentence`` (N,) int64 say whose.
    """

    index: tuple[int, int]
    sentence: np.ndarray
    text: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    special: tuple[np.ndarray, ...]
    n_tokens: np.ndarray
    sums: np.ndarray
    counts: np.ndarray
    edges: dict[str, np.ndarray]
    qk: dict[str, np.ndarray]
    contexts: dict[int, np.ndarray]
    positions: np.ndarray
    token_sentence: np.ndarray

    @property
    def values(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)[:, :, None, None]


class HeadlightModelHandler(ModelHandler):
    """Beam ``ModelHandler`` (``RunInference``) of a Headlight model: ``load_model`` loads it once per worker by
    name (``load_corpus_model``); ``run_inference`` turns each ``Batch`` into a ``BatchResult``. Batches arrive
    whole (``batch_elements_kwargs``: one at a time), as ``corpus.sources.read_chunk`` cut them."""

    def __init__(self, options: CorpusOptions) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.options = options
        self.floors = Floors(options.top_k, options.sample_per_head)

    def load_model(self) -> LoadedModel:
        return load_corpus_model(self.options.model)

    def run_inference(self, batch: Sequence[Batch], model: LoadedModel,
                      inference_args: dict | None = None) -> list[BatchResult]:
        return [analyse_batch(model, item, self.options, self.floors) for item in batch]

    def get_num_bytes(self, batch: Sequence[Batch]) -> int:
        return sum(len(text.encode()) for item in batch for text in item.texts)

    def get_metrics_namespace(self) -> str:
        return "headlight_corpus"


def release_memory() -> None:
    """Hand freed memory back to the system: Arrow's pool (mimalloc keeps what it freed) and glibc's heap
    (``malloc_trim``: a traced batch leaves megabytes of freed chunks there). Called before each batch is traced
    and before each finishing step, so each starts from what is live, not from what an earlier, longer batch
    left behind; glibc's part is a no-op where there is no glibc."""
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it has ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def analyse_batch(model: LoadedModel, batch: Batch, options: CorpusOptions, floors: Floors) -> BatchResult:
    """Trace ``batch`` (``trace_corpus_batch``) and compute what the index needs of it (``BatchResult``)."""
    release_memory()
    warm_up(model, options)
    traces = trace_corpus_batch(model, batch.texts, options)
    sentence = np.asarray(batch.ids, dtype=np.int64)
    sums, counts = _report_sums(traces)
    n_tokens = np.array([t.num_tokens for t in traces], dtype=np.int32)
    token_sentence = np.repeat(sentence, n_tokens)
    positions = np.concatenate([np.arange(n, dtype=np.int32) for n in n_tokens])
    layers = options.layers_of(model.config.num_layers)
    return BatchResult(
        batch.index, sentence, batch.texts, tuple(t.tokens for t in traces),
        tuple(np.asarray(t.special, dtype=bool) for t in traces), n_tokens, sums, counts,
        _candidate_edges(traces, sentence, floors), _sampled_queries_keys(model, traces, sentence, floors, options),
        {layer: np.concatenate([t.hidden[layer] for t in traces]).astype(np.float32) for layer in layers},
        positions, token_sentence,
    )


def cell_budget(options: CorpusOptions) -> int:
    """Padded attention cells (rows x width^2) one forward pass may hold: ``batch_size`` sentences of
    min(``max_tokens``, ``CELL_TOKENS``) tokens. Each layer's attention of a pass is (rows, H, width, width)
    float32, so this bounds a pass's working memory by the options alone, whatever lengths the corpus holds."""
    return options.batch_size * min(options.max_tokens, CELL_TOKENS) ** 2


def pass_shape(longest: int, options: CorpusOptions, limit: int | None = None) -> tuple[int, int]:
    """(rows, width) of the forward pass whose longest sentence has ``longest`` tokens: width the next power of
    two (at least ``MIN_WIDTH``, at most ``max_tokens`` and the model's longest input ``limit``), rows as many as
    ``cell_budget`` allows at that width (at most ``batch_size``, at least 1). Every pass of a build has one of
    these few shapes (4 at the default 128 tokens), so the kernels TensorFlow keeps per shape are the same few
    whatever the corpus holds."""
    width = min(max(MIN_WIDTH, 1 << max(longest - 1, 0).bit_length()), options.max_tokens, limit or options.max_tokens)
    return max(min(options.batch_size, cell_budget(options) // width ** 2), 1), width


def padded_groups(lengths: Sequence[int], options: CorpusOptions, limit: int | None = None) -> list[list[int]]:
    """The sentences of a batch (their token counts ``lengths``), shortest first (ties in input order), cut into
    forward passes: a sentence joins the current pass while the pass, with it, still has at most the rows
    ``pass_shape`` allows at its width. Deterministic: a function of the lengths and options only.

    Example (``batch_size`` 4, ``max_tokens`` 128: 4 rows up to 64 tokens, 1 row at 128):
        >>> padded_groups([3, 100, 2, 10, 90], CorpusOptions(batch_size=4))
        [[2, 0, 3], [4], [1]]
    """
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and len(groups[-1]) < pass_shape(lengths[i], options, limit)[0]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def warm_up(model: LoadedModel, options: CorpusOptions) -> None:
    """Run every forward pass shape a build can use (``pass_shape``: a one-word sentence padded to each) and each
    width's query/key recomputation once, before the first batch, once per process, model and options. TensorFlow
    builds and keeps oneDNN kernels per shape; built up front, they are the same whatever lengths the corpus holds
    (a small corpus would otherwise meet fewer widths than a large one and hold less)."""
    key = (id(model), options.max_tokens, options.batch_size)
    with _MODELS_LOCK:
        if key in _WARM:
            return
        _WARM.add(key)
    from encoder.trace import trace_batch

    limit = model.tokenizer.max_length
    for rows, width in sorted({pass_shape(n, options, limit) for n in range(1, options.max_tokens + 1)}):
        trace = trace_batch(model, ["a"], max_tokens=options.max_tokens, batch_size=1, width=width, rows=rows)[0]
        sentence_queries_keys(model, trace.hidden, width)


_WARM: set[tuple[int, int, int]] = set()


def trace_corpus_batch(model: LoadedModel, texts: Sequence[str], options: CorpusOptions) -> list:
    """The traces (``EncoderTrace``, in ``texts``' order) of one corpus batch, run as ``padded_groups``, each pass
    padded to its ``pass_shape``: a batch of long sentences is several smaller passes, so the largest pass (and
    the memory it leaves behind) is the same whatever the corpus holds. Every runner calls this on the same
    batches, so they pad the same sentences together and get the same floats."""
    from encoder.trace import trace_batch

    lengths = [len(model.tokenizer.encode(text, None, options.max_tokens).tokens) for text in texts]
    traces: list = [None] * len(texts)
    limit = model.tokenizer.max_length
    for group in padded_groups(lengths, options, limit):
        rows, width = pass_shape(max(lengths[i] for i in group), options, limit)
        for i, trace in zip(group, trace_batch(model, [texts[i] for i in group], max_tokens=options.max_tokens,
                                                batch_size=len(group), width=width, rows=rows)):
            traces[i] = trace
    return traces


def _report_sums(traces) -> tuple[np.ndarray, np.ndarray]:
    """(S, K, L, H) float64 sums and (S, K) int64 counts of every statistic, in ``STATISTICS`` order."""
    per_trace = [trace_statistic_sums(trace) for trace in traces]
    sums = np.stack([np.stack([found[name][0] for name in STATISTIC_LIST]) for found in per_trace])
    counts = np.array([[found[name][1] for name in STATISTIC_LIST] for found in per_trace], dtype=np.int64)
    return sums, counts


def edge_mask(special: np.ndarray) -> np.ndarray:
    """(T, T) bool: the edges the top-edge lists consider: neither end a special token, and the key not the first
    token (where heads park attention; ``cls``, ``sep`` and ``sink`` measure that). Self-edges count."""
    mask = ~special[:, None] & ~special[None, :]
    mask[:, 0] = False
    return mask


def _candidate_edges(traces, sentence: np.ndarray, floors: Floors) -> dict[str, np.ndarray]:
    """Each sentence's strongest ``top_k`` edges per head that reach the worker's running floor."""
    found: dict[str, list[np.ndarray]] = {name: [] for name in ("head", "weight", "sentence", "query", "key")}
    for trace, number in zip(traces, sentence):
        attention = np.asarray(trace.attention)  # (L, H, T, T)
        layers, heads, t, _ = attention.shape
        flat = np.where(edge_mask(np.asarray(trace.special, dtype=bool)), attention, -1.0)
        flat = flat.reshape(layers * heads, t * t)
        k = min(floors.top_k, t * t)
        best = np.argpartition(-flat, k - 1, axis=1)[:, :k]  # (L * H, k)
        weights = np.take_along_axis(flat, best, axis=1)
        floor = floors.edge_floor(layers * heads)
        head, column = np.nonzero((weights >= floor[:, None]) & (weights >= 0))
        if len(head):
            cells = best[head, column]
            found["head"].append(head.astype(np.int32))
            found["weight"].append(weights[head, column].astype(np.float32))
            found["sentence"].append(np.full(len(head), number, dtype=np.int64))
            found["query"].append((cells // t).astype(np.int32))
            found["key"].append((cells % t).astype(np.int32))
            floors.add_edges(np.where((weights >= 0), weights, -1.0).astype(np.float32))
    empty = {"head": np.int32, "weight": np.float32, "sentence": np.int64, "query": np.int32, "key": np.int32}
    return {name: np.concatenate(parts) if parts else np.zeros(0, dtype=empty[name]) for name, parts in found.items()}


def _sampled_queries_keys(model: LoadedModel, traces, sentence: np.ndarray, floors: Floors,
                          options: CorpusOptions) -> dict[str, np.ndarray]:
    """The tokens of this batch that can still be in the sample (``Floors.sampled``), with every layer's queries
    and keys (``sentence_queries_keys``, padded to the width of the sentence's ``pass_shape``)."""
    lengths = [trace.num_tokens for trace in traces]
    owners = np.repeat(sentence, lengths)
    positions = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
    priority = token_priority(owners, positions)
    keep = floors.sampled(priority)
    rows = np.repeat(np.arange(len(traces)), lengths)[keep]
    tokens = np.array([token for trace in traces for token in trace.tokens], dtype=object)[keep]
    config = model.config
    heads, kv = config.num_heads, config.attention.key_value_heads or config.num_heads
    queries = np.zeros((len(rows), config.num_layers, heads, config.head_dim), np.float32)
    keys = np.zeros((len(rows), config.num_layers, kv, config.head_dim), np.float32)
    for row in np.unique(rows):
        picked = np.flatnonzero(rows == row)
        found = sentence_queries_keys(model, traces[row].hidden,
                                      pass_shape(lengths[row], options, model.tokenizer.max_length)[1])
        queries[picked], keys[picked] = found[0][:, positions[keep][picked]].swapaxes(0, 1), \
            found[1][:, positions[keep][picked]].swapaxes(0, 1)
    return {"priority": priority[keep], "sentence": owners[keep], "position": positions[keep], "token": tokens,
            "queries": queries, "keys": keys}


def sentence_queries_keys(model: LoadedModel, hidden: np.ndarray, width: int | None = None,
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(L, T, H, dh) queries and (L, T, Hkv, dh) keys of one sentence, from each layer's ``queries_keys`` on the
    hidden state it read (``hidden`` (L + 1, T, D)): as ``encoder.attention_store.RecomputedQueriesKeys``, one
    sentence at a time, so a token's vectors do not depend on what else was in its batch. ``width``: run it
    zero-padded to this many tokens (queries and keys are per token; the padding's are dropped), so the shapes
    TensorFlow builds kernels for are a few widths, not every sentence length."""
    from keras import ops

    encoder = model.model
    t = hidden.shape[1]
    padded = np.zeros((hidden.shape[0], max(width or t, t), hidden.shape[2]), hidden.dtype)
    padded[:, :t] = hidden
    bias = encoder.positions.row_context(padded.shape[1])
    found = [[ops.convert_to_numpy(part)[0, :t]
              for part in block.queries_keys(ops.convert_to_tensor(padded[layer][None]), bias)]
             for layer, block in enumerate(encoder.encoder_layers)]
    return np.stack([q for q, _ in found]), np.stack([k for _, k in found])
