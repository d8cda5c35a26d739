"""The Corpus tab: its figures (``viz.corpus``) on real MiniLM traces, and the tab in the app (AppTest)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from analysis.report import STATISTICS, head_report
from encoder.attention_store import RecomputedQueriesKeys
from encoder.errors import HeadlightError, ViewError
from tests.support.app import open_downloads
from viz.corpus import (
    OPEN_FIELDS,
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
from viz.layout import HIGHLIGHT

TEXT = "The cat sat on the mat because it was tired."
OTHER = "A <b>bold</b> claim about [links](http://example.com) & $x$."


@pytest.fixture(scope="module")
def other(minilm):
    from encoder.trace import trace_text

    return trace_text(minilm, OTHER)


@pytest.fixture(scope="module")
def sentences(trace, other):
    """Two corpus sentences as the reader gives them (``CorpusSentence``: tokens, text), ids 40 and 7."""
    return {40: SimpleNamespace(tokens=trace.tokens, text=TEXT), 7: SimpleNamespace(tokens=other.tokens, text=OTHER)}


def _report(trace):
    report = head_report(trace)
    return index_report({name: report[name] for name in STATISTICS}, 1, trace.num_tokens)


def test_the_corpus_map_is_the_report_card_of_the_index_with_the_selected_head_outlined(trace):
    report = head_report(trace)
    fig = build_corpus_map(_report(trace), "previous", selected=(2, 3))
    heatmap = next(t for t in fig.data if t.type == "heatmap")
    np.testing.assert_allclose(heatmap.z, report["previous"], rtol=0, atol=1e-6)
    assert fig.layout.title.text == f"Corpus: attention to the previous token, 1 sentences ({trace.num_tokens} tokens)"
    cells = next(t for t in fig.data if t.name == "cells")
    assert cells.meta["click"] == ["layer", "head"] and len(cells.customdata) == 6 * 12
    selected = next(s for s in fig.layout.shapes if s.name == "selected")  # the whole cell of L2 H3, any aspect
    assert (selected.x0, selected.x1, selected.y0, selected.y1) == (2.5, 3.5, 1.5, 2.5)
    assert selected.line.color == HIGHLIGHT and "selected" not in {t.name for t in fig.data}
    with pytest.raises(ViewError, match="L6 H0"):
        build_corpus_map(_report(trace), "previous", selected=(6, 0))
    with pytest.raises(ViewError, match="sink"):
        index_report({"entropy": report["entropy"]}, 1, 13)


def test_top_edges_are_token_strips_with_the_key_filled_by_its_weight_and_an_arrow_from_the_query(trace, other,
                                                                                                  sentences):
    attention = trace.attention[2, 3]
    query, key = 6, int(np.argmax(attention[6]))  # "mat" and what it looks at most in L2 H3
    edges = [SimpleNamespace(sentence=40, query=query, key=key, weight=float(attention[query, key])),
             SimpleNamespace(sentence=7, query=3, key=1, weight=0.25)]
    strips = edge_strips(edges, sentences)
    fig = build_strips(strips, "Top edges")
    (bars,) = fig.data
    assert len(bars.y) == len(trace.tokens) + len(sentences[7].tokens)
    first = np.flatnonzero(bars.customdata[:, 0] == 40)
    assert bars.customdata[first, 1].tolist() == list(range(len(trace.tokens)))
    colours = np.asarray(bars.marker.color)
    assert colours[first[key]] == pytest.approx(attention[query, key], abs=1e-6)
    assert np.count_nonzero(colours[first]) == 1
    assert bars.marker.line.color[first[query]] == HIGHLIGHT and bars.marker.line.width[first[query]] == 3.0
    assert fig.layout.coloraxis.cmax == pytest.approx(attention[query, key], abs=1e-6)
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 2 and (arrows[0].ax < arrows[0].x) == (key > query)
    header = fig.layout.annotations[0].text
    assert header.startswith(f"#1 · “{trace.tokens[query]}” ({query}) → “{trace.tokens[key]}” ({key}) · weight")
    assert bars.meta == {"open": list(OPEN_FIELDS)}
    assert strips[1].header == f"#2 · “{other.tokens[3]}” (3) → “{other.tokens[1]}” (1) · weight 0.250 · sentence 7"


def test_strips_escape_the_corpus_text_and_say_what_each_example_is(other, sentences):
    """A corpus sentence is text from outside: its tokens and headers are escaped (no tag, no link rendered)."""
    deciles = [SimpleNamespace(decile=0, value=0.01, sentence=7), SimpleNamespace(decile=10, value=0.93, sentence=40)]
    strips = decile_strips(deciles, sentences, "sink")
    fig = build_strips(strips, "Deciles of sink")
    texts = list(fig.data[0].text)
    assert "&lt;" in texts and "<" not in "".join(texts)
    assert fig.layout.annotations[0].text == "decile 0 (q0) · sink 0.010 · sentence 7"
    assert not any(a.showarrow for a in fig.layout.annotations)
    assert np.count_nonzero(np.asarray(fig.data[0].marker.color)) == 0
    rows = strip_rows(strips, {7: OTHER, 40: TEXT})
    assert rows[0]["text"] == OTHER and rows[0]["weight"] is None and rows[1]["sentence"] == 40


def test_nearest_contexts_mark_their_token_coloured_by_the_cosine(trace, sentences):
    found = [SimpleNamespace(score=0.91, sentence=40, position=2, token="cat"),
             SimpleNamespace(score=0.55, sentence=7, position=1, token="a")]
    strips = neighbour_strips(found, sentences)
    fig = build_strips(strips, "Nearest contexts", value_name="cosine")
    colours = np.asarray(fig.data[0].marker.color)
    np.testing.assert_allclose(np.sort(colours[colours > 0]), [0.55, 0.91], atol=1e-6)
    assert fig.layout.coloraxis.colorbar.title.text == "cosine"
    assert strip_rows(strips, {}, "cosine")[0]["cosine"] == pytest.approx(0.91)
    with pytest.raises(ViewError, match="outside sentence 40"):
        Strip(40, trace.tokens, "x", query=len(trace.tokens))
    with pytest.raises(ViewError, match="no sentences"):
        build_strips([], "empty")


@pytest.fixture(scope="module")
def points(minilm, trace):
    """Layer 2, head 3's real queries and keys of the trace, projected together on their first two principal
    components (what an index's ``qk_sample`` holds for a one-sentence corpus)."""
    queries, keys = RecomputedQueriesKeys(minilm.model, trace.hidden).layer(2)
    vectors = np.concatenate([queries[:, 3], keys[:, 3]]).astype(np.float64)
    centred = vectors - vectors.mean(axis=0)
    projected = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    count = trace.num_tokens
    return SimpleNamespace(kind=np.array(["query"] * count + ["key"] * count), x=projected[:, 0], y=projected[:, 1],
                           sentence=np.full(2 * count, 40), position=np.tile(np.arange(count), 2),
                           token=np.array(list(trace.tokens) * 2))


def test_the_query_key_scatter_draws_queries_and_keys_apart_in_webgl_coloured_by_position(points, trace):
    fig = build_qk_scatter(points, 2, 3)
    assert [(t.type, t.name, t.marker.symbol) for t in fig.data] == [("scattergl", "queries", "circle"),
                                                                     ("scattergl", "keys", "diamond")]
    np.testing.assert_allclose(fig.data[0].x, points.x[: trace.num_tokens], atol=1e-5)
    assert fig.data[1].marker.color.tolist() == list(range(trace.num_tokens))
    assert fig.layout.coloraxis.cmax == trace.num_tokens - 1
    assert fig.data[0].customdata[5].tolist() == [40, 5]
    assert fig.layout.title.text.startswith(f"Layer 2, head 3: {trace.num_tokens} queries and {trace.num_tokens} keys")


def test_the_scatter_coloured_by_token_gives_each_frequent_token_a_colour_and_greys_the_rest(points):
    fig = build_qk_scatter(points, 2, 3, color_by="token")
    assert sum(len(t.x) for t in fig.data) == len(points.x)
    the = [t for t in fig.data if t.legendgroup == "the"]
    assert len(the) == 2 and the[0].marker.color == the[1].marker.color and [t.showlegend for t in the] == [True,
                                                                                                           False]
    assert all(len(t.x) == 2 for t in the)  # "the" twice, as a query and as a key
    assert fig.data[-1].legendgroup == "other tokens"
    with pytest.raises(ViewError, match="color_by"):
        build_qk_scatter(points, 2, 3, color_by="sentence")
    rows = qk_rows(points)
    assert rows[0] == {"kind": "query", "sentence": 40, "position": 0, "token": "[CLS]", "projection": "pca",
                       "x": pytest.approx(points.x[0]), "y": pytest.approx(points.y[0])}


def test_a_click_on_a_strip_token_or_a_scatter_point_names_its_sentence_and_position(points, sentences):
    strips = build_strips(edge_strips([SimpleNamespace(sentence=7, query=2, key=1, weight=0.5)], sentences), "x")
    assert open_target(strips, {"selection": {"points": [{"curve_number": 0, "customdata": [7, 4]}]}}) == (7, 4)
    scatter = build_qk_scatter(points, 2, 3)
    event = {"selection": {"points": [{"curve_number": 1, "customdata": {"0": 40, "1": 9}}]}}
    assert open_target(scatter, event) == (40, 9)
    assert open_target(scatter, {"selection": {"points": [{"curve_number": 5, "customdata": [1, 2]}]}}) is None
    assert open_target(scatter, {}) is None


# --- the tab in the app -----------------------------------------------------------------------------------------


def test_find_indexes_lists_folders_with_a_manifest_up_to_two_down_without_links_or_hidden_ones(tmp_path):
    from ui.corpus import find_indexes

    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first / "wiki", first / "news" / "2024", first / "a" / "b" / "too-deep", first / ".hidden",
                   second / "wiki"):
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text("{}")
    (first / "linked").symlink_to(second / "wiki")
    found = find_indexes([first, second])
    assert found == {"news/2024": first / "news" / "2024", "wiki": first / "wiki", "wiki (root 2)": second / "wiki"}
    assert len(find_indexes([first], most=1)) <= 1  # one folder looked into: a huge root is not walked whole


