"""The optional UMAP of the query/key sample (``python -m cli corpus build --umap``, requirements-umap.txt): built by
the real pipeline through the tutorial model (4 x 4 heads, dh 32; 30 shipped sentences, 40 sampled tokens a head,
so 80 points a head and seconds of fitting), the same on a second build, keeping neighbourhoods better than the PCA
of the same points; a broken UMAP file refused with our error; an index without it offers PCA only; ``--umap``
without umap says how to install it; the Corpus tab offers the choice and draws it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import format as fmt
from corpus.build import main as build_main
from corpus.build import write_manifest
from corpus.format import CorpusError
from corpus.index import CorpusIndex
from encoder.errors import ViewError
from tests.support.corpus import build_test_index
from viz.corpus import qk_rows

ROOT = Path(__file__).resolve().parent.parent
SAMPLE, HEADS = 40, 16  # tokens sampled a head; the tutorial model's 4 layers x 4 heads
TRUST_NEIGHBOURS, TRUST_FLOOR = 5, 0.9  # measured: UMAP 0.948-0.982 a head (mean 0.965), PCA 0.869-0.977 (mean 0.919)


def shipped_sentences(count: int) -> list[str]:
    lines = (ROOT / "data" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:count + 1]
    return [line.split("\t")[2] for line in lines]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A corpus root with "umap" (built by ``python -m cli corpus build --umap``), "umap-again" (the same options,
    through ``build_index``) and "pca" (without ``--umap``)."""
    root = tmp_path_factory.mktemp("umap-root")
    source = tmp_path_factory.mktemp("umap-input") / "sentences.txt"
    source.write_text("\n".join(shipped_sentences(30)) + "\n", encoding="utf-8")
    flags = ["--model", "tutorial", "--input", str(source), "--batch-size", "8", "--top-k", "5",
             "--sample-per-head", str(SAMPLE), "--context-layers", "0"]
    assert build_main([*flags, "--out", str(root / "umap"), "--umap"]) == 0
    build_test_index(shipped_sentences(30), root / "umap-again", model="tutorial", batch_size=8, top_k=5,
                     sample_per_head=SAMPLE, context_layers=(0,), umap=True)
    assert build_main([*flags, "--out", str(root / "pca")]) == 0
    (root / "umap-again-sentences.txt").unlink()
    return root


def _both(folder: Path) -> tuple[pa.Table, pa.Table]:
    return pq.read_table(folder / fmt.QK_SAMPLE), pq.read_table(folder / fmt.QK_UMAP)


def test_the_umap_file_follows_the_sample_row_for_row_finite_and_the_same_on_a_second_build(root):
    sample, umap = _both(root / "umap")
    assert umap.schema.equals(fmt.SCHEMAS[fmt.QK_UMAP])
    assert umap.num_rows == sample.num_rows == HEADS * 2 * SAMPLE
    for column in ("layer", "head"):
        assert umap[column].equals(sample[column])
    xy = np.stack([umap["x"].to_numpy(), umap["y"].to_numpy()], axis=1)
    assert np.isfinite(xy).all() and xy.std(axis=0).min() > 0.1  # a spread picture, not a point
    again = _both(root / "umap-again")[1]
    np.testing.assert_allclose(np.stack([again["x"].to_numpy(), again["y"].to_numpy()], axis=1), xy, atol=1e-4)
    manifest = CorpusIndex.open(root / "umap").manifest
    assert manifest["options"]["umap"] == fmt.UMAP_PARAMETERS == {"n_neighbors": 15, "min_dist": 0.1,
                                                                   "metric": "euclidean", "random_state": 0}
    assert manifest["files"][fmt.QK_UMAP]["rows"] == sample.num_rows


def test_umap_keeps_each_heads_neighbourhoods_better_than_pca_of_the_same_points(root):
    from sklearn.manifold import trustworthiness

    sample, umap = _both(root / "umap")
    layer, head = sample["layer"].to_numpy(), sample["head"].to_numpy()
    vectors = np.asarray(sample["vector"].to_pylist(), dtype=np.float32)
    pca_xy = np.stack([sample["x"].to_numpy(), sample["y"].to_numpy()], axis=1)
    umap_xy = np.stack([umap["x"].to_numpy(), umap["y"].to_numpy()], axis=1)
    found = []
    for cell in sorted(set(zip(layer.tolist(), head.tolist()))):
        rows = (layer == cell[0]) & (head == cell[1])
        found.append([trustworthiness(vectors[rows], xy[rows], n_neighbors=TRUST_NEIGHBOURS)
                      for xy in (pca_xy, umap_xy)])
    pca, umap = np.array(found).T
    assert len(found) == HEADS
    assert umap.min() > TRUST_FLOOR
    assert umap.mean() > pca.mean() + 0.02
    assert (umap > pca - 0.01).all()  # a head or two are close; none is clearly worse


