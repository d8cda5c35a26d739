"""The corpus pipeline (Beam, in-memory DirectRunner) over a few dozen shipped test sentences through MiniLM: the
index holds exactly what the report card and the traces say, and bad inputs are refused with our error."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from analysis.report import STATISTICS, corpus_head_report, head_report
from corpus.build import build_index
from corpus.format import HEAD_STATS_DIR, HEAD_SUMMARY, MANIFEST, QK_SAMPLE, SENTENCES, TOP_EDGES, CorpusError
from corpus.handler import (
    CorpusOptions,
    cell_budget,
    edge_mask,
    load_corpus_model,
    padded_groups,
    pass_shape,
    trace_corpus_batch,
)
from corpus.pipeline import statistic_ranges
from corpus.sources import plan_input, read_chunk, token_priority
from encoder.attention_store import RecomputedQueriesKeys
from encoder.trace import trace_text

SENTENCES_USED = 36
OPTIONS = CorpusOptions(batch_size=8, top_k=5, sample_per_head=40, context_layers=(0, 6), decile_statistic="previous")
CHUNK_BYTES = 1200  # several chunks, batches of up to 8
TEST_TSV = Path(__file__).resolve().parent.parent / "data" / "test.tsv"


def shipped_sentences(count: int) -> list[str]:
    lines = TEST_TSV.read_text(encoding="utf-8").splitlines()[1:count + 1]
    return [line.split("\t")[2] for line in lines]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """The sentences one per line, with a blank line after the third (skipped, but counted in the ids)."""
    sentences = shipped_sentences(SENTENCES_USED)
    path = tmp_path_factory.mktemp("input") / "sentences.txt"
    path.write_text("\n".join([*sentences[:3], "", *sentences[3:]]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def index(corpus_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(corpus_file, out, OPTIONS, chunk_bytes=CHUNK_BYTES)
    return out


@pytest.fixture(scope="module")
def traced(corpus_file, tmp_path_factory) -> dict:
    """Each sentence id's trace, from the very batches (and padded groups) the build traced."""
    model = load_corpus_model(OPTIONS.model)
    plan = plan_input(corpus_file, None, tmp_path_factory.mktemp("stage") / "x.parquet", CHUNK_BYTES)
    traces = {}
    for chunk in plan.chunks:
        for batch in read_chunk(chunk, OPTIONS.batch_size):
            found = trace_corpus_batch(model, batch.texts, OPTIONS)
            traces.update(zip(batch.ids, found))
    return traces


def test_sentence_ids_are_line_numbers(index, traced):
    table = pq.read_table(index / SENTENCES)
    ids = table["sentence"].to_pylist()
    assert ids == list(range(3)) + list(range(4, SENTENCES_USED + 1))  # line 3 is blank
    assert table["text"].to_pylist() == [traced[i].text for i in ids]
    assert [tuple(t) for t in table["tokens"].to_pylist()] == [traced[i].tokens for i in ids]
    assert table["n_tokens"].to_pylist() == [traced[i].num_tokens for i in ids]
    manifest = json.loads((index / MANIFEST).read_text())
    assert manifest["counts"]["sentences"] == SENTENCES_USED
    assert manifest["counts"]["tokens"] == sum(t.num_tokens for t in traced.values())
    assert not (index / ".partial").exists()


def test_means_equal_corpus_head_report(index, traced, minilm_model):
    """Token-weighted means over the corpus, float64: to 1e-9 (1e-12 here) against the report card over the same
    traces; against the same sentences padded into other batches (``iter_traces``' batches of 64), to float32
    rounding of the attention (padding changes it by ~1e-8)."""
    from analysis.report import iter_traces

    summary = pq.read_table(index / HEAD_SUMMARY).to_pandas()
    texts = [traced[i].text for i in sorted(traced)]
    own = corpus_head_report((traced[i] for i in sorted(traced)), distances=False)
    report = corpus_head_report(iter_traces(minilm_model, texts, max_tokens=OPTIONS.max_tokens), distances=False)
    for name in STATISTICS:
        rows = summary[summary["statistic"] == name].sort_values(["layer", "head"])
        means = rows["mean"].to_numpy().reshape(6, 12)
        np.testing.assert_allclose(means, own[name], rtol=0, atol=1e-12)
        np.testing.assert_allclose(means, report[name], rtol=1e-6, atol=1e-7)
        assert (rows["n_sentences"] == SENTENCES_USED).all()


@pytest.fixture(scope="module")
def minilm_model():
    return load_corpus_model(OPTIONS.model)