def _corpus_app(monkeypatch, roots: str | None, state: dict | None = None, **params):
    """The app run once with ``roots`` allowed, the URL's ``params`` and the session ``state`` set first."""
    from streamlit.testing.v1 import AppTest

    if roots is None:
        monkeypatch.delenv("HEADLIGHT_CORPUS_ROOTS", raising=False)
    else:
        monkeypatch.setenv("HEADLIGHT_CORPUS_ROOTS", roots)
    at = AppTest.from_file("../app.py", default_timeout=180)
    for key, value in params.items():
        at.query_params[key] = value
    for key, value in (state or {}).items():
        at.session_state[key] = value
    return at.run()


def test_without_corpus_roots_there_is_no_corpus_tab(monkeypatch):
    at = _corpus_app(monkeypatch, None, view="Corpus")
    assert not at.exception
    assert "Corpus" not in [tab.label for tab in at.tabs]


def test_an_allowed_root_without_an_index_says_how_to_make_one(monkeypatch, tmp_path):
    at = _corpus_app(monkeypatch, str(tmp_path), view="Corpus")
    assert not at.exception, [e.value for e in at.exception]
    assert "Corpus" in [tab.label for tab in at.tabs]
    assert any("No corpus index under the folders this server allows" in info.value for info in at.info)
    assert str(tmp_path) not in "".join(info.value for info in at.info)


