"""The corpus index reader (corpus.index), its FAISS side (corpus.vectors) and ``python -m cli corpus query``, on
an index the pipeline built from shipped test sentences through MiniLM (tests/support/corpus.py), compared with
the analysis module's own reports of the same sentences."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import cli
from analysis.report import corpus_head_report, head_report, iter_traces
from corpus.format import STATISTIC_NAMES, CorpusError, context_files, shard_name
from corpus.handler import CorpusOptions, edge_mask, trace_corpus_batch
from corpus.index import CorpusIndex
from corpus.vectors import (
    EXACT,
    IVFPQ,
    _trained_ivfpq,
    build_context_index,
    index_info,
    normalised,
    read_context_index,
    read_context_shards,
    search,
)
from encoder.errors import ViewError
from tests.support.corpus import build_test_index
from tests.support.models import write_tiny_bert_folder
from tutorial.dataset import load_splits


@pytest.fixture(scope="module")
def sentences():
    return [example.text for example in load_splits()["test"][:10]]


@pytest.fixture(scope="module")
def traces(minilm, sentences):
    """Each sentence's trace from the very forward passes the build ran (``trace_corpus_batch`` over its batches):
    a pass's padding changes float32 attention by ~1e-7, past these tests' 1e-9."""
    options = CorpusOptions(**OPTIONS)
    size = options.batch_size
    return [trace for start in range(0, len(sentences), size)
            for trace in trace_corpus_batch(minilm, sentences[start:start + size], options)]


OPTIONS = {"batch_size": 8, "top_k": 5, "decile_statistic": "previous", "sample_per_head": 40,
           "context_layers": (0, 6)}


@pytest.fixture(scope="module")
def folder(sentences, tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "index"
    build_test_index(sentences, folder, **OPTIONS)
    return folder


@pytest.fixture(scope="module")
def index(folder):
    return CorpusIndex.open(folder)


def test_the_index_describes_its_model(index, minilm, sentences):
    assert (index.num_layers, index.num_heads) == (6, 12)
    assert index.statistics == STATISTIC_NAMES and index.num_sentences == len(sentences)
    assert index.context_layers == (0, 6) and index.model_name == minilm.name
    assert index.context_index_info(6) == {"kind": EXACT, "rows": index.manifest["counts"]["tokens"], "width": 384,
                                           "shards": 1}


def test_head_map_is_the_corpus_report(index, traces):
    report = corpus_head_report(traces, distances=False)
    for statistic in STATISTIC_NAMES:
        np.testing.assert_allclose(index.head_map(statistic), report[statistic], rtol=0, atol=1e-9)


def test_head_map_is_near_the_report_cards_own_batches(index, minilm, sentences):
    """``corpus_head_report`` over ``iter_traces``' batches (padded to their longest, not to the build's pass
    shapes): the same to float32 rounding of the attention."""
    report = corpus_head_report(iter_traces(minilm, sentences, batch_size=8), distances=False)
    for statistic in STATISTIC_NAMES:
        np.testing.assert_allclose(index.head_map(statistic), report[statistic], rtol=1e-6, atol=1e-6)


def test_head_stats_rows_are_each_sentences_own_report(index, traces):
    reports = [head_report(trace) for trace in traces]
    seen = 0
    for batch in index.head_stats_batches(batch_rows=100):
        rows = batch.to_pydict()
        for i, sentence in enumerate(rows["sentence"]):
            layer, head = rows["layer"][i], rows["head"][i]
            assert rows["n_queries"][i] == len(traces[sentence].tokens)
            for statistic in STATISTIC_NAMES:
                assert rows[statistic][i] == pytest.approx(reports[sentence][statistic][layer, head], abs=1e-9)
        seen += batch.num_rows
    assert seen == len(traces) * 6 * 12


def test_summary_deciles_span_the_sentences_values(index, traces):
    summary = index.summary(3, 7)
    values = np.array([head_report(trace)["previous"][3, 7] for trace in traces])
    deciles = np.array(summary["previous"]["deciles"])
    bin_width = 1 / 1024  # the pipeline's deciles are approximate: histograms of 1,024 bins over [0, 1]
    assert (np.diff(deciles) >= 0).all() and len(deciles) == 11
    assert values.min() - bin_width <= deciles[0] and deciles[-1] <= values.max() + bin_width
    assert summary["previous"]["mean"] == pytest.approx(index.head_map("previous")[3, 7], abs=0)
    assert summary["previous"]["n_sentences"] == len(traces) and set(summary) == set(STATISTIC_NAMES)


def test_top_examples_are_the_strongest_edges(index, traces):
    edges = index.top_examples(2, 4, k=3)
    assert [edge.rank for edge in edges] == [0, 1, 2]
    weights = [edge.weight for edge in edges]
    assert weights == sorted(weights, reverse=True)
    # the pipeline's candidates: no special token at either end, no key at the first token (edge_mask)
    strongest = max(float(np.max(trace.attention[2, 4][edge_mask(trace.special)])) for trace in traces)
    assert weights[0] == pytest.approx(strongest, abs=1e-7)
    for edge in edges:
        assert traces[edge.sentence].attention[2, 4, edge.query, edge.key] == pytest.approx(edge.weight, abs=1e-7)


def test_decile_examples_and_sentences(index, traces):
    examples = index.decile_examples(1, 1)
    assert [example.decile for example in examples] == list(range(11))
    for example in examples:  # each example's value is its sentence's own
        assert example.value == pytest.approx(head_report(traces[example.sentence])["previous"][1, 1], abs=1e-9)
    sentence = index.sentence(examples[-1].sentence)
    trace = traces[examples[-1].sentence]
    assert sentence.tokens == trace.tokens and sentence.text == trace.text
    np.testing.assert_array_equal(sentence.special, trace.special)
    with pytest.raises(ViewError, match="no sentence 99"):
        index.sentence(99)


def test_qk_points(index):
    points = index.qk_points(4, 2)
    assert len(points.x) == len(points.kind) == len(points.token) == 80  # 40 queries, 40 keys
    assert set(points.kind) == {"query", "key"} and np.isfinite(points.x).all() and np.isfinite(points.y).all()
    assert points.x.dtype == np.float32 and points.position.dtype == np.int32


def test_nearest_finds_the_token_itself_first(index, traces):
    trace = traces[3]
    found = index.nearest(6, trace.hidden[6][2], k=5)
    assert (found[0].sentence, found[0].position, found[0].token) == (3, 2, trace.tokens[2])
    assert found[0].score == pytest.approx(1.0, abs=1e-5)
    assert [n.score for n in found] == sorted((n.score for n in found), reverse=True)
    with pytest.raises(ViewError, match="no contexts of layer 3"):
        index.nearest(3, trace.hidden[3][2])
    with pytest.raises(CorpusError, match="384"):
        index.nearest(6, np.ones(10))


def test_out_of_range_arguments_are_view_errors(index):
    with pytest.raises(ViewError, match="layer 6 is out of range"):
        index.summary(6, 0)
    with pytest.raises(ViewError, match="unknown statistic"):
        index.head_map("loudness")


def test_roots_allow_only_their_folders(folder, tmp_path):
    assert CorpusIndex.open(folder, roots=[folder.parent]).num_layers == 6
    with pytest.raises(CorpusError, match="outside the folders the operator allows") as refused:
        CorpusIndex.open(folder, roots=[tmp_path])
    assert str(folder) not in str(refused.value)


# ---------------------------------------------------------------------------------------------------------------
# corpus.vectors


def _clustered(rows: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, width))
    return (centres[rng.integers(0, 20, rows)] + 0.3 * rng.normal(size=(rows, width))).astype(np.float32)


def test_exact_and_ivfpq_indexes(tmp_path):
    vectors = _clustered(12_000, 32)
    shards = [vectors[i:i + 1000] for i in range(0, len(vectors), 1000)]
    exact = build_context_index(shards, 32, tmp_path / "exact.faiss", exact_max=20_000)
    approx = build_context_index(shards, 32, tmp_path / "ivf.faiss", exact_max=5_000, rows=len(vectors))
    assert exact == {"kind": EXACT, "rows": 12_000, "width": 32, "shards": 1}
    assert approx["kind"] == IVFPQ and approx["rows"] == 12_000 and approx["m"] == 16 and approx["nbits"] == 8
    assert approx["nlist"] == 128 and approx["nprobe"] == 8  # sqrt(12,000) ~ 110 -> 128 lists, 1/16 probed
    assert approx["shards"] == 1 and not (tmp_path / "ivf.faiss").exists()  # one shard of at most 2^20 rows
    strided = build_context_index(shards, 32, tmp_path / "strided.faiss", exact_max=5_000, rows=len(vectors),
                                  sample=vectors[::3])
    assert strided == approx  # the same shape, trained on every third row instead of the first 5,001
    flat = read_context_index(tmp_path / "exact.faiss", 32, 12_000)
    ivf = read_context_shards([(tmp_path / "ivf.shard-00000.faiss", 12_000)], 32)
    assert index_info(ivf) == approx and not list(tmp_path.glob("*.tmp"))
    queries = _clustered(50, 32, seed=1)
    _, truth = search(flat, queries, 10)
    scores, found = search(ivf, queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall > 0.5 and (np.diff(scores, axis=1) <= 1e-6).all()
    # the exact index scores are cosines: a row against itself is 1
    assert search(flat, vectors[7], 1)[1][0, 0] == 7
    assert search(flat, vectors[7], 1)[0][0, 0] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("shard_rows", [2_500, 4_000, 12_000])
def test_sharded_search_equals_one_ivfpq_index(tmp_path, shard_rows):
    """Shards of ``shard_rows`` rows (the last the rest) searched and merged give the ids and scores of one IVF-PQ
    index over every row with the same training: the same lists probed, the same codes, so the same scores."""
    vectors = _clustered(12_000, 32)
    sample = vectors[::3]
    info = build_context_index((vectors[i:i + 700] for i in range(0, len(vectors), 700)), 32, tmp_path / "l.faiss",
                               exact_max=5_000, rows=len(vectors), sample=sample, shard_rows=shard_rows)
    counts = [min(shard_rows, 12_000 - start) for start in range(0, 12_000, shard_rows)]
    assert info["shards"] == len(counts) and sorted(p.name for p in tmp_path.iterdir()) == [
        shard_name("l.faiss", number) for number in range(len(counts))]
    sharded = read_context_shards([(tmp_path / shard_name("l.faiss", n), c) for n, c in enumerate(counts)], 32)
    single = _trained_ivfpq(normalised(sample, 32), 32, len(vectors), seed=0)
    single.add(normalised(vectors, 32))
    queries = np.concatenate([_clustered(60, 32, seed=2), vectors[::997]])
    for nprobe in (8, 128):  # the built nprobe, then every list
        sharded.nprobe = single.nprobe = nprobe
        scores, ids = search(sharded, queries, 10)
        expected_scores, expected_ids = search(single, queries, 10)
        np.testing.assert_allclose(scores, expected_scores, rtol=0, atol=1e-6)
        untied = np.abs(np.diff(expected_scores, axis=1)) > 1e-6  # neighbours whose order a tie cannot swap
        assert (ids[:, :-1][untied] == expected_ids[:, :-1][untied]).all()
        assert all(set(a) == set(b) for a, b, s in zip(ids, expected_ids, expected_scores) if len(set(s)) == 10)
        assert (ids >= 0).all() and ids.max() < len(vectors)
    assert (search(sharded, vectors[4_321], 1)[1] == 4_321).all()  # a global row, not the shard's own id


def test_sharded_ties_and_missing_rows_merge_in_row_order(tmp_path):
    """Equal vectors in different shards tie: the lower global row comes first; past what the probed lists hold,
    ids are -1 at the end, as FAISS gives them."""
    base = _clustered(3_000, 16)
    vectors = np.concatenate([base, base])  # row r and row r + 3,000 are the same vector
    build_context_index([vectors], 16, tmp_path / "t.faiss", exact_max=100, rows=len(vectors), sample=base,
                        shard_rows=3_000)
    sharded = read_context_shards([(tmp_path / shard_name("t.faiss", n), 3_000) for n in (0, 1)], 16)
    scores, ids = search(sharded, base[[5, 17]], 2)
    assert ids.tolist() == [[5, 3_005], [17, 3_017]] and scores[:, 0] == pytest.approx(scores[:, 1], abs=0)
    sharded.nprobe = 1
    _, ids = search(sharded, base[5], 6_000)
    found = ids[0][ids[0] >= 0]
    assert 0 < len(found) < 6_000 and (ids[0][len(found):] == -1).all() and len(set(found)) == len(found)


def test_vectors_refuse_bad_shapes(tmp_path):
    with pytest.raises(CorpusError, match=r"\(N, 8\)"):
        build_context_index([np.zeros((3, 9))], 8, tmp_path / "x.faiss")
    index = faiss.IndexFlatIP(8)
    with pytest.raises(CorpusError, match=r"\(N, 8\)"):
        search(index, np.zeros((2, 7)), 3)
    with pytest.raises(CorpusError, match="finite"):
        search(index, np.full(8, np.nan), 3)
    with pytest.raises(CorpusError, match="k must be"):
        search(index, np.ones(8), 0)


# ---------------------------------------------------------------------------------------------------------------
# python -m cli corpus query


def _query(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["corpus", "query", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_top_and_summary(folder, index, capsys):
    code, out, _ = _query(capsys, folder, "top", "--layer", 2, "--head", 4, "--k", 2)
    assert code == 0 and out.startswith("Strongest attention edges of layer 2, head 4") and "  2. " in out
    code, out, _ = _query(capsys, folder, "top", "--layer", 2, "--head", 4, "--k", 2, "--json")
    edges = json.loads(out)["edges"]
    assert [edge["weight"] for edge in edges] == [edge.weight for edge in index.top_examples(2, 4, 2)]
    code, out, _ = _query(capsys, folder, "summary", "--statistic", "sep", "--json")
    np.testing.assert_allclose(json.loads(out)["means"], index.head_map("sep"), atol=1e-12)
    code, out, _ = _query(capsys, folder, "deciles", "--layer", 0, "--head", 1)
    assert code == 0 and out.count("  q") == 11


def test_cli_near_checks_the_model(folder, index, traces, tmp_path, capsys):
    code, out, _ = _query(capsys, folder, "near", "--layer", 6, "--text", traces[0].text, "--token", 1, "--json")
    answer = json.loads(out)
    assert code == 0 and answer["neighbours"][0]["sentence"] == 0 and answer["neighbours"][0]["position"] == 1
    assert answer["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-3)  # traced alone vs in a padded batch
    other = write_tiny_bert_folder(tmp_path / "tiny")
    code, _, err = _query(capsys, folder, "near", "--layer", 6, "--text", "the cat", "--token", 1, "--model", other)
    assert code == 2 and "not the one the index was built with" in err and str(tmp_path) not in err


def test_cli_refuses_a_bad_folder_with_a_message(tmp_path, capsys):
    code, _, err = _query(capsys, tmp_path, "top", "--layer", 0, "--head", 0)
    assert code == 2 and "not a corpus index" in err and str(tmp_path) not in err


def test_context_files_are_named_by_layer():
    assert context_files(3) == ("contexts/layer-3.faiss", "contexts/layer-3.parquet")