def test_each_head_stats_row_is_its_sentences_head_report(index, traced):
    table = pq.read_table(index / HEAD_STATS_DIR).to_pandas()
    assert len(table) == SENTENCES_USED * 6 * 12
    for sentence, rows in table.groupby("sentence"):
        report = head_report(traced[sentence])
        rows = rows.sort_values(["layer", "head"])
        assert (rows["n_queries"] == traced[sentence].num_tokens).all()
        for name in STATISTICS:
            np.testing.assert_allclose(rows[name].to_numpy().reshape(6, 12), report[name], rtol=0, atol=1e-12)


def test_deciles_and_their_examples(index):
    summary = pq.read_table(index / HEAD_SUMMARY).to_pandas()
    stats = pq.read_table(index / HEAD_STATS_DIR).to_pandas()
    examples = pq.read_table(index / "decile_examples.parquet").to_pandas()
    width = np.diff(statistic_ranges(OPTIONS.max_tokens), axis=1)[:, 0] / OPTIONS.bins
    for k, name in enumerate(STATISTICS):
        for (layer, head), row in summary[summary["statistic"] == name].groupby(["layer", "head"]):
            values = np.sort(stats[(stats["layer"] == layer) & (stats["head"] == head)][name].to_numpy())
            deciles = row[[f"q{d}" for d in range(11)]].to_numpy()[0]
            assert deciles[0] == values[0] and deciles[10] == values[-1]
            for d in range(1, 10):  # a decile: at least d/10 of the values at or below it (within a bin)
                assert np.mean(values <= deciles[d] + width[k] + 1e-12) >= d / 10 - 1e-12
                assert np.mean(values < deciles[d] - width[k] - 1e-12) <= d / 10 + 1e-12
            if name == OPTIONS.decile_statistic:
                chosen = examples[(examples["layer"] == layer) & (examples["head"] == head)].sort_values("decile")
                assert len(chosen) == 11
                for d, example in zip(range(11), chosen.itertuples()):
                    own = stats[(stats["sentence"] == example.sentence) & (stats["layer"] == layer)
                                & (stats["head"] == head)][name].to_numpy()[0]
                    assert example.value == own
                    nearest = np.abs(values - deciles[d]).min()
                    assert abs(example.value - deciles[d]) <= nearest + width[k] + 1e-12


def test_top_edges_are_the_corpus_strongest(index, traced):
    edges = pq.read_table(index / TOP_EDGES).to_pandas()
    for layer in range(6):
        for head in range(12):
            everything = []
            for trace in traced.values():
                weights = np.where(edge_mask(np.asarray(trace.special)), trace.attention[layer, head], -1.0)
                everything.append(np.sort(weights[weights >= 0])[::-1][:OPTIONS.top_k])
            expected = np.sort(np.concatenate(everything))[::-1][:OPTIONS.top_k]
            found = edges[(edges["layer"] == layer) & (edges["head"] == head)].sort_values("rank")
            np.testing.assert_array_equal(found["weight"].to_numpy(), expected.astype(np.float32))
            for edge in found.itertuples():
                trace = traced[edge.sentence]
                assert trace.attention[layer, head, edge.query, edge.key] == edge.weight
                assert edge.key != 0 and not trace.special[edge.query] and not trace.special[edge.key]


def test_query_key_sample(index, traced, minilm_model):
    sample = pq.read_table(index / QK_SAMPLE).to_pandas()
    owners = np.concatenate([np.full(t.num_tokens, s) for s, t in sorted(traced.items())])
    positions = np.concatenate([np.arange(t.num_tokens) for _, t in sorted(traced.items())])
    lowest = np.argsort(token_priority(owners, positions))[:OPTIONS.sample_per_head]
    expected = sorted(zip(owners[lowest].tolist(), positions[lowest].tolist()))
    assert len(sample) == 6 * 12 * 2 * OPTIONS.sample_per_head
    stores = {s: RecomputedQueriesKeys(minilm_model.model, t.hidden) for s, t in traced.items()}
    for (layer, head, kind), rows in sample.groupby(["layer", "head", "kind"]):
        assert sorted(zip(rows["sentence"], rows["position"])) == expected
        if head in (0, 7):
            for row in rows.itertuples():
                queries, keys = stores[row.sentence].layer(layer)
                own = (queries if kind == "query" else keys)[row.position, head]
                np.testing.assert_allclose(row.vector, own, rtol=0, atol=1e-6)
                assert row.token == traced[row.sentence].tokens[row.position]
    for _, rows in sample.groupby(["layer", "head"]):
        x, y = rows["x"].to_numpy(np.float64), rows["y"].to_numpy(np.float64)
        assert abs(x.mean()) < 1e-3 and abs(y.mean()) < 1e-3  # centred jointly
        assert x.var() >= y.var() - 1e-6 and abs(np.mean(x * y)) < 1e-3 * max(x.var(), 1e-6)  # principal axes