# --- the tab over a real index (MiniLM, a few test sentences) ---------------------------------------------------

CORPUS = [TEXT, "The keys to the cabinet are on the table.", "Where is the station?",
          "A wonderful, moving film with a brilliant cast.", "The animal didn't cross the street because it was tired.",
          "Take Care of My Cat offers a refreshingly different slice of Asian cinema."]


def build_corpus(root):
    """The index "minilm-six" of ``CORPUS`` through MiniLM, built in ``root`` by the pipeline (``corpus.build``, the
    in-memory DirectRunner): 5 edges a head, deciles of "previous", 40 sampled tokens, contexts after layers 0
    and 6."""
    from corpus.build import build_index
    from corpus.handler import CorpusOptions

    source = root / "sentences.txt"
    source.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    build_index(source, root / "minilm-six", CorpusOptions(batch_size=4, top_k=5, decile_statistic="previous",
                                                           sample_per_head=40, context_layers=(0, 6)))
    source.unlink()
    return root


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    """A root holding one index, "minilm-six" (``build_corpus``)."""
    return build_corpus(tmp_path_factory.mktemp("corpora"))


def _titles(at) -> list[str]:
    import json

    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]


def test_the_tab_shows_the_map_the_examples_the_scatter_and_similar_contexts_of_the_index(monkeypatch, corpus_root):
    import json

    from corpus.index import CorpusIndex

    at = _corpus_app(monkeypatch, str(corpus_root), view="Corpus", corpus_statistic="previous")
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="corpus_index").value == "minilm-six"
    assert not at.warning  # the index's model is the one open
    titles = _titles(at)
    assert titles == [f"Corpus: attention to the previous token, {len(CORPUS)} sentences "
                      f"({CorpusIndex.open(corpus_root / 'minilm-six').manifest['counts']['tokens']} tokens)",
                      "Layer 0, head 0: its 5 strongest attention edges in the corpus",
                      titles[2], titles[3]]
    assert titles[2].startswith("Layer 0, head 0: ") and titles[2].endswith("keys (joint PCA)")
    assert titles[3] == "Contexts nearest “the” (1) after layer 6"  # the query token, or the first not special
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    index = CorpusIndex.open(corpus_root / "minilm-six")
    heatmap = next(t for t in spec["data"] if t["type"] == "heatmap")
    np.testing.assert_allclose(_z(heatmap["z"]), index.head_map("previous"), atol=1e-6)
    assert {b.label for b in open_downloads(at).get("download_button")} >= {"HTML", "CSV (numbers)", "JSON (numbers)"}
    at.number_input(key="corpus_layer").set_value(2).run()
    at.number_input(key="corpus_head").set_value(3).run()
    assert _titles(at)[1] == "Layer 2, head 3: its 5 strongest attention edges in the corpus"
    at.segmented_control(key="corpus_examples").set_value("deciles").run()
    assert _titles(at)[1] == "Layer 2, head 3: a sentence at each decile of its previous"
    at.selectbox(key="corpus_token").set_value(2).run()  # "cat"
    assert _titles(at)[3] == "Contexts nearest “cat” (2) after layer 6"
    assert not at.exception