def test_the_reader_offers_umap_only_where_it_was_built(root):
    index, plain = CorpusIndex.open(root / "umap"), CorpusIndex.open(root / "pca")
    assert index.projections == ("pca", "umap") and plain.projections == ("pca",)
    assert plain.manifest["options"]["umap"] is None and plain.umap_parameters is None
    assert not (root / "pca" / fmt.QK_UMAP).exists()
    pca, umap = index.qk_points(2, 1), index.qk_points(2, 1, "umap")
    assert (pca.projection, umap.projection) == ("pca", "umap")
    assert len(umap.x) == 2 * SAMPLE and not np.allclose(umap.x, pca.x)
    for name in ("kind", "sentence", "position", "token"):
        assert (getattr(umap, name) == getattr(pca, name)).all()
    np.testing.assert_allclose(plain.qk_points(2, 1).x, pca.x, atol=1e-5)  # PCA does not depend on --umap
    rows = qk_rows(umap)  # the CSV/JSON download's numbers say which projection they are
    assert {row["projection"] for row in rows} == {"umap"} and [row["x"] for row in rows] == umap.x.tolist()
    with pytest.raises(ViewError, match="no 'umap' projection"):
        plain.qk_points(2, 1, "umap")


def test_a_tiny_sample_still_gets_finite_coordinates():
    """Under 16 points UMAP starts at random (its spectral start needs more); under 3 a head gets its PCA."""
    from corpus.pipeline import head_umap, joint_pca

    rows = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    np.testing.assert_allclose(head_umap(rows[:2]), joint_pca(rows[None, :2])[0], atol=1e-6)
    for count in (3, 6):
        found = head_umap(rows[:count])
        assert found.shape == (count, 2) and found.dtype == np.float32 and np.isfinite(found).all()


