"""Corrupt and hostile corpus index folders (a real index, built by the pipeline, then broken): each refused by
``CorpusIndex.open`` with our ``CorpusError``, before anything is read or allocated past what the manifest and the
files' own metadata allow, and with no server path in the message."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import format as fmt
from corpus.build import write_manifest
from corpus.format import CorpusError
from corpus.index import CorpusIndex
from corpus.vectors import check_context_file
from tests.support.corpus import build_test_index

TEST_TSV = Path(__file__).resolve().parent.parent / "data" / "test.tsv"
SENTENCES = ["The cat sat on the mat.", "Dogs bark at night.", "Rain fell.", "Where is the station?"]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good") / "index"
    build_test_index(SENTENCES, folder, context_layers=(0,), sample_per_head=10, top_k=5)
    CorpusIndex.open(folder)  # the unbroken index opens
    return folder


@pytest.fixture
def copy(good, tmp_path):
    return shutil.copytree(good, tmp_path / "index")


def _manifest(folder) -> dict:
    return json.loads((folder / fmt.MANIFEST).read_text())


def _edit(folder, change) -> None:
    manifest = _manifest(folder)
    change(manifest)
    write_manifest(folder, manifest)


def _resize(folder, name) -> None:
    """Make the manifest's bytes entry of ``name`` match the file again (so a later check must catch it)."""
    _edit(folder, lambda m: m["files"][name].update(bytes=(folder / name).stat().st_size))


def _refused(folder, match: str, roots=None) -> None:
    with pytest.raises(CorpusError, match=match) as refused:
        CorpusIndex.open(folder, roots=roots)
    assert str(folder) not in str(refused.value) and "/tmp" not in str(refused.value)


def test_no_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", "not a corpus index: it has no manifest.json")
    _refused(tmp_path / "missing", "there is no index folder")


def test_an_interrupted_build_says_it_did_not_finish(copy, tmp_path):
    (copy / fmt.MANIFEST).unlink()
    _refused(copy, "build did not finish")
    partial = tmp_path / "partial"
    (partial / fmt.PARTIAL / "parts").mkdir(parents=True)
    _refused(partial, "build did not finish")


@pytest.mark.parametrize("content, match", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"\xff\xfe{}", "not valid UTF-8 JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "not valid UTF-8 JSON|nested more than"),
    (json.dumps({"format": fmt.FORMAT, "deep": [[[[[[[[[[1]]]]]]]]]]}).encode(), "nested more than 8"),
    (b" " * (fmt.MANIFEST_MAX_BYTES + 1), "at most 1,048,576"),
    (b"[]", "not a corpus index"),
])
def test_bad_manifests(copy, content, match):
    (copy / fmt.MANIFEST).write_bytes(content)
    _refused(copy, match)


def test_a_manifest_that_is_a_symlink(copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(copy / fmt.MANIFEST, outside)
    (copy / fmt.MANIFEST).symlink_to(outside)
    _refused(copy, "not a regular file")


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(format="something-else"), "format is not 'headlight-corpus'"),
    (lambda m: m.update(version=2), "format version"),
    (lambda m: m["model"].update(layers="6"), "model.layers is missing or of the wrong type"),
    (lambda m: m["model"].update(first_special=1), "model.first_special"),
    (lambda m: m["model"].update(heads=10**6), "model.heads"),
    (lambda m: m["options"].update(decile_statistic="loudness"), "decile_statistic"),
    (lambda m: m["options"].update(context_layers=[0, 0]), "context_layers"),
    (lambda m: m["counts"].update(head_stats_rows=7), "head_stats rows"),
    (lambda m: m["counts"]["contexts"].update({"3": 5}), "counts.contexts"),
    (lambda m: m.pop("files"), "files"),
])
def test_wrong_format_version_and_types(copy, change, match):
    _edit(copy, change)
    _refused(copy, match)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.parquet", "head_stats/../../outside.parquet",
                                  "C:/x.parquet", "head_stats\\..\\x.parquet", "./sentences.parquet"])
def test_files_outside_the_folder(copy, name):
    _edit(copy, lambda m: m["files"].update({name: {"bytes": 10, "rows": None}}))
    _refused(copy, "outside the index folder")


def test_a_file_the_format_does_not_have(copy):
    _edit(copy, lambda m: m["files"].update({"notes.txt": {"bytes": 1, "rows": None}}))
    _refused(copy, "does not have")