def _z(value) -> np.ndarray:
    import base64

    if isinstance(value, dict):
        shape = tuple(int(n) for n in str(value["shape"]).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).reshape(shape)
    return np.asarray(value, dtype=np.float64)


def test_an_opened_example_is_the_text_of_every_view_at_its_head_query_and_edge(monkeypatch, corpus_root):
    """What a click on an example sets (``ui.corpus.opened_state``; a click itself needs a browser) opens the
    sentence in the Heatmap at the head, its query token and its edge's cell."""
    from corpus.index import CorpusIndex
    from ui.corpus import opened_state

    index = CorpusIndex.open(corpus_root / "minilm-six")
    layer, head, edge = next((layer, head, e) for layer in range(2, 6) for head in range(12)
                             for e in index.top_examples(layer, head, 5) if e.query != e.key and e.sentence > 0)
    sentence = index.sentence(edge.sentence)
    (strip,) = edge_strips([edge], {edge.sentence: sentence})
    state = opened_state(sentence, 0, strip, (layer, head), "wordpiece")
    at = _corpus_app(monkeypatch, str(corpus_root), state)  # as the rerun after the click
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_area(key="text").value == CORPUS[edge.sentence]
    assert at.selectbox(key="query").value == f"{edge.query}: {sentence.tokens[edge.query]}"
    title = _titles(at)[0]
    assert title.startswith(f"Layer {layer}, head {head}")
    assert state["selected_cell"] == (edge.query, edge.key) and state["view"] == "Heatmap"


