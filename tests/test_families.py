"""Every Hugging Face family we port, against its reference fixture (``tests/fixtures/families``, made by
``transformers`` on PyTorch): tokens equal; attention, every hidden state and logits within 1e-5, every case."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.families import check_case, load_family, reference

PORTED = ["bert-cls", "roberta", "roberta-cls", "xlm-roberta", "distilbert", "distilbert-cls", "electra", "electra-cls",
          "albert", "albert-cls", "gpt2", "mpnet", "deberta-v3", "modernbert"]
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


@pytest.mark.parametrize("name", PORTED)
def test_the_cli_opens_every_family_folder(name, tmp_path):
    from cli import main
    from tests.support.families import FAMILIES_DIR

    out = tmp_path / f"{name}.html"
    assert main(["--model", str(FAMILIES_DIR / name), "--text", "The cat sat on the mat.", "--view", "heatmap",
                 "--layer", "1", "-o", str(out)]) == 0
    assert "plotly" in out.read_text(encoding="utf-8")[:5000].lower()
    assert main(["--model", str(FAMILIES_DIR / name), "--text", "The cat sat.", "--merge-words", "--format", "csv",
                 "-o", str(tmp_path / f"{name}.csv")]) == 0


@pytest.mark.parametrize("name", ["roberta-cls", "albert", "gpt2", "xlm-roberta"])
def test_the_app_opens_family_folders_with_their_prediction(name, monkeypatch):
    import json

    from streamlit.testing.v1 import AppTest

    from tests.support.families import FAMILIES_DIR

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(FAMILIES_DIR))

    def heatmap_labels(**params) -> list[str]:
        at = AppTest.from_file("../app.py", default_timeout=180)
        at.query_params.update(model="folder or hub id…", source=str(FAMILIES_DIR / name),
                               text="Café naïve résumé — a wonderful film.", **params)
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        if load_family(name).labels:
            assert any(m.value.startswith("**Prediction: ") for m in at.markdown)
        return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["xaxis"]["ticktext"]

    pieces = heatmap_labels()
    assert not any(mark in label for label in pieces for mark in ("Ġ", "▁", "Ã"))  # byte pieces decoded
    words = heatmap_labels(merge_words="true")
    word = "cafe" if name == "albert" else "Café"  # ALBERT's tokenizer lower-cases and strips accents
    assert word in words and len(words) < len(pieces), words
