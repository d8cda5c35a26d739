"""The family reference fixtures (``tests/fixtures/families/``, made by Hugging Face ``transformers`` on PyTorch):
load one, trace each of its cases, and compare with the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FAMILIES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "families"
TOLERANCE = 1e-5  # every number within this of the reference (float32 floors are 2e-6 to 6e-6)
# ModernBERT's middle hidden states reach ~13 in size on this random fixture, and the float32 reference itself is
# up to 1.6e-5 from transformers' own float64 run there: its attention and last hidden state (what the issue pins,
# the fixture's "f32 floor" 5e-6) keep the 1e-5 bar, its middle hidden states get this one.
# ALBERT's one shared layer, run three times, carries its rounding on: its reference is up to 6e-6 from float64
# (the fixture's f32 floor), and oneDNN's kernels on some CPUs put our middle states 1.1e-5 from that reference (two
# float32 runs, each within its floor of the float64 one); its attention and last hidden state keep the 1e-5 bar.
MIDDLE_HIDDEN_TOLERANCE = {"modernbert": 3e-5, "albert": 2e-5}
_LOADED: dict[str, object] = {}


def load_family(name: str):
    """The fixture model ``name`` loaded through ``encoder.sources.load_path`` (once per test session)."""
    from encoder.sources import load_path

    if name not in _LOADED:
        _LOADED[name] = load_path(FAMILIES_DIR / name, name=name)
    return _LOADED[name]


def reference(name: str) -> dict[str, dict[str, np.ndarray]]:
    """case -> key -> array, from the fixture's reference.npz."""
    with np.load(FAMILIES_DIR / name / "reference.npz", allow_pickle=False) as data:
        cases: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            case, field = key.split("/", 1)
            cases.setdefault(case, {})[field] = data[key]
        return cases


def check_case(name: str, case: str) -> dict[str, float]:
    """Trace one case of family ``name`` and assert tokens equal and every number within ``TOLERANCE``; returns
    the largest differences (attention, hidden states, last hidden state, logits)."""
    from encoder.trace import trace_text

    expected = reference(name)[case]
    pair = str(expected["pair"]) or None
    trace = trace_text(load_family(name), str(expected["text"]), pair)
    assert trace.tokens == tuple(str(t) for t in expected["tokens"]), (name, case)
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    differences = {
        "attention": np.abs(trace.attention - expected["attention"]).max(),
        "hidden": np.abs(trace.hidden - expected["hidden_states"]).max(),
        "last_hidden_state": np.abs(trace.hidden[-1] - expected["last_hidden_state"]).max(),
    }
    if "logits" in expected:
        differences["logits"] = np.abs(trace.outputs["logits"] - expected["logits"]).max()
    for what, difference in differences.items():
        limit = MIDDLE_HIDDEN_TOLERANCE.get(name, TOLERANCE) if what == "hidden" else TOLERANCE
        assert difference < limit, f"{name}/{case}: {what} differs by {difference:.2e}"
    return differences


def check_long_reference(name: str, length: int):
    """Trace the text of ``<name>/long_reference.npz`` (made by ``make_<family>_long.py``): ``length`` tokens equal
    to transformers', attention and every hidden state within ``TOLERANCE``; returns the trace."""
    from encoder.trace import trace_text

    with np.load(FAMILIES_DIR / name / "long_reference.npz", allow_pickle=False) as data:
        expected = {key.split("/", 1)[1]: data[key] for key in data.files}
    trace = trace_text(load_family(name), str(expected["text"]))
    assert len(trace.tokens) == length and trace.tokens == tuple(str(t) for t in expected["tokens"])
    np.testing.assert_array_equal(trace.token_ids, expected["input_ids"])
    np.testing.assert_allclose(trace.attention, expected["attention"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(trace.hidden, expected["hidden_states"], atol=TOLERANCE, rtol=0)
    return trace


def check_padded_batch(name: str, texts: list[str]) -> None:
    """A padded batch of ``texts`` gives each text's single trace: tokens, attention, hidden states, logit terms.

    Padding changes the shapes the matrix products run at and with them the order of float32 sums: on CLIP's
    fixture (logits up to ~30) batch and single attention differ by up to 1.2e-6 on some CPUs, so attention gets
    the reference's bar (``TOLERANCE``), as the hidden states do."""
    from encoder.trace import trace_batch, trace_text

    loaded = load_family(name)
    for single, batched in zip((trace_text(loaded, text) for text in texts), trace_batch(loaded, texts)):
        assert batched.tokens == single.tokens
        np.testing.assert_allclose(batched.attention, single.attention, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(batched.hidden, single.hidden, atol=TOLERANCE, rtol=0)
        for term, values in single.logit_terms.items():
            np.testing.assert_allclose(batched.logit_terms[term], values, atol=1e-5)
