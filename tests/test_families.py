"""Every Hugging Face family we port, against its reference fixture (``tests/fixtures/families``, made by
``transformers`` on PyTorch): tokens equal; attention, every hidden state and logits within 1e-5, every case."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.families import check_case, load_family, reference

PORTED = ["bert-cls", "roberta", "roberta-cls", "xlm-roberta", "distilbert", "distilbert-cls", "electra", "electra-cls",
          "albert", "albert-cls", "gpt2"]
CASES = [(name, case) for name in PORTED for case in sorted(reference(name))]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_family_matches_transformers(name, case):
    check_case(name, case)


def test_bert_classifier_reads_its_labels_and_predicts():
    model = load_family("bert-cls")
    assert model.labels == ("negative", "neutral", "positive")
    from encoder.trace import class_probabilities, trace_text

    prediction = class_probabilities(trace_text(model, "The cat sat on the mat."))
    assert {label for label, _ in prediction} == set(model.labels)
    assert sum(p for _, p in prediction) == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite([p for _, p in prediction]).all()