def test_a_symlink_escaping_the_folder(copy, tmp_path):
    outside = tmp_path / "outside.parquet"
    shutil.move(copy / fmt.TOP_EDGES, outside)
    (copy / fmt.TOP_EDGES).symlink_to(outside)  # same bytes, same rows: only the link is wrong
    _refused(copy, "symlink")
    (copy / fmt.TOP_EDGES).unlink()
    (copy / fmt.TOP_EDGES).mkdir()
    _refused(copy, "not a regular file")


def test_a_symlinked_folder_inside(copy, tmp_path):
    shutil.move(copy / fmt.HEAD_STATS_DIR, tmp_path / "stats")
    (copy / fmt.HEAD_STATS_DIR).symlink_to(tmp_path / "stats")
    _refused(copy, "symlink")


def test_a_missing_file(copy):
    (copy / fmt.QK_SAMPLE).unlink()
    _refused(copy, "missing qk_sample.parquet")


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_parquet(copy, keep):
    path = copy / fmt.TOP_EDGES
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    _refused(copy, "changed or truncated")  # the size the manifest gives
    _resize(copy, fmt.TOP_EDGES)
    _refused(copy, "not a Parquet file|malformed|not a readable Parquet")  # the file's own footer


def test_a_corrupt_footer_length(copy):
    path = copy / fmt.SENTENCES
    data = bytearray(path.read_bytes())
    data[-8:-4] = struct.pack("<I", 2**31 - 1)  # a footer "larger than the file"
    path.write_bytes(bytes(data))
    _refused(copy, "malformed or oversized Parquet footer")


def test_wrong_schema(copy):
    table = pq.read_table(copy / fmt.TOP_EDGES)
    table = table.set_column(3, "weight", table.column("weight").cast(pa.float64()))
    pq.write_table(table, copy / fmt.TOP_EDGES)
    _resize(copy, fmt.TOP_EDGES)
    _refused(copy, r"top_edges.parquet has columns .* expected .*weight \(float\)")


def test_missing_columns(copy):
    pq.write_table(pq.read_table(copy / fmt.SENTENCES).drop_columns(["special"]), copy / fmt.SENTENCES)
    _resize(copy, fmt.SENTENCES)
    _refused(copy, "sentences.parquet has columns")


def test_a_billion_rows_claimed(copy):
    def claim(manifest):
        manifest["counts"].update(sentences=10**8, tokens=10**9, head_stats_rows=10**8 * 6 * 12,
                                  contexts={"0": 10**9})
        manifest["files"][fmt.SENTENCES]["rows"] = 10**8
    _edit(copy, claim)
    _refused(copy, "sentences.parquet holds 4 rows, while the manifest says 100,000,000")


def test_more_rows_than_the_caps(copy):
    _edit(copy, lambda m: m["counts"].update(sentences=10**9, head_stats_rows=10**9 * 72))
    _refused(copy, "outside")


def test_rows_that_do_not_match_the_counts(copy):
    _edit(copy, lambda m: m["files"][fmt.HEAD_SUMMARY].update(rows=5))
    _refused(copy, "head_summary.parquet holds 648 rows, while the manifest says 5")


def test_a_faiss_file_of_the_wrong_width(copy):
    name = fmt.context_files(0)[0]
    rows = _manifest(copy)["counts"]["contexts"]["0"]
    index = faiss.IndexFlatIP(16)
    index.add(np.random.default_rng(0).normal(size=(rows, 16)).astype(np.float32))
    faiss.write_index(index, str(copy / name))
    _resize(copy, name)
    _refused(copy, "width 16, while the model's width is 384")


@pytest.mark.parametrize("junk", [b"", b"IxFI", b"\x00" * 100, np.random.default_rng(0).bytes(5000),
                                  b"IwPQ" + b"\x01" * 200])
def test_a_junk_faiss_file(copy, junk):
    name = fmt.context_files(0)[0]
    (copy / name).write_bytes(junk)
    _resize(copy, name)
    _refused(copy, "context index")


