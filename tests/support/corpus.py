"""A small corpus index built by the real pipeline (``corpus.build.build_index``, Beam's in-memory DirectRunner):
what the reader's tests open, and break on purpose."""

from __future__ import annotations

from pathlib import Path

from corpus.build import build_index
from corpus.handler import CorpusOptions


def build_test_index(sentences: list[str], folder: Path, **options) -> dict:
    """Build the index of ``sentences`` (MiniLM unless ``model`` is given) into ``folder``; return its manifest.
    ``options`` are ``CorpusOptions`` fields (``context_layers``, ``top_k``, ``sample_per_head``, ...)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    corpus_file = folder.parent / f"{folder.name}-sentences.txt"
    corpus_file.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return build_index(corpus_file, folder, CorpusOptions(**options))
