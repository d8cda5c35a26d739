"""The Corpus tab: what every head does over a corpus, read from an index folder that ``python -m cli corpus build``
wrote (docs/corpus.md). The operator allows folders with ``HEADLIGHT_CORPUS_ROOTS`` (``encoder.settings``); the tab
lists the indexes found under them and opens the one picked through ``corpus.index.CorpusIndex.open``, which
validates every file before use. Then: the layers x heads map of a statistic (click a head), that head's strongest
edges and a sentence at each decile as token strips (click one to open that sentence in every view), its query-key
scatter, and "similar contexts": the nearest contexts in the corpus of a token of this text, when the index was
built with this model (its checksum). Figures come from ``viz.corpus``; each downloads with its numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go
import streamlit as st

from analysis import rows_to_csv, to_json
from encoder.errors import HeadlightError
from encoder.pieces import readable_piece
from encoder.settings import settings
from encoder.trace import EncoderTrace
from ui import cache
from ui.charts import figure_downloads_ui
from ui.clicks import SELECTED_CELL, clicked_values
from ui.corpus_build import NEXT_INDEX, build_ui
from ui.text import plain
from viz.clicks import click_spec
from viz.corpus import (
    COLOR_BY,
    Strip,
    build_corpus_map,
    build_qk_scatter,
    build_strips,
    decile_strips,
    edge_strips,
    index_report,
    neighbour_strips,
    open_target,
    qk_rows,
    strip_rows,
)
from viz.options import ViewSettings

if TYPE_CHECKING:
    from corpus.index import CorpusIndex

INDEX_DEPTH = 2  # an index is a root itself, a folder in it, or a folder in one of those
MAX_SCANNED = 1000  # folders looked at per root when listing indexes (a huge root is not walked whole)
LIST_SECONDS = 30  # the list of indexes is read again after this long
OPEN_VIEW = "Heatmap"  # the tab a clicked example opens
EXAMPLES = ("strongest edges", "deciles")
NO_ROOTS = ("No corpus index is open to visitors of this server. Its operator allows folders of indexes with "
            "HEADLIGHT_CORPUS_ROOTS (docs/deploying.md); `python -m cli corpus build` writes an index.")


# ---------------------------------------------------------------------------------------------------------------
# Finding and opening an index


def find_indexes(roots: Sequence[Path], depth: int = INDEX_DEPTH, most: int = MAX_SCANNED) -> dict[str, Path]:
    """The index folders (a ``manifest.json`` inside) under ``roots``, at most ``depth`` folders down, each root
    looked at in at most ``most`` folders; label (the folder relative to its root, "." for the root itself; a
    later root's same name gets " (root 2)") -> folder. Symbolic links and hidden folders are skipped."""
    from corpus.format import MANIFEST

    found: dict[str, Path] = {}
    for number, root in enumerate(roots, start=1):
        level, seen = [root], 0
        for _ in range(depth + 1):
            following = []
            for folder in level:
                if (folder / MANIFEST).is_file() and not (folder / MANIFEST).is_symlink():
                    label = folder.relative_to(root).as_posix()
                    found[label if label not in found else f"{label} (root {number})"] = folder
                inside = _subfolders(folder, most - seen)
                following += inside
                seen += len(inside)
            level = following
    return dict(sorted(found.items()))


def _subfolders(folder: Path, most: int) -> list[Path]:
    """At most ``most`` folders in ``folder``, no symbolic links nor hidden ones (unreadable: none)."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if len(found) >= most:
                    break
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    found.append(Path(entry.path))
    except OSError:
        return []
    return found


@st.cache_data(ttl=LIST_SECONDS, show_spinner=False)
def _listed(roots: tuple[str, ...]) -> dict[str, str]:
    return {label: str(folder) for label, folder in find_indexes([Path(root) for root in roots]).items()}


@st.cache_resource(max_entries=4, show_spinner=False)
def _open_index(folder: str, stamp: tuple[int, int]) -> CorpusIndex:
    """The validated index in ``folder`` (shared by every session; ``stamp``, its manifest's size and time, opens a
    rebuilt index again)."""
    from corpus.index import CorpusIndex

    return CorpusIndex.open(folder, roots=settings().corpus_roots)


def open_index(folder: str) -> CorpusIndex:
    """The index in ``folder``, validated (``CorpusIndex.open`` under the allowed roots) and cached."""
    from corpus.format import MANIFEST

    try:
        stat = (Path(folder) / MANIFEST).stat()
    except OSError:
        stat = None
    return _open_index(folder, (stat.st_size, stat.st_mtime_ns) if stat else (0, 0))


@st.cache_data(max_entries=8, show_spinner=False)
def model_checksum(source: str) -> str:
    """The checksum of ``source``'s weights (``corpus.format.model_checksum``), what an index names its model by."""
    from corpus.format import model_checksum as checksum

    return checksum(cache.get_model(source))


def index_ui() -> CorpusIndex | None:
    """The index picked among those under the allowed roots, opened; None (with a message) when there is none or
    it cannot be opened."""
    roots = settings().corpus_roots
    if not roots:
        st.info(NO_ROOTS)
        return None
    listed = _listed(tuple(str(root) for root in roots))
    if not listed:
        st.info("No corpus index under the folders this server allows (an index is a folder with a manifest.json, "
                f"at most {INDEX_DEPTH} folders down). `python -m cli corpus build` writes one.")
        return None
    built = st.session_state.pop(NEXT_INDEX, None)  # an index this session just built: shown first
    label = next((label for label, folder in listed.items() if folder == built), None)
    if label is not None:
        st.session_state["corpus_index"] = label
    label = st.selectbox("Corpus index", list(listed), key="corpus_index", bind="query-params",
                         help="The indexes under the folders this server allows (HEADLIGHT_CORPUS_ROOTS).")
    try:
        return open_index(listed[label])
    except HeadlightError as error:
        st.error(f"That index cannot be opened. {plain(error)}")
    return None


def same_model_ui(index: CorpusIndex, source: str) -> bool:
    """Whether ``index`` was built with ``source``'s model (the same weights: its checksum); says so when not."""
    model = index.manifest["model"]
    counts = index.manifest["counts"]
    st.caption(f"{counts['sentences']:,} sentences, {counts['tokens']:,} tokens through {plain(model['name'])} "
               f"({index.num_layers} layers × {index.num_heads} heads).")
    try:
        same = model_checksum(source) == index.model_checksum
    except HeadlightError as error:
        st.warning(plain(error))
        return False
    if not same:
        st.warning(f"This index was built with another model ({plain(model['name'])}, other weights than the one "
                   "open here): its maps and examples are that model's; similar contexts and opening an example "
                   "at its head need the same model (pick it in the sidebar).")
    return same


# ---------------------------------------------------------------------------------------------------------------
# The tab


def corpus_ui(source: str, trace: EncoderTrace, shown: ViewSettings, stem: str) -> None:
    """The Corpus tab over the current ``trace`` of ``source`` (similar contexts start from its tokens; the map
    starts at the shown layer and head)."""
    index = index_ui()
    build_ui(source, _listed.clear)
    if index is None:
        return
    same = same_model_ui(index, source)
    stem = f"{stem}-corpus"
    layer, head = map_ui(index, shown, stem)
    style = trace.token_style if same else None  # a click opens the example at its head only with this model
    examples_ui(index, layer, head, stem, style)
    scatter_ui(index, layer, head, stem, style)
    if same:
        similar_ui(index, trace, shown.query, stem)


def map_ui(index: CorpusIndex, shown: ViewSettings, stem: str) -> tuple[int, int]:
    """The statistic picker and the corpus map; returns the selected head (clicked on the map or picked)."""
    statistic = st.selectbox("Statistic", list(index.statistics), key="corpus_statistic", bind="query-params")
    report = index_report({name: index.head_map(name) for name in index.statistics},
                          index.manifest["counts"]["sentences"], index.manifest["counts"]["tokens"],
                          index.manifest["model"].get("first_special", True),
                          index.manifest["model"].get("key_value_heads", 0))
    left, right = st.columns(2)
    for key, count, default in (("corpus_layer", index.num_layers, shown.layer),
                                ("corpus_head", index.num_heads, shown.head)):
        if st.session_state.get(key) is not None and not 0 <= st.session_state[key] < count:
            del st.session_state[key]  # another index, with fewer layers or heads
        with left if key == "corpus_layer" else right:
            st.number_input(f"{'Layer' if key == 'corpus_layer' else 'Head'} (or click the map)", 0, count - 1,
                            min(default, count - 1), key=key, bind="query-params")
    layer, head = int(st.session_state["corpus_layer"]), int(st.session_state["corpus_head"])
    fig = build_corpus_map(report, statistic, (layer, head), shown.colorscale)
    key = "chart-corpus-map"
    spec = click_spec(fig)

    def select() -> None:
        values = clicked_values(st.session_state.get(key) or {}, spec)
        if "layer" in values and "head" in values:
            st.session_state.update(corpus_layer=values["layer"], corpus_head=values["head"])

    _chart(key, fig, select)
    figure_downloads_ui("corpus-map", fig, stem, _numbers(report.rows()))
    st.dataframe(summary_rows(index.summary(layer, head)), hide_index=True)
    return layer, head


def summary_rows(summary: dict[str, dict]) -> list[dict]:
    """A head's ``CorpusIndex.summary`` as table rows: statistic, corpus mean, deciles q0..q10 over sentences, the
    sentences counted (4 decimals)."""
    return [{"statistic": name, "mean": round(row["mean"], 4),
             **{f"q{i}": round(value, 4) for i, value in enumerate(row["deciles"])}, "sentences": row["n_sentences"]}
            for name, row in summary.items()]


def examples_ui(index: CorpusIndex, layer: int, head: int, stem: str, style: str | None) -> None:
    """The head's strongest edges or a sentence at each decile, as token strips; a click opens the sentence."""
    statistic = index.manifest["options"]["decile_statistic"]
    which = st.segmented_control("Examples", EXAMPLES, default=EXAMPLES[0], required=True, key="corpus_examples",
                                 bind="query-params",
                                 format_func=lambda name: name if name != "deciles" else f"deciles of {statistic}")
    if which == EXAMPLES[0]:
        most = int(index.manifest["options"]["top_k"])
        count = st.slider("Edges", 1, max(most, 2), min(8, most), key="corpus_top") if most > 1 else most
        edges = index.top_examples(layer, head, count)
        if not edges:
            st.info("The index holds no edges for this head.")
            return
        sentences = {edge.sentence: index.sentence(edge.sentence) for edge in edges}
        strips = edge_strips(edges, sentences)
        title = f"Layer {layer}, head {head}: its {len(strips)} strongest attention edges in the corpus"
    else:
        examples = index.decile_examples(layer, head)
        if not examples:
            st.info("The index holds no decile examples for this head.")
            return
        sentences = {example.sentence: index.sentence(example.sentence) for example in examples}
        strips = decile_strips(examples, sentences, statistic)
        title = f"Layer {layer}, head {head}: a sentence at each decile of its {statistic}"
    fig = build_strips(strips, title, subtitle="red outline: the query, filled: the key it attends to · click a "
                                              "sentence to open it in every view")
    _strips_chart("corpus-examples", fig, strips, sentences, stem, (layer, head), style)


def scatter_ui(index: CorpusIndex, layer: int, head: int, stem: str, style: str | None) -> None:
    """The head's query-key scatter at its projection (PCA, or UMAP when the index has it: a choice shown only
    then), coloured by position or token; a click opens the point's sentence."""
    color_by = st.segmented_control("Colour the query-key scatter by", COLOR_BY, default=COLOR_BY[0], required=True,
                                    key="corpus_color", bind="query-params")
    projection = "pca"
    if len(index.projections) > 1:
        projection = st.segmented_control("Projection", index.projections, default=index.projections[0],
                                          required=True, key="corpus_projection", format_func=str.upper,
                                          bind="query-params", help=_projection_help(index))
    points = index.qk_points(layer, head, projection)
    if len(points.x) == 0:
        st.info("The index holds no query or key sample for this head.")
        return
    fig = build_qk_scatter(points, layer, head, color_by)
    key = "chart-corpus-qk"
    _chart(key, fig, lambda: _open(index, open_target(fig, st.session_state.get(key) or {}), None, (layer, head),
                                   style))
    figure_downloads_ui("corpus-qk" if projection == "pca" else f"corpus-qk-{projection}", fig, stem,
                        _numbers(qk_rows(points)))


def _projection_help(index: CorpusIndex) -> str:
    """What each projection is, with the index's UMAP parameters."""
    umap = index.umap_parameters or {}
    return ("PCA: the two leading principal components of the head's queries and keys together (distances along "
            "them are linear). UMAP: a non-linear map that keeps each point's nearest neighbours together "
            f"(`n_neighbors` {umap.get('n_neighbors')}, `min_dist` {umap.get('min_dist')}, seeded); distances between "
            "clusters mean little.")


def similar_ui(index: CorpusIndex, trace: EncoderTrace, query: int, stem: str) -> None:
    """"Similar contexts": a token of this text, its hidden state after a layer, its nearest contexts in the
    corpus (``CorpusIndex.nearest``)."""
    layers = list(index.context_layers)
    if not layers:
        st.info("This index keeps no contexts (none was asked for when it was built).")
        return
    st.markdown("**Similar contexts** · a token of this text, and the corpus' tokens whose hidden state after the "
                "layer is nearest (cosine)")
    a, b, c = st.columns(3)
    labels = [f"{i}: {token}" for i, token in enumerate(trace.readable_tokens)]
    with a:
        query = min(query, len(labels) - 1)  # the shown query, or the first token that is not special
        first = query if not trace.special[query] else next((i for i, s in enumerate(trace.special) if not s), query)
        token = st.selectbox("Token", range(len(labels)), index=first,
                             format_func=lambda i: labels[i], key="corpus_token")
    with b:
        layer = st.selectbox("After layer", layers, index=len(layers) - 1, key="corpus_context_layer",
                             help="0: the embeddings; l: the output of layer l")
    with c:
        k = st.slider("Contexts", 1, 50, 10, key="corpus_k")
    neighbours = index.nearest(layer, trace.hidden[layer][token], k)
    if not neighbours:
        st.info("No context found.")
        return
    sentences = {found.sentence: index.sentence(found.sentence) for found in neighbours}
    strips = neighbour_strips(neighbours, sentences)
    fig = build_strips(strips, f"Contexts nearest “{trace.readable_tokens[token]}” ({token}) after layer {layer}",
                       value_name="cosine", subtitle="click a sentence to open it in every view")
    _strips_chart("corpus-similar", fig, strips, sentences, stem, None, trace.token_style, "cosine")


# ---------------------------------------------------------------------------------------------------------------
# Charts, clicks and numbers


def _chart(key: str, fig: go.Figure, on_select: Callable[[], None]) -> None:
    st.plotly_chart(fig, theme=None, key=key, width="content", config={"displaylogo": False}, on_select=on_select,
                    selection_mode="points")


def _numbers(rows: list[dict]) -> dict[str, Callable[[], str]]:
    return {"csv": lambda: rows_to_csv(rows), "json": lambda: to_json(rows)}


def _strips_chart(name: str, fig: go.Figure, strips: list[Strip], sentences: dict, stem: str,
                  head: tuple[int, int] | None, style: str | None, value_name: str = "weight") -> None:
    """A strips figure whose clicks open the clicked sentence (at its strip's edge), and its downloads."""
    key = f"chart-{name}"
    by_sentence = {strip.sentence: strip for strip in strips}

    def clicked() -> None:
        target = open_target(fig, st.session_state.get(key) or {})
        _open(None, target, by_sentence, head, style, sentences)

    _chart(key, fig, clicked)
    texts = {sid: sentence.text for sid, sentence in sentences.items()}
    figure_downloads_ui(name, fig, stem, _numbers(strip_rows(strips, texts, value_name)))


def _open(index: CorpusIndex | None, target: tuple[int, int] | None, strips: dict[int, Strip] | None,
          head: tuple[int, int] | None, style: str | None, sentences: dict | None = None) -> None:
    """From a click callback: open the clicked corpus sentence (``target``: sentence, position) in every view
    (``opened_state``) and run the whole page again (a callback's rerun reruns the app, not just the views)."""
    if target is None:
        return
    sentence = sentences[target[0]] if sentences else index.sentence(target[0])
    st.session_state.update(opened_state(sentence, target[1], (strips or {}).get(target[0]), head, style))
    st.rerun()


def opened_state(sentence, position: int, strip: Strip | None, head: tuple[int, int] | None, style: str | None
                 ) -> dict:
    """The session state that opens corpus ``sentence`` (``CorpusSentence``) in every view: its text in the text
    box (no second sentence). With the index's model open (``style``, its token style, not None), also the Heatmap
    tab at ``head`` (layer, head), the query on the strip's query token (or the clicked ``position``) and its edge's
    cell selected."""
    state = {"text": sentence.text, "pair": ""}
    if style is None:
        return state
    query = strip.query if strip is not None and strip.query is not None else position
    token = sentence.tokens[query]
    state["query"] = f"{query}: {token if bool(sentence.special[query]) else readable_piece(token, style)}"
    if head is not None:
        state.update(layer=head[0], head=head[1], head_mode="one head", layer_mean=False)
    if strip is not None and strip.key is not None and strip.key != strip.query:
        state[SELECTED_CELL] = (query, strip.key)
    return {**state, "view": OPEN_VIEW}
