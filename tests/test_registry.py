"""The registry is the one place views and analyses are named: the CLI, the app's tabs and its analysis picker read
it, and a new entry shows up everywhere without editing app.py, ui/ or cli.py."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import analysis
from analysis.inputs import TraceInputs
from cli import _parser
from encoder.errors import HeadlightError, ViewError
from tests.support.floats import approx_f32
from tests.support.traces import synthetic_trace
from viz.distance import attention_by_distance, build_distance_histogram
from viz.options import SHARED_OPTIONS, Option, ViewSettings, parse_heads
from viz.registry import ANALYSES, GROUPS, VIEWS, View, build_view, group_analyses, view_options, view_tabs

SENTENCE = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]


def test_every_view_and_analysis_is_a_cli_choice_and_an_app_tab_or_analysis():
    parser = _parser()
    view_action = next(a for a in parser._actions if a.dest == "view")
    assert list(view_action.choices) == [*VIEWS, *ANALYSES]
    from ui.views import tab_labels

    assert tab_labels() == [*dict.fromkeys(view.label for view in VIEWS.values()), "Compare", "Analysis"]
    assert set(view_tabs()["Positional encodings"]) == {VIEWS["positional"], VIEWS["position-similarity"],
                                                        VIEWS["positional-dimensions"]}


def test_entries_name_module_level_functions_computes_in_analysis_and_figures_in_viz():
    """The registry only names things: no lambdas, no closures; the numbers come from ``analysis/``, the figures from
    ``viz/``."""
    def named(function) -> str:
        assert function.__name__ != "<lambda>" and function.__qualname__ == function.__name__, function
        return function.__module__.partition(".")[0]

    for entry in ANALYSES.values():
        assert named(entry.compute) == "analysis" and named(entry.rows) == "analysis", entry.name
        assert named(entry.figures) == "viz", entry.name
        for extra in (entry.limit, entry.table, *(o.dynamic_choices for o in entry.options)):
            if extra is not None:
                named(extra)
    for view in VIEWS.values():
        assert named(view.builder) == "viz", view.name
        if view.from_settings is not None:
            assert named(view.from_settings) == "viz", view.name


def test_every_analysis_answers_one_question_and_every_question_has_analyses():
    assert {entry.group for entry in ANALYSES.values()} == set(GROUPS)
    grouped = group_analyses()
    assert [entry for entries in grouped.values() for entry in entries] == sorted(
        ANALYSES.values(), key=lambda entry: list(GROUPS).index(entry.group))
    assert next(iter(ANALYSES)) == "rollout"  # the Analysis tab opens on the first question's first analysis
    assert all(group.title.endswith("?") and group.answers for group in GROUPS.values())
    assert all(entry.reading and "\n" not in entry.reading for entry in ANALYSES.values())


def test_every_option_is_a_flag_of_the_cli():
    flags = {option for action in _parser()._actions for option in action.option_strings}
    options = [*SHARED_OPTIONS, *(o for v in VIEWS.values() for o in v.options),
               *(o for a in ANALYSES.values() for o in a.options)]
    for option in options:
        expected = "--no-renormalize" if option.name == "renormalize" else option.flag
        assert expected in flags, option.name


def test_each_option_name_has_one_meaning():
    """Two declarations of one name would be two widgets, or two flags, fighting over one key."""
    seen: dict[str, Option] = {}
    for option in [*SHARED_OPTIONS, *(o for v in VIEWS.values() for o in v.options),
                   *(o for a in ANALYSES.values() for o in a.options)]:
        if option.name in seen:
            assert seen[option.name].kind == option.kind, option.name
        seen.setdefault(option.name, option)


def test_app_settings_map_to_builder_parameters_for_every_view():
    trace = synthetic_trace(SENTENCE, layers=3, heads=4)
    settings = ViewSettings(layer=2, head=3, heads=(0, 1, 2, 3), query=2, hide_special=True)
    for view in VIEWS.values():
        kwargs = view.settings_for(settings)
        assert set(kwargs) <= set(inspect.signature(view.builder).parameters), view.name
        if view.available(trace):  # the Next-token view needs an LM head (tests/test_decoder_views.py)
            assert view.builder(trace, **kwargs).data, view.name


def test_a_new_entry_needs_no_other_code(monkeypatch, tmp_path):
    """Register a view at run time: it is a CLI choice with its own flag and writes a figure."""
    def build_first_row(trace, layer: int = 0, *, factor: float = 1.0):
        return build_view(trace, "heatmap", layer=layer)

    entry = View("first-row", "First row", build_first_row, "a test view",
                 options=(Option("factor", "float", "first-row: a factor", low=0.0),))
    monkeypatch.setitem(VIEWS, entry.name, entry)
    assert "factor" in view_options(entry) and "layer" in view_options(entry)
    args = _parser().parse_args(["--trace", "t.npz", "--view", "first-row", "--factor", "2", "-o", "x.html"])
    assert args.view == "first-row" and args.factor == 2.0
    from ui.views import tab_labels

    assert "First row" in tab_labels()


def test_build_view_names_what_is_wrong():
    trace = synthetic_trace(SENTENCE)
    with pytest.raises(ViewError, match="view 'heatmp' is not one of heatmap"):
        build_view(trace, "heatmp")
    with pytest.raises(ViewError, match="view 'model' does not take layer"):
        build_view(trace, "model", layer=1)
    with pytest.raises(HeadlightError, match="layer 9 is out of range"):
        build_view(trace, "distance", layer=9)


def test_options_check_their_range_and_parse_heads():
    residual = ANALYSES["rollout"].option("residual")
    assert residual.check(0.25) == 0.25
    with pytest.raises(ViewError, match=r"--residual must be between 0 and 1, got 1\.5"):
        residual.check(1.5)
    with pytest.raises(ViewError, match="--samples must be at least 1, got 0"):
        ANALYSES["noise"].option("samples").check(0)
    assert parse_heads("0:3, 2:5") == ((0, 3), (2, 5))
    with pytest.raises(ViewError, match="layer:head pairs"):
        parse_heads("0-3")


def test_analyses_run_on_a_trace_through_the_registry():
    trace = synthetic_trace(SENTENCE, layers=3, heads=2)
    inputs = TraceInputs(trace)
    rollout = ANALYSES["rollout"].compute(inputs, {"residual": 0.5})
    np.testing.assert_allclose(rollout, analysis.attention_rollout(trace.attention, 0.5))
    figures = ANALYSES["rollout"].figures(rollout, trace, {"layer": 1, "query": 2})
    assert [name for name, _ in figures] == ["rollout", "rollout-tokens"]
    rows, result = ANALYSES["rollout"].rows(rollout, trace, {"layer": 1})
    assert len(rows) == len(SENTENCE) ** 2 and result["layer"] == 1
    clusters = ANALYSES["clusters"].compute(inputs, {})
    assert ANALYSES["clusters"].rows(clusters, trace, {"clusters": 2})[0]
    with pytest.raises(ViewError, match="needs the model"):
        ANALYSES["importance"].compute(inputs, {})


# --- the attention-distance view --------------------------------------------------------------------------------


def test_distance_mass_of_a_previous_token_head_sits_at_distance_one():
    count = 6
    previous = np.eye(count, k=-1, dtype=np.float32)
    previous[0, 0] = 1.0  # the first token attends to itself
    distances, mass = attention_by_distance(previous[None], np.arange(count), signed=True)
    assert distances.tolist() == list(range(-(count - 1), count))
    assert mass[0, distances.tolist().index(-1)] == approx_f32(5 / 6)
    assert mass[0, distances.tolist().index(0)] == approx_f32(1 / 6)
    np.testing.assert_allclose(mass.sum(axis=1), 1.0, rtol=1e-6)


def test_distance_view_rows_sum_to_one_and_label_the_mean_distance():
    trace = synthetic_trace(SENTENCE, layers=2, heads=3)
    fig = build_distance_histogram(trace, 1)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (3, len(SENTENCE))
    np.testing.assert_allclose(z.sum(axis=1), 1.0, rtol=1e-5)
    offsets = np.abs(np.arange(len(SENTENCE))[None, :] - np.arange(len(SENTENCE))[:, None])
    expected = (trace.attention[1] * offsets).sum(axis=(1, 2)) / len(SENTENCE)  # (H,)
    assert [label.split(" · ")[1] for label in fig.data[0].y] == [f"{m:.1f}" for m in expected]
    hidden = build_distance_histogram(trace, 0, hide_special=True, signed=True)
    assert "special tokens hidden" in hidden.layout.title.subtitle.text
    np.testing.assert_allclose(np.asarray(hidden.data[0].z).sum(axis=1), 1.0, rtol=1e-5)



def test_every_positional_view_takes_max_positions_as_its_builder_does():
    for view in view_tabs()["Positional encodings"]:
        assert "max_positions" in inspect.signature(view.builder).parameters
        assert "max_positions" in view_options(view), view.name