def test_a_faiss_header_claiming_huge_arrays(copy, tmp_path):
    """Sizes FAISS would allocate before reading (10^11 floats) are checked against the file first."""
    name = fmt.context_files(0)[0]
    path = copy / name
    data = bytearray(path.read_bytes())
    data[8:16] = struct.pack("<q", 10**11 // 384)  # ntotal
    data[45:53] = struct.pack("<Q", 10**11)  # the vector array's length
    path.write_bytes(bytes(data))
    _resize(copy, name)
    _refused(copy, "truncated|do not match")
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(8), 8, 4, 2, 4, faiss.METRIC_INNER_PRODUCT)
    index.train(np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    index.add(np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "ivf.faiss"))
    check_context_file(tmp_path / "ivf.faiss", 8, 50)
    for offset in (37, 45):  # nlist, then nprobe
        data = bytearray((tmp_path / "ivf.faiss").read_bytes())
        data[offset:offset + 8] = struct.pack("<Q", 2**40)
        (tmp_path / "huge.faiss").write_bytes(bytes(data))
        with pytest.raises(CorpusError, match="IVF lists"):
            check_context_file(tmp_path / "huge.faiss", 8, 50)


def test_a_faiss_file_with_other_rows(copy):
    name = fmt.context_files(0)[0]
    faiss.write_index(faiss.IndexFlatIP(384), str(copy / name))
    _resize(copy, name)
    _refused(copy, "holds 0 vectors, while the manifest says")