def test_an_index_of_other_weights_says_so_and_offers_no_similar_contexts(monkeypatch, corpus_root, tmp_path):
    import json
    import shutil

    from corpus.build import write_manifest

    folder = tmp_path / "other-weights"
    shutil.copytree(corpus_root / "minilm-six", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["model"]["checksum"] = "sha256:" + "0" * 64
    write_manifest(folder, manifest)
    at = _corpus_app(monkeypatch, str(tmp_path), view="Corpus")
    assert not at.exception, [e.value for e in at.exception]
    assert any("built with another model" in w.value for w in at.warning)
    assert len(_titles(at)) == 3  # the map, the examples, the scatter: no similar contexts


def test_a_hostile_index_is_refused_with_our_message_and_no_path(monkeypatch, corpus_root, tmp_path):
    import json
    import shutil

    from corpus.build import write_manifest

    folder = tmp_path / "hostile"
    shutil.copytree(corpus_root / "minilm-six", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../outside.parquet"] = {"bytes": 10, "rows": 1}
    write_manifest(folder, manifest)
    at = _corpus_app(monkeypatch, str(tmp_path), view="Corpus")
    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert error.value.startswith("That index cannot be opened.")
    assert str(tmp_path) not in error.value and not _titles(at)


def test_an_upload_is_built_in_a_background_process_one_at_a_time_and_its_failure_is_said(tmp_path):
    """``ui.corpus_build``: ``python -m cli corpus build`` in a subprocess (the page never imports Beam); its
    progress read from its log; a second build waits for the first; a failed build says our message."""
    from corpus.index import CorpusIndex
    from ui.corpus_build import start_build

    job = start_build("minilm", CORPUS, "my sentences!.txt", tmp_path)
    assert job.label.startswith("my-sentences-") and job.out.parent == tmp_path
    with pytest.raises(HeadlightError, match="Another visitor's index is being built"):
        start_build("minilm", CORPUS, "other.txt", tmp_path)
    assert job.process.wait(timeout=600) == 0, job.log.read_text()
    assert job.done() == len(CORPUS)
    index = CorpusIndex.open(job.out, roots=[tmp_path])
    assert index.num_sentences == len(CORPUS) and index.sentence(1).text == CORPUS[1]
    failed = start_build("no-such-model", CORPUS, "x.txt", tmp_path)
    assert failed.process.wait(timeout=600) != 0
    assert "no-such-model" not in str(tmp_path) and str(tmp_path) not in failed.failure()
    assert failed.failure() and not (failed.out / "manifest.json").exists()


def test_a_builds_folder_is_a_root_and_offers_building_an_index_of_an_upload(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADLIGHT_CORPUS_BUILDS", str(tmp_path))
    at = _corpus_app(monkeypatch, None, view="Corpus")
    assert not at.exception, [e.value for e in at.exception]
    assert "Corpus" in [tab.label for tab in at.tabs]
    assert [e.label for e in at.expander if e.label.startswith("Build")] == ["Build a small index from a text file"]