def test_contexts_find_themselves(index, traced):
    import faiss

    manifest = json.loads((index / MANIFEST).read_text())
    tokens = sum(t.num_tokens for t in traced.values())
    for layer in (0, 6):
        rows = pq.read_table(index / f"contexts/layer-{layer}.parquet").to_pandas()
        assert rows["row"].tolist() == list(range(tokens)) == list(range(manifest["counts"]["contexts"][str(layer)]))
        assert list(zip(rows["sentence"], rows["position"])) == \
            [(s, p) for s, t in sorted(traced.items()) for p in range(t.num_tokens)]
        faiss_index = faiss.read_index(str(index / f"contexts/layer-{layer}.faiss"))
        assert faiss_index.ntotal == tokens and faiss_index.d == 384
        probe = rows.iloc[[5, 200, tokens - 2]]
        vectors = np.stack([traced[s].hidden[layer][p] for s, p in zip(probe["sentence"], probe["position"])])
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores, ids = faiss_index.search(vectors.astype(np.float32), 1)
        found = rows.iloc[ids[:, 0]]  # itself, or at layer 0 (embeddings) a twin: the same token at the same position
        assert found["token"].tolist() == probe["token"].tolist()
        assert found["position"].tolist() == probe["position"].tolist()
        assert layer == 0 or ids[:, 0].tolist() == probe["row"].tolist()
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_manifest_lists_every_file(index):
    manifest = json.loads((index / MANIFEST).read_text())
    assert manifest["format"] == "headlight-corpus" and manifest["version"] == 1
    assert manifest["model"]["name"] == "minilm" and len(manifest["model"]["checksum"]) == 64
    assert manifest["options"]["input"] == "sentences.txt" and manifest["options"]["context_layers"] == [0, 6]
    assert manifest["options"]["shard_rows"] == 1 << 20 and manifest["options"]["exact_max"] == 100_000
    files = {p.relative_to(index).as_posix() for p in index.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == files
    for name, entry in manifest["files"].items():
        assert (index / name).stat().st_size == entry["bytes"]
        if name.endswith(".parquet"):
            assert pq.ParquetFile(index / name).metadata.num_rows == entry["rows"]


@pytest.mark.parametrize("content, suffix, column, message", [
    (b"", ".txt", None, "no sentences"),
    (b"\n  \n\t\n", ".txt", None, "no sentences"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ".txt", None, "binary"),
    (b"caf\xe9 au lait\n", ".txt", None, "not UTF-8"),
    (b"label\ttext\npositive\tGood.\n", ".tsv", "sentence", "no column 'sentence'"),
    (b"label\ttext\npositive\tGood.\n", ".tsv", None, "needs --column"),
    (b"n,text\n1,Good.\n", ".csv", "n", "not text"),
    (b'{"text": ""}\n{"text": null}\n', ".jsonl", "text", "no sentences"),
    (b"\x00\x01garbage", ".parquet", "text", "not a readable Parquet file"),
    (b"One sentence.\n", ".txt", "text", "--column is for"),
])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, content, suffix, column, message):
    path = tmp_path / f"input{suffix}"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message) as caught:
        build_index(path, tmp_path / "out", OPTIONS, column)
    assert str(tmp_path) not in str(caught.value)
    assert not (tmp_path / "out" / MANIFEST).exists() and not (tmp_path / "out" / ".partial").exists()


