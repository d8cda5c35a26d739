"""``python -m cli corpus build`` end to end in a subprocess: a TSV column becomes a complete index folder; a bad
input is a one-line message and exit code 2; a build killed halfway leaves no manifest (no usable-looking index)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from corpus.format import MANIFEST

ROOT = Path(__file__).resolve().parent.parent
TEST_TSV = ROOT / "data" / "test.tsv"
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1"}


def corpus_build(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "corpus", "build", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_writes_a_complete_index_and_refuses_bad_input(tmp_path):
    source = tmp_path / "reviews.tsv"
    source.write_text("\n".join(TEST_TSV.read_text(encoding="utf-8").splitlines()[:21]) + "\n", encoding="utf-8")
    bad = corpus_build("--input", str(source), "--column", "sentence", "--out", str(tmp_path / "bad"))
    build = corpus_build("--model", "minilm", "--input", str(source), "--column", "text", "--out",
                         str(tmp_path / "index"), "--batch-size", "8", "--sample-per-head", "20",
                         "--context-layers", "0,6")
    _, error = bad.communicate(timeout=120)
    assert bad.returncode == 2
    assert "no column 'sentence'" in error and "Traceback" not in error and str(tmp_path) not in error
    assert not (tmp_path / "bad" / MANIFEST).exists()
    _, log = build.communicate(timeout=300)
    assert build.returncode == 0, log[-2000:]
    assert "sentences/s" in log and "wrote an index of 20 sentences" in log
    index = tmp_path / "index"
    manifest = json.loads((index / MANIFEST).read_text())
    assert manifest["options"]["input"] == "reviews.tsv" and manifest["options"]["column"] == "text"
    assert manifest["counts"]["sentences"] == 20 and set(manifest["counts"]["contexts"]) == {"0", "6"}
    assert set(manifest["files"]) == {p.relative_to(index).as_posix() for p in index.rglob("*")
                                      if p.is_file()} - {MANIFEST}
    assert pq.read_table(index / "sentences.parquet")["sentence"].to_pylist() == list(range(20))  # data rows


def test_a_killed_build_leaves_no_manifest(tmp_path):
    source = tmp_path / "sentences.txt"
    lines = TEST_TSV.read_text(encoding="utf-8").splitlines()[1:]
    source.write_text("\n".join(line.split("\t")[2] for line in lines) + "\n", encoding="utf-8")
    out = tmp_path / "index"
    build = corpus_build("--input", str(source), "--out", str(out), "--batch-size", "16", start_new_session=True)
    deadline = time.monotonic() + 240
    while not list((out / ".partial" / "parts").glob("*/*.parquet")) and time.monotonic() < deadline:
        assert build.poll() is None, build.communicate()[1][-2000:]
        time.sleep(0.5)
    assert build.poll() is None, "the build ended before it could be killed"
    os.killpg(build.pid, signal.SIGKILL)
    build.communicate(timeout=60)
    assert not (out / MANIFEST).exists()
    assert not any(path.name == MANIFEST for path in out.rglob("*"))
