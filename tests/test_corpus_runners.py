"""The corpus pipeline gives the same index on the DirectRunner in memory and with two worker processes
(``--direct_running_mode=multi_processing --direct_num_workers=2``): the batches are cut by the input plan, the
top lists and the sample are exact cuts, the histograms count, and the parts are put in input order."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus.build import build_index
from corpus.format import MANIFEST
from corpus.handler import CorpusOptions

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
