"""Building a small corpus index from the Corpus tab: an uploaded text file (one sentence per line, at most
``MAX_SENTENCES``) through the open model, by ``python -m cli corpus build`` in a background process (the page never
imports the Beam pipeline), written under the folder the operator gives the app for that (``HEADLIGHT_CORPUS_BUILDS``,
also listed as a corpus root). One build runs at a time on a server; the tab follows its progress line every
``POLL_SECONDS`` and opens the index when it is written. Big corpora are built with the command line.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from analysis import sentences_from_text
from encoder.errors import HeadlightError
from encoder.settings import settings
from ui.text import plain

MAX_SENTENCES = 2000  # an upload built here; larger corpora: python -m cli corpus build
POLL_SECONDS = 1.0
UPLOADS = ".uploads"  # inside the builds folder: the uploaded sentences and each build's log (hidden: not listed)
NEXT_INDEX = "corpus_index_next"  # session state: the folder of the index the picker shows next (just built)
ROOT = Path(__file__).resolve().parent.parent
_PROGRESS = re.compile(r"([\d,]+) sentences \(")
log = logging.getLogger("headlight.corpus")


@dataclass
class Build:
    """One background build: its process, the index folder's name and path, its log, the sentences it traces."""

    process: subprocess.Popen
    label: str
    out: Path
    log: Path
    total: int
    started: float = field(default_factory=time.monotonic)

    def done(self) -> int:
        """Sentences traced so far (the last progress line of the log)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return 0
        found = _PROGRESS.findall(text)
        return int(found[-1].replace(",", "")) if found else 0

    def failure(self) -> str:
        """Why the build failed: the command's own "error:" line (ours: no server path), else a pointer to the log."""
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        if ours:
            return ours[-1]
        log.error("corpus build %s failed:\n%s", self.label, "\n".join(lines[-40:]))
        return "It stopped without a message (the server's log says why)."


_LOCK = threading.Lock()
_RUNNING: list[Build] = []  # at most one build at a time on this server


def start_build(source: str, sentences: list[str], name: str, folder: Path) -> Build:
    """Start ``python -m cli corpus build`` of ``sentences`` through ``source`` into a new folder of ``folder``
    named after the upload ``name``; CorpusError-like HeadlightError when another build runs."""
    with _LOCK:
        if _RUNNING and _RUNNING[0].process.poll() is None:
            raise HeadlightError("Another visitor's index is being built; try again when it is done.")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(name).stem)[:40].strip("-") or "upload"
        label = f"{stem}-{stamp}"
        uploads = folder / UPLOADS
        uploads.mkdir(parents=True, exist_ok=True)
        source_file, log_file = uploads / f"{label}.txt", uploads / f"{label}.log"
        source_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        with log_file.open("wb") as handle:
            process = subprocess.Popen([sys.executable, "-m", "cli", "corpus", "build", "--model", source,
                                        "--input", str(source_file), "--out", str(folder / label)],
                                       cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        _RUNNING[:] = [Build(process, label, folder / label, log_file, len(sentences))]
        return _RUNNING[0]


def build_ui(source: str, clear_listing) -> None:
    """Under the tab: upload a text file and build its index through the open model (when the operator gives the
    app a folder for builds); the progress of this session's build; ``clear_listing()`` once it is written."""
    folder = settings().corpus_builds
    if folder is None:
        return
    with st.expander("Build a small index from a text file"):
        st.caption(f"One sentence per line, at most {MAX_SENTENCES:,} sentences, through the model open here "
                   "(Apache Beam, in a background process). Larger corpora: python -m cli corpus build.")
        upload = st.file_uploader("Sentences", type=["txt"], key="corpus_upload")
        if upload is not None and st.button("Build the index", key="corpus_build"):
            try:
                sentences = sentences_from_text(upload.getvalue().decode("utf-8"), limit=MAX_SENTENCES)
                st.session_state["corpus_job"] = start_build(source, list(sentences), upload.name, folder)
            except UnicodeDecodeError:
                st.error("The uploaded file is not UTF-8 text.")
            except HeadlightError as error:
                st.error(plain(error))
        if st.session_state.get("corpus_job") is not None:
            _progress_ui(clear_listing)


@st.fragment(run_every=POLL_SECONDS)
def _progress_ui(clear_listing) -> None:
    job: Build | None = st.session_state.get("corpus_job")
    if job is None:
        return
    code = job.process.poll()
    if code is None:
        done = job.done()
        st.progress(min(done / max(job.total, 1), 1.0), text=f"Building {job.label}: {done:,} of {job.total:,} "
                                                             f"sentences, {time.monotonic() - job.started:.0f} s")
        return
    st.session_state["corpus_job"] = None
    job.log.with_suffix(".txt").unlink(missing_ok=True)
    if code == 0 and (job.out / "manifest.json").is_file():
        clear_listing()
        st.session_state[NEXT_INDEX] = str(job.out)
        st.rerun(scope="app")
    st.error(f"The index was not built. {plain(job.failure())}")
