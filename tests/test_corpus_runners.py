"""The corpus pipeline gives the same index on the DirectRunner in memory and with two worker processes
(``--direct_running_mode=multi_processing --direct_num_workers=2``): the batches are cut by the input plan, the
top lists and the sample are exact cuts, the histograms count, and the parts are put in input order. Past
``exact_max``, the sharded IVF-PQ files of both runners and of the bench's plain loop are byte-equal."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.corpus import build_plain
from corpus.build import build_index
from corpus.format import MANIFEST, context_index_files
from corpus.handler import CorpusOptions
from corpus.index import CorpusIndex

OPTIONS = CorpusOptions(batch_size=6, top_k=4, sample_per_head=30, context_layers=(3,))
CHUNK_BYTES = 900  # a few chunks for the two workers to share
TEST_TSV = Path(__file__).resolve().parent.parent / "data" / "test.tsv"


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("runners")
    lines = TEST_TSV.read_text(encoding="utf-8").splitlines()[1:25]
    source = folder / "sentences.txt"
    source.write_text("\n".join(line.split("\t")[2] for line in lines) + "\n", encoding="utf-8")
    in_memory = build_index(source, folder / "memory", OPTIONS, chunk_bytes=CHUNK_BYTES)
    processes = build_index(source, folder / "processes", OPTIONS, chunk_bytes=CHUNK_BYTES,
                            beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert in_memory["counts"] == processes["counts"] and in_memory["counts"]["sentences"] == 24
    return folder / "memory", folder / "processes"


def test_the_same_files(builds):
    memory, processes = builds
    names = sorted(p.relative_to(memory).as_posix() for p in memory.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(processes).as_posix() for p in processes.rglob("*") if p.is_file())
    assert len([name for name in names if name.endswith(".parquet")]) == 7
    assert MANIFEST in names


@pytest.mark.parametrize("name", ["sentences.parquet", "head_stats/part-00000.parquet", "top_edges.parquet",
                                  "decile_examples.parquet", "qk_sample.parquet", "contexts/layer-3.parquet"])
def test_identical_tables(builds, name):
    memory, processes = (pq.read_table(folder / name) for folder in builds)
    assert memory.num_rows > 0
    assert memory.equals(processes), name


def test_summary_identical_but_float_sums(builds):
    """Means are sums of per-batch sums: merged in another order, they may differ in the last bits."""
    memory, processes = (pq.read_table(folder / "head_summary.parquet").to_pandas() for folder in builds)
    np.testing.assert_allclose(memory["mean"], processes["mean"], rtol=1e-13, atol=0)
    assert memory.drop(columns="mean").equals(processes.drop(columns="mean"))


def test_identical_faiss_vectors(builds):
    import faiss

    memory, processes = (faiss.read_index(str(folder / "contexts/layer-3.faiss")) for folder in builds)
    assert memory.ntotal == processes.ntotal > 0
    np.testing.assert_array_equal(memory.reconstruct_n(0, memory.ntotal), processes.reconstruct_n(0, memory.ntotal))


SHARDED = CorpusOptions(batch_size=6, top_k=4, sample_per_head=30, context_layers=(0, 3), exact_max=100,
                        shard_rows=128)


@pytest.fixture(scope="module")
def sharded_builds(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The same sentences past ``exact_max`` = 100 contexts a layer, in shards of 128: in memory, two worker
    processes, and the plain loop (``bench.corpus.build_plain``)."""
    folder = tmp_path_factory.mktemp("sharded")
    lines = TEST_TSV.read_text(encoding="utf-8").splitlines()[1:25]
    source = folder / "sentences.txt"
    source.write_text("\n".join(line.split("\t")[2] for line in lines) + "\n", encoding="utf-8")
    manifests = [build_index(source, folder / "memory", SHARDED, chunk_bytes=CHUNK_BYTES),
                 build_index(source, folder / "processes", SHARDED, chunk_bytes=CHUNK_BYTES,
                             beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"]),
                 build_plain(source, folder / "plain", SHARDED)]
    assert all(manifest["counts"] == manifests[0]["counts"] for manifest in manifests)
    assert all(manifest["options"]["shard_rows"] == 128 for manifest in manifests)
    return folder / "memory", folder / "processes", folder / "plain"


def test_identical_sharded_faiss_files(sharded_builds):
    first = sharded_builds[0]
    manifest = CorpusIndex.open(first).manifest
    contexts = manifest["counts"]["contexts"]["3"]
    assert contexts > 256  # past exact_max, and enough rows to train the codebook's 256 centroids
    for layer in (0, 3):
        files = context_index_files(layer, contexts, 100, 128)
        assert len(files) == -(-contexts // 128) > 1 and all(name.endswith(".faiss") for name, _ in files)
        for name, rows in files:
            assert manifest["files"][name]["rows"] == rows
            data = (first / name).read_bytes()
            for other in sharded_builds[1:]:
                assert (other / name).read_bytes() == data, name
    for other in sharded_builds[1:]:
        assert sorted(p.name for p in (other / "contexts").iterdir()) == sorted(
            p.name for p in (first / "contexts").iterdir())
        name = "contexts/layer-3.parquet"
        assert pq.read_table(other / name).equals(pq.read_table(first / name))


def test_a_sharded_index_answers_nearest(sharded_builds):
    """The reader opens the shards as one index: nearest contexts from every shard, best first, each a row of the
    layer's table (its sentence, position and token)."""
    index = CorpusIndex.open(sharded_builds[0])
    info = index.context_index_info(3)
    assert info["kind"] == "ivfpq" and info["shards"] > 1 and info["rows"] == index.manifest["counts"]["tokens"]
    rows = pq.read_table(sharded_builds[0] / "contexts/layer-3.parquet").to_pandas()
    where = {(sentence, position): token for sentence, position, token in
             zip(rows["sentence"], rows["position"], rows["token"])}
    found = index.nearest(3, np.random.default_rng(0).normal(size=384), k=50)
    assert len(found) == 50 and (np.diff([n.score for n in found]) <= 1e-6).all()
    assert all(where[(n.sentence, n.position)] == n.token for n in found)