def test_the_folder_outside_the_allowed_roots(copy, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    _refused(copy, "outside the folders the operator allows", roots=[allowed])
    (allowed / "link").symlink_to(copy)  # a link inside a root to a folder outside it
    _refused(allowed / "link", "outside the folders the operator allows", roots=[allowed])
    assert CorpusIndex.open(copy, roots=[tmp_path]).num_layers == 6


# ---------------------------------------------------------------------------------------------------------------
# A layer's IVF-PQ index in shards (past exact_max): each shard checked, all of them trained together

SHARDED = {"context_layers": (0,), "sample_per_head": 10, "top_k": 5, "exact_max": 100, "shard_rows": 128}


@pytest.fixture(scope="module")
def good_sharded(tmp_path_factory):
    """An index whose layer-0 contexts (> 256 of them: enough to train the codebook) are in shards of 128 rows."""
    lines = TEST_TSV.read_text(encoding="utf-8").splitlines()[1:25]
    folder = tmp_path_factory.mktemp("sharded") / "index"
    manifest = build_test_index([line.split("\t")[2] for line in lines], folder, **SHARDED)
    assert manifest["counts"]["contexts"]["0"] > 256
    assert CorpusIndex.open(folder).context_index_info(0)["shards"] == len(_shards(folder)) > 2
    return folder


@pytest.fixture
def sharded(good_sharded, tmp_path):
    return shutil.copytree(good_sharded, tmp_path / "sharded")


def _shards(folder) -> list[tuple[str, int]]:
    """(name, rows) of each FAISS shard of layer 0, as the manifest's options and counts make them."""
    manifest = _manifest(folder)
    return fmt.context_index_files(0, manifest["counts"]["contexts"]["0"], manifest["options"]["exact_max"],
                                   manifest["options"]["shard_rows"])


def _replace(folder, name: str, index) -> None:
    """Write ``index`` over the file ``name`` and give the manifest its bytes (so a later check must catch it)."""
    faiss.write_index(index, str(folder / name))
    _resize(folder, name)


def _ivfpq(rows: np.ndarray, sample: np.ndarray, nlist: int, nprobe: int, width: int = 384):
    """An IVF-PQ index of our shape with ``nlist`` lists, trained on ``sample``, holding ``rows``."""
    from corpus.vectors import _trained_ivfpq, normalised

    index = _trained_ivfpq(normalised(sample, width), width, nlist * nlist, seed=0)
    index.nprobe = nprobe
    index.add(normalised(rows, width))
    return index


def test_a_truncated_shard(sharded):
    name = _shards(sharded)[1][0]
    data = (sharded / name).read_bytes()
    (sharded / name).write_bytes(data[:len(data) // 2])
    _refused(sharded, "changed or truncated")
    _resize(sharded, name)
    _refused(sharded, "truncated")


def test_a_shard_of_the_wrong_width(sharded):
    name, rows = _shards(sharded)[1]
    rng = np.random.default_rng(0)
    _replace(sharded, name, _ivfpq(rng.normal(size=(rows, 16)), rng.normal(size=(4096, 16)), 16, 8, width=16))
    _refused(sharded, "width 16, while the model's width is 384")


def test_a_missing_shard(sharded):
    name = _shards(sharded)[-1][0]
    (sharded / name).unlink()
    _refused(sharded, "missing contexts/layer-0.shard-")
    _edit(sharded, lambda m: m["files"].pop(name))
    _refused(sharded, "FAISS shard missing or extra")


def test_an_extra_shard(sharded):
    shards = _shards(sharded)
    extra = fmt.shard_name(fmt.context_files(0)[0], len(shards))
    shutil.copy(sharded / shards[0][0], sharded / extra)
    _edit(sharded, lambda m: m["files"].update({extra: {"bytes": (sharded / extra).stat().st_size, "rows": 128}}))
    _refused(sharded, "FAISS shard missing or extra")


def test_a_shard_layout_the_options_do_not_give(sharded):
    _edit(sharded, lambda m: m["options"].update(shard_rows=64))
    _refused(sharded, "FAISS shard missing or extra")
    _edit(sharded, lambda m: m["options"].update(shard_rows=128, exact_max=10**6))  # one exact file expected
    _refused(sharded, "FAISS shard missing or extra")


def test_shard_rows_that_do_not_sum_to_the_manifest(sharded):
    """The last shard replaced by a copy of the first (same training, 128 rows): the counts no longer add up."""
    shards = _shards(sharded)
    assert shards[-1][1] < 128
    shutil.copy(sharded / shards[0][0], sharded / shards[-1][0])
    _resize(sharded, shards[-1][0])
    _refused(sharded, f"holds 128 vectors, while the manifest says {shards[-1][1]:,}")
    _edit(sharded, lambda m: m["files"][shards[-1][0]].update(rows=128))
    _refused(sharded, f"does not give {shards[-1][1]:,} rows")


def test_shards_trained_apart(sharded):
    """A shard of the right shape and rows whose centroids and codebook come from other training: the header checks
    pass, the comparison after FAISS reads the shards refuses them."""
    name, rows = _shards(sharded)[1]
    first = faiss.read_index(str(sharded / _shards(sharded)[0][0]))
    rng = np.random.default_rng(5)
    other = _ivfpq(rng.normal(size=(rows, 384)), rng.normal(size=(4096, 384)), first.nlist, first.nprobe)
    assert (other.nlist, other.pq.M, other.nprobe) == (first.nlist, first.pq.M, first.nprobe)
    _replace(sharded, name, other)
    index = CorpusIndex.open(sharded)
    with pytest.raises(CorpusError, match="not trained together") as refused:
        index.nearest(0, np.ones(384), k=3)
    assert str(sharded) not in str(refused.value)


def test_a_claim_of_too_many_shards(sharded):
    """Rows claimed past what the shards hold are refused from the manifest, before any FAISS file is read."""
    def claim(manifest, tokens, shard_rows):
        manifest["counts"].update(tokens=tokens, contexts={"0": tokens})
        manifest["options"].update(shard_rows=shard_rows)
    sentences = _manifest(sharded)["counts"]["sentences"]
    _edit(sharded, lambda m: claim(m, 10**6, 1))
    _refused(sharded, "more than 10,000 files")
    _edit(sharded, lambda m: claim(m, sentences * 2**20, 1 << 20))
    _refused(sharded, "FAISS shard missing or extra")


def test_an_index_from_before_shards_opens(sharded):
    """A manifest without ``options.shard_rows`` (built before shards): each layer one FAISS file, exact or, past
    exact_max, IVF-PQ. The shards merged into one such file answer as the shards did."""
    shards = _shards(sharded)
    expected = [(n.sentence, n.position) for n in CorpusIndex.open(sharded).nearest(0, np.ones(384), k=8)]
    whole = faiss.read_index(str(sharded / shards[0][0]))
    for name, _ in shards[1:]:
        whole.merge_from(faiss.read_index(str(sharded / name)), whole.ntotal)  # ids shifted to the global rows
    for name, _ in shards:
        (sharded / name).unlink()
    one = fmt.context_files(0)[0]
    faiss.write_index(whole, str(sharded / one))

    def before_shards(manifest):
        manifest["options"].pop("shard_rows")
        for name, _ in shards:
            manifest["files"].pop(name)
        manifest["files"][one] = {"bytes": (sharded / one).stat().st_size, "rows": whole.ntotal}
    _edit(sharded, before_shards)
    index = CorpusIndex.open(sharded)
    assert index.context_index_info(0)["kind"] == "ivfpq" and index.context_index_info(0)["shards"] == 1
    assert [(n.sentence, n.position) for n in index.nearest(0, np.ones(384), k=8)] == expected
    _edit(sharded, lambda m: m["options"].update(shard_rows="128"))
    _refused(sharded, "shard_rows is of the wrong type")