def test_an_index_from_before_umap_existed_still_opens(root, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(root / "pca", folder)
    _edit(folder, lambda m: m["options"].pop("umap"))
    assert CorpusIndex.open(folder).projections == ("pca",)


# --- a broken UMAP file or manifest: our error, no path ------------------------------------------------------------

def _manifest(folder: Path) -> dict:
    return json.loads((folder / fmt.MANIFEST).read_text())


def _edit(folder: Path, change) -> None:
    manifest = _manifest(folder)
    change(manifest)
    write_manifest(folder, manifest)


def _rewrite(folder: Path, table: pa.Table) -> None:
    """Write ``table`` as qk_umap.parquet and make the manifest's bytes entry match it (so the reader must look)."""
    pq.write_table(table, folder / fmt.QK_UMAP)
    _edit(folder, lambda m: m["files"][fmt.QK_UMAP].update(bytes=(folder / fmt.QK_UMAP).stat().st_size))


def _refused(match: str, action) -> None:
    with pytest.raises(CorpusError, match=match) as refused:
        action()
    assert "/tmp" not in str(refused.value)


@pytest.fixture
def copy(root, tmp_path) -> Path:
    folder = tmp_path / "index"
    shutil.copytree(root / "umap", folder)
    return folder


def test_a_truncated_umap_file_is_refused(copy):
    data = (copy / fmt.QK_UMAP).read_bytes()
    (copy / fmt.QK_UMAP).write_bytes(data[:len(data) // 2])
    _edit(copy, lambda m: m["files"][fmt.QK_UMAP].update(bytes=len(data) // 2))
    _refused("qk_umap.parquet is not a Parquet file", lambda: CorpusIndex.open(copy))


def test_a_umap_file_of_other_rows_columns_or_order_is_refused(copy):
    table = pq.read_table(copy / fmt.QK_UMAP)
    _rewrite(copy, table.slice(0, table.num_rows - 1))
    _edit(copy, lambda m: m["files"][fmt.QK_UMAP].update(rows=table.num_rows - 1))
    _refused("does not hold one row per row of qk_sample", lambda: CorpusIndex.open(copy))
    _rewrite(copy, table.rename_columns(["layer", "head", "u", "v"]))
    _edit(copy, lambda m: m["files"][fmt.QK_UMAP].update(rows=table.num_rows))
    _refused("qk_umap.parquet has columns layer, head, u, v", lambda: CorpusIndex.open(copy))
    _rewrite(copy, table.take(np.arange(table.num_rows)[::-1]))  # the heads in another order
    index = CorpusIndex.open(copy)  # the footer is right; the rows are compared when first read
    _refused("does not follow qk_sample.parquet row for row", lambda: index.qk_points(0, 0, "umap"))


def test_non_finite_umap_coordinates_are_refused(copy):
    table = pq.read_table(copy / fmt.QK_UMAP)
    x = table["x"].to_numpy().copy()
    x[3] = np.nan
    _rewrite(copy, table.set_column(2, "x", pa.array(x, pa.float32())))
    index = CorpusIndex.open(copy)
    _refused("UMAP coordinates of layer 0, head 0 are not all finite", lambda: index.qk_points(0, 0, "umap"))
    assert np.isfinite(index.qk_points(0, 0).x).all()  # its PCA is still there


@pytest.mark.parametrize("change, match", [
    (lambda m: m["options"].update(umap=None), "options.umap and its file list disagree"),
    (lambda m: m["files"].pop(fmt.QK_UMAP), "options.umap and its file list disagree"),
    (lambda m: m["options"].update(umap={"n_neighbors": "15"}), "options.umap must be null or UMAP's parameters"),
    (lambda m: m["options"]["umap"].update(n_neighbors=True), "options.umap must be null or UMAP's parameters"),
    (lambda m: m["options"]["umap"].update(min_dist=-1.0), "options.umap has a parameter out of range"),
])
def test_a_manifest_that_misstates_the_umap_is_refused(copy, change, match):
    _edit(copy, change)
    _refused(match, lambda: CorpusIndex.open(copy))


# --- --umap where umap cannot be imported ---------------------------------------------------------------------------

def test_umap_asked_for_where_it_cannot_be_imported_says_how_to_install_it_before_anything_is_written(tmp_path):
    """As on a machine without requirements-umap.txt: ``sys.modules["umap"] = None`` makes the import fail."""
    source = tmp_path / "sentences.txt"
    source.write_text("Rain fell.\n", encoding="utf-8")
    out = tmp_path / "index"
    code = ("import sys; sys.modules['umap'] = None; import cli; sys.exit(cli.main(['corpus', 'build', '--model', "
            f"'no-such-model', '--input', {str(source)!r}, '--out', {str(out)!r}, '--umap']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "error: UMAP is not installed here: pip install -r requirements-umap.txt" in done.stderr
    assert "no-such-model" not in done.stderr  # refused before the model is looked for
    assert str(tmp_path) not in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


# --- the Corpus tab -------------------------------------------------------------------------------------------------

def _scatter(at) -> dict:
    return next(spec for spec in (json.loads(chart.proto.spec) for chart in at.get("plotly_chart"))
                if "queries and" in spec["layout"]["title"]["text"])


def test_the_tab_offers_the_projection_where_the_index_has_umap_and_draws_it(monkeypatch, root):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("HEADLIGHT_CORPUS_ROOTS", str(root))
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.query_params["view"] = "Corpus"
    at.query_params["corpus_index"] = "umap"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    choice = at.segmented_control(key="corpus_projection")
    assert choice.options == ["PCA", "UMAP"] and choice.value == "pca"
    spec = _scatter(at)
    assert spec["layout"]["title"]["text"].endswith("keys (joint PCA)")
    assert spec["layout"]["xaxis"]["title"]["text"] == "PC 1"
    choice.set_value("umap").run()
    assert not at.exception, [e.value for e in at.exception]
    spec = _scatter(at)
    assert spec["layout"]["title"]["text"] == "Layer 0, head 0: 40 queries and 40 keys (joint UMAP)"
    assert (spec["layout"]["xaxis"]["title"]["text"], spec["layout"]["yaxis"]["title"]["text"]) == ("UMAP 1",
                                                                                                     "UMAP 2")
    umap = CorpusIndex.open(root / "umap").qk_points(0, 0, "umap")
    drawn = np.concatenate([_numbers(trace["x"]) for trace in spec["data"]])
    np.testing.assert_allclose(np.sort(drawn), np.sort(umap.x), atol=1e-5)
    at.selectbox(key="corpus_index").set_value("pca").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("segmented_control") or all(c.key != "corpus_projection" for c in at.get("segmented_control"))
    assert _scatter(at)["layout"]["xaxis"]["title"]["text"] == "PC 1"


def _numbers(value) -> np.ndarray:
    import base64

    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=np.float64)