def test_output_folder_must_be_new_or_empty(tmp_path, corpus_file):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        build_index(corpus_file, tmp_path / "out", OPTIONS)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_past_exact_max_contexts_go_to_ivf_pq_in_input_order(tmp_path):
    """Parts' row groups (a batch each) come in any order from the workers; the index puts them in input order, and
    past ``exact_max`` rows builds an IVF-PQ index, in shards of ``shard_rows`` rows, that still finds each vector."""
    import faiss
    import pyarrow as pa

    from corpus.format import context_index_files
    from corpus.pipeline import build_contexts, sorted_groups
    from corpus.vectors import read_context_shards, search

    rng = np.random.default_rng(0)
    width, sentences, per = 64, 300, 10
    vectors = rng.normal(size=(sentences * per, width)).astype(np.float32)
    folder = tmp_path / "parts"
    folder.mkdir()
    writers = [pq.ParquetWriter(folder / f"{name}.parquet", pa.schema([
        ("sentence", pa.int64()), ("position", pa.int32()), ("token", pa.string()),
        ("vector", pa.list_(pa.float32(), width))])) for name in ("a", "b")]
    for batch in rng.permutation(sentences // 10):  # batches of 10 sentences, shuffled over two files
        rows = np.arange(batch * 10 * per, (batch + 1) * 10 * per)
        writers[batch % 2].write_table(pa.table({
            "sentence": rows // per, "position": (rows % per).astype(np.int32), "token": [f"t{r}" for r in rows],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[rows].ravel()), width)}),
            row_group_size=len(rows))
    for writer in writers:
        writer.close()
    assert build_contexts(sorted_groups(folder), tmp_path, 2, width, exact_max=1000, shard_rows=1300) == len(vectors)
    table = pq.read_table(tmp_path / "contexts/layer-2.parquet")
    assert table["token"].to_pylist() == [f"t{r}" for r in range(len(vectors))]
    assert table["row"].to_pylist() == list(range(len(vectors)))
    files = context_index_files(2, len(vectors), 1000, 1300)  # shards of 1,300, 1,300 and 400 rows
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("contexts/*.faiss")) == \
        [name for name, _ in files] and [rows for _, rows in files] == [1300, 1300, 400]
    shards = [faiss.read_index(str(tmp_path / name)) for name, _ in files]
    assert all(isinstance(shard, faiss.IndexIVFPQ) for shard in shards)
    index = read_context_shards([(tmp_path / name, rows) for name, rows in files], width)
    index.nprobe = shards[0].nlist  # every list: what is left is the codes' loss
    _, ids = search(index, vectors[::60], 10)
    assert np.mean([row * 60 in found for row, found in enumerate(ids)]) >= 0.9


def test_forward_passes_have_few_shapes_within_the_cell_budget():
    """Shortest first; every pass padded to one of a few (rows, width) shapes, rows x width^2 within the budget; every
    sentence once; the same passes for the same lengths."""
    options = CorpusOptions(batch_size=64, max_tokens=128)
    assert cell_budget(options) == 64 * 64 ** 2
    shapes = {pass_shape(n, options) for n in range(1, 129)}
    assert shapes == {(64, 16), (64, 32), (64, 64), (16, 128)}
    assert all(rows * width ** 2 <= cell_budget(options) for rows, width in shapes)
    rng = np.random.default_rng(3)
    lengths = [int(n) for n in rng.integers(2, 129, size=64)]
    groups = padded_groups(lengths, options)
    assert sorted(i for group in groups for i in group) == list(range(64))
    assert [lengths[i] for group in groups for i in group] == sorted(lengths)
    assert all(len(group) <= pass_shape(max(lengths[i] for i in group), options)[0] for group in groups)
    assert len(groups) > 1 and groups == padded_groups(lengths, options)
    assert pass_shape(40, CorpusOptions(batch_size=8, max_tokens=32)) == (8, 32)  # the cut: never wider
    assert pass_shape(100, CorpusOptions(batch_size=1, max_tokens=512)) == (1, 128)  # at least one row
    assert pass_shape(100, CorpusOptions(max_tokens=512), limit=100) == (26, 100)  # never past the model's longest


def test_a_batch_of_long_sentences_is_traced_in_smaller_passes(minilm_model):
    """Two sentences past 64 tokens do not fit one pass of a 4-sentence batch (4 rows of 64 tokens' cells): they
    are traced in passes of their own, padded to 128 tokens, the short ones together padded to 16; every trace is
    still that sentence's own (as ``trace_text``, to float32 rounding)."""
    options = CorpusOptions(batch_size=4, max_tokens=128)
    long_text = " ".join(shipped_sentences(8))
    texts = ("A short one.", long_text, "Another short sentence here.", long_text[::-1])
    lengths = [len(minilm_model.tokenizer.encode(text, None, 128).tokens) for text in texts]
    assert lengths[1] > 64 and lengths[3] > 64
    groups = padded_groups(lengths, options)
    assert groups[0] == [0, 2] and sorted(groups[1:]) == [[1], [3]]
    for text, trace in zip(texts, trace_corpus_batch(minilm_model, texts, options)):
        alone = trace_text(minilm_model, text, max_tokens=128)
        assert trace.tokens == alone.tokens
        np.testing.assert_allclose(np.asarray(trace.attention), np.asarray(alone.attention), atol=2e-5)
