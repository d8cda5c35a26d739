"""Headlight over a corpus: an index folder built by an Apache Beam pipeline (``corpus.pipeline``, ``python -m cli
corpus build``) and read, validated, by ``corpus.index`` (the Corpus tab, ``python -m cli corpus query``).

Layering: ``corpus.format``, ``corpus.index`` and ``corpus.vectors`` use NumPy, pyarrow and faiss only, so ``viz``
and ``ui`` may read an index; the pipeline (Beam, the model) stays in its own modules.
"""
