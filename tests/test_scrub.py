"""The head slider inside a figure (viz.scrub): every step holds exactly what the figure built at that head shows,
the selected head is the initial state, the payload stays under its cap, images leave the slider out."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from encoder.trace import trace_text
from tests.support.traces import synthetic_trace
from ui.drawn import plotly_figure
from ui.scrub import scrub_chart, steps_json
from viz import VIEWS, build_view
from viz.attention import build_attention_heatmap
from viz.head_lines import build_head_lines
from viz.render import figure_to_bytes, figure_to_html
from viz.scrub import (
    KEPT,
    SCRUB_MAX_BYTES,
    SLIDER_NAME,
    SLIDER_ROOM,
    KeptSteps,
    from_typed_array,
    has_head_slider,
    payload_bytes,
    scrub_heads,
    split_steps,
    without_slider,
)
from viz.tokens import build_token_view

TEXT = "The cat sat on the mat because the cat was tired."


@pytest.fixture(scope="module")
def trace(minilm):
    return trace_text(minilm, TEXT)


def _slider(fig):
    (slider,) = [s for s in fig.layout.sliders if s.name == SLIDER_NAME]
    return slider


def _values(value):
    """A step argument as the browser gets it: a typed array decoded, anything else as is."""
    if isinstance(value, dict) and "bdata" in value:
        return from_typed_array(value)
    return list(value) if isinstance(value, tuple) else value


def _step(fig, layer: int, head: int) -> tuple[dict, dict, list[int]]:
    step = next(s for s in _slider(fig).steps if s.value == f"{layer}:{head}")
    data, layout, traces = step.args
    return {key: [_values(v) for v in values] for key, values in data.items()}, dict(layout), list(traces)


def test_heatmap_steps_hold_every_head_of_every_layer_exactly(trace):
    fig = build_attention_heatmap(trace, layer=3, head=1)
    slider = _slider(fig)
    every = [f"{layer}:{head}" for layer in range(6) for head in range(12)]
    assert [s.value for s in slider.steps] == every  # 13 tokens: all 72 heads fit
    assert slider.active == every.index("3:1") and slider.steps[slider.active].method == "update"
    for layer in range(6):
        for head in range(12):
            data, layout, traces = _step(fig, layer, head)
            assert traces == [0, 1]  # the weights and the click layer
            z, click = data["z"][0], data["customdata"][1]
            assert z.dtype == np.float32 and np.array_equal(z, trace.attention[layer, head])
            assert data["zmax"] == [float(z.max()), None] and data["zmin"] == [0.0, None]
            assert np.array_equal(click[:, 2], trace.attention[layer, head].ravel())
            assert layout == {"title.text": f"Layer {layer}, head {head}"}
    # The initial state is the head the figure was built at.
    np.testing.assert_array_equal(fig.data[0].z, _step(fig, 3, 1)[0]["z"][0])


@pytest.mark.parametrize("settings", [
    dict(hide_special=True), dict(hide_special=True, renormalize=False), dict(log_color=True),
])
def test_heatmap_steps_equal_the_figure_built_at_that_head(trace, settings):
    fig = build_attention_heatmap(trace, layer=2, head=5, **settings)
    for layer, head in ((0, 0), (2, 5), (5, 11)):
        data, _, _ = _step(fig, layer, head)
        built = build_attention_heatmap(trace, layer=layer, head=head, scrub=False, **settings)
        assert np.array_equal(data["z"][0], np.asarray(built.data[0].z, dtype=np.float32))
        assert (data["zmin"][0], data["zmax"][0]) == (built.data[0].zmin, built.data[0].zmax)
        assert np.array_equal(data["customdata"][1], built.data[1].customdata)


def test_a_pair_block_scrubs_within_the_block(minilm):
    pair = trace_text(minilm, "The cat sat on the mat.", "It was tired.")
    fig = build_attention_heatmap(pair, layer=1, head=2, block="AB")
    data, _, _ = _step(fig, 4, 7)
    built = build_attention_heatmap(pair, layer=4, head=7, block="AB", scrub=False)
    assert np.array_equal(data["z"][0], np.asarray(built.data[0].z, dtype=np.float32))


def test_masked_cells_stay_masked_in_every_step():
    causal = synthetic_trace(["a", "b", "c", "d", "e"], visible="causal", layers=2, heads=3)
    fig = build_attention_heatmap(causal, layer=1, head=0)
    data, _, _ = _step(fig, 0, 2)
    z = data["z"][0]
    assert np.isnan(z[np.triu_indices(5, 1)]).all()
    assert np.array_equal(z[np.tril_indices(5)], causal.attention[0, 2][np.tril_indices(5)])
    assert data["text"][1][1] == "masked"  # the click layer's hover of a masked cell


def test_token_view_steps_hold_the_query_row_of_every_head(trace):
    fig = build_token_view(trace, layer=2, heads=[4], query=8)
    assert _slider(fig).active == 2 * 12 + 4
    for layer, head in ((0, 0), (2, 4), (5, 9)):
        data, layout, traces = _step(fig, layer, head)
        row = trace.attention[layer, head, 8]
        assert traces == [0] and data == {"marker.color": [data["marker.color"][0]]}
        assert np.array_equal(data["marker.color"][0], row)
        assert layout == {"title.text": f"Layer {layer}, head {head}: attention from “the” (8) to each token"}
    # One colour scale for every head the slider carries; hover reads the weight from the colour value.
    assert fig.layout.coloraxis.cmax == float(trace.attention[:, :, 8].max())
    assert "one colour scale for every head" in fig.layout.title.subtitle.text
    assert fig.data[0].hovertemplate == "%{hovertext}%{marker.color:.4f}<extra></extra>"
    plain = build_token_view(trace, layer=2, heads=[4], query=8, scrub=False)
    assert plain.layout.coloraxis.cmax == float(trace.attention[2, 4, 8].max())  # without a slider: this head's
    to = build_token_view(trace, layer=1, heads=[0], query=2, direction="to")
    assert np.array_equal(_step(to, 3, 3)[0]["marker.color"][0], trace.attention[3, 3, :, 2])


def test_token_view_of_a_causal_model_restyles_the_visible_tokens_only():
    causal = synthetic_trace(["a", "b", "c", "d", "e"], visible="causal", layers=2, heads=3)
    fig = build_token_view(causal, layer=1, heads=[0], query=2)
    data, _, _ = _step(fig, 0, 1)
    assert np.array_equal(data["marker.color"][0], causal.attention[0, 1, 2, :3])


def _segments(data: dict, traces: list[int]) -> set[tuple[int, int]]:
    drawn = set()
    for y in data["y"]:
        drawn |= {(int(q), int(k)) for q, k, _ in np.asarray(y).reshape(-1, 3)}
    return drawn


def test_head_lines_steps_draw_the_lines_of_each_head(trace):
    fig = build_head_lines(trace, layer=2, heads=[3], threshold=0.2)
    assert _slider(fig).active == 2 * 12 + 3
    for layer, head in ((0, 0), (4, 10)):
        data, layout, traces = _step(fig, layer, head)
        expected = {(int(q), int(k)) for q, k in zip(*np.nonzero(trace.attention[layer, head] >= 0.2))}
        assert _segments(data, traces) == expected
        assert layout["title.text"] == f"Layer {layer}, head {head}: who attends to whom"
    # Every weight bin keeps its trace, so the steps restyle a fixed set; no legend, the title names the head.
    assert traces == list(range(1, len(fig.data) - 2))
    assert not any(t.showlegend is not False for t in fig.data[:-2])


def test_no_slider_for_aggregates_layer_means_several_heads_or_when_asked(trace):
    assert not has_head_slider(build_attention_heatmap(trace, aggregate="mean"))
    assert not has_head_slider(build_attention_heatmap(trace, layer_mean=True))
    assert not has_head_slider(build_attention_heatmap(trace, scrub=False))
    assert not has_head_slider(build_token_view(trace, heads=[1, 2]))
    assert not has_head_slider(build_token_view(trace, weights=trace.attention[0, 0]))
    assert not has_head_slider(build_head_lines(trace, heads=[1, 2]))
    one = synthetic_trace(["a", "b", "c"], layers=1, heads=1)
    assert not has_head_slider(build_attention_heatmap(one))


def test_payload_cap_all_layers_then_one_layer_then_none():
    tokens = ["[CLS]", *(f"w{i}" for i in range(126)), "[SEP]"]
    long = synthetic_trace(tokens, layers=6, heads=12)  # 128 tokens, MiniLM's shape
    fig = build_attention_heatmap(long, layer=4, head=7)
    steps = _slider(fig).steps
    assert [s.value for s in steps] == [f"4:{h}" for h in range(12)]  # 72 heads of 64 KiB do not fit, 12 do
    carried = sum(payload_bytes(({k: [_values(v) for v in vs] for k, vs in s.args[0].items()}, {})) for s in steps)
    assert carried == 12 * 128 * 128 * 4 <= SCRUB_MAX_BYTES
    assert len(json.dumps(fig.layout.sliders[0].to_plotly_json())) < 4 / 3 * SCRUB_MAX_BYTES + 50_000
    assert scrub_heads(long, 4, 128 * 128 * 4) == [(4, h) for h in range(12)]
    assert scrub_heads(long, 4, 256 * 256 * 4) == []  # 256 tokens: a layer's heads are 3 MiB
    wide = synthetic_trace(["[CLS]", *(f"w{i}" for i in range(254)), "[SEP]"], layers=2, heads=12)
    assert not has_head_slider(build_attention_heatmap(wide))


def test_the_slider_takes_room_above_the_plot_and_images_give_it_back(trace):
    plain = build_attention_heatmap(trace, layer=1, head=1, scrub=False)
    fig = build_attention_heatmap(trace, layer=1, head=1)
    assert fig.layout.height == plain.layout.height + SLIDER_ROOM
    assert fig.layout.margin.t == plain.layout.margin.t + SLIDER_ROOM
    stripped = without_slider(fig.to_plotly_json())
    assert stripped["layout"]["sliders"] == [] and stripped["layout"]["height"] == plain.layout.height
    assert stripped["layout"]["margin"]["t"] == plain.layout.margin.t
    assert without_slider(plain.to_plotly_json()) == plain.to_plotly_json()


def test_png_and_svg_show_no_slider(trace, image_browser):
    fig = build_attention_heatmap(trace, layer=1, head=1)
    png = figure_to_bytes(fig, "png")
    assert int.from_bytes(png[20:24], "big") == fig.layout.height - SLIDER_ROOM
    svg = figure_to_bytes(fig, "svg").decode()
    assert "slider" not in svg and "Layer 1, head 1" in svg


def test_html_keeps_the_slider_and_inlines_plotly(trace):
    page = figure_to_html(build_token_view(trace, layer=0, heads=[2], query=3))
    assert '"sliders"' in page and '"method":"update"' in page
    assert "<script src=\"http" not in page and "plotly.js v" in page  # inlined, no CDN


def test_split_steps_empties_the_steps_and_filling_them_back_gives_the_figure(trace):
    """What the app draws (steps emptied) and what it hands the page apart (their contents) make the whole figure;
    the drawn part no longer grows with the heads the slider carries."""
    for fig in (build_attention_heatmap(trace, layer=3, head=1), build_token_view(trace, layer=0, heads=[2], query=3),
                build_head_lines(trace, layer=1, heads=[4])):
        figure = json.loads(fig.to_json())
        light, held = split_steps(figure)
        steps = light["layout"]["sliders"][0]["steps"]
        assert list(held) == [step["value"] for step in steps] == [f"{la}:{h}" for la in range(6) for h in range(12)]
        assert all(step["args"][:2] == [{}, {}] and step["method"] == "update" for step in steps)
        assert light["data"] == figure["data"] and light["layout"]["sliders"][0]["active"] == (
            figure["layout"]["sliders"][0]["active"])
        for step in steps:
            step["args"][:2] = held[step["value"]]
        assert light == figure
    heatmap = json.loads(build_attention_heatmap(trace, layer=3, head=1).to_json())
    light, held = split_steps(heatmap)
    assert held["2:7"][1] == {"title.text": "Layer 2, head 7"}
    assert np.array_equal(from_typed_array(held["2:7"][0]["z"][0]), trace.attention[2, 7])
    assert len(json.dumps(light)) < len(json.dumps(heatmap)) / 10
    plain = json.loads(build_attention_heatmap(trace, scrub=False).to_json())
    assert split_steps(plain) == (plain, {})


def test_views_from_the_registry_and_the_cli_carry_the_slider(trace, tmp_path):
    for name, settings in (("heatmap", dict(layer=1, head=2)), ("tokens", dict(heads=[2], query=3)),
                           ("lines", dict(heads=[2]))):
        assert has_head_slider(build_view(trace, name, **settings)), name
    assert "scrub" in VIEWS["heatmap"].parameters
    from cli import main

    out = tmp_path / "heatmap.html"
    assert main(["--trace", str(trace.save(tmp_path / "t.npz")), "--view", "heatmap", "--layer", "2", "--head", "3",
                 "-o", str(out)]) == 0
    assert '"value":"2:3"' in out.read_text()


@pytest.mark.parametrize("view", ["heatmap", "lines"])
def test_a_views_steps_are_made_once_per_trace_and_settings_and_each_figure_owns_its_steps(trace, view):
    """The next figure of a view at another layer or head takes the steps kept for its trace and settings: its JSON
    is the one built with nothing kept; a step changed in one figure (``name_kind`` sets a step's args) leaves the
    other figures' steps as they were."""
    settings = {"heatmap": dict(head=2), "lines": dict(heads=(2,), threshold=0.2)}[view]
    KEPT._kept.clear()
    first = build_view(trace, view, layer=0, **settings)
    kept = next(iter(KEPT._kept.values()))[1]
    second = build_view(trace, view, layer=3, **settings)
    assert next(iter(KEPT._kept.values()))[1] is kept and len(KEPT._kept) == 1  # taken, not made again
    warm = pio.to_json(second, validate=False)
    KEPT._kept.clear()
    assert pio.to_json(build_view(trace, view, layer=3, **settings), validate=False) == warm
    _slider(first).steps[0].args = [{}, {"title.text": "changed"}, [0]]
    assert _slider(second).steps[0].args[1] != {"title.text": "changed"}
    other = {**settings, "threshold": 0.3} if view == "lines" else {**settings, "log_color": True}
    build_view(trace, view, layer=0, **other)
    assert len(KEPT._kept) == 2  # other settings: other steps


def test_kept_steps_hold_their_byte_bound_and_only_their_own_trace(trace, minilm):
    kept = KeptSteps(max_bytes=100)
    kept.keep("a", trace, [{"value": "0:0"}], 60)
    kept.keep("b", trace, [{"value": "0:1"}], 60)  # over the bound: the least recently used goes
    assert kept.get("a", trace) is None and kept.get("b", trace) == [{"value": "0:1"}]
    assert kept.get("b", trace_text(minilm, "Another text.")) is None  # an id reused by another trace: nothing


@pytest.mark.parametrize("view", ["heatmap", "tokens", "lines", "model"])
def test_the_figure_json_made_from_its_properties_is_plotlys(trace, view):
    """``ui.drawn.plotly_figure`` (no deep copy) gives exactly the JSON Plotly makes of the figure; the head slider
    split from the properties gives the JSON the split of Plotly's own gives."""
    fig = build_view(trace, view, layer=1, heads=(4,)) if view in ("tokens", "lines") else build_view(
        trace, view, layer=1, head=4) if view == "heatmap" else build_view(trace, view)
    plotly_json = json.loads(pio.to_json(fig, validate=False))
    assert plotly_figure(fig).spec == plotly_json
    if has_head_slider(fig):
        light, held = split_steps(plotly_json)
        chart = scrub_chart(fig)
        assert chart.drawn.spec == light and json.loads(chart.steps) == held


def test_the_figure_a_change_draws_is_freed_without_the_garbage_collector(trace):
    """The figure ``st.plotly_chart`` gets at each layer or head change holds no reference cycle, so its spec is freed
    when the change is done, not at the next full collection (which walks every live object with the GIL held)."""
    import gc
    import weakref

    chart = scrub_chart(build_view(trace, "heatmap", layer=1, head=4))
    gc.disable()
    try:
        drawn = chart.at_step("2:3").drawn
        assert isinstance(drawn, go.Figure) and drawn.to_dict()["layout"]["title"]["text"].startswith("Layer 2, head 3")
        gone = weakref.ref(drawn)
        del drawn
        assert gone() is None
    finally:
        gc.enable()


# The figure at a step: a layer or head change in the app draws the figure it has at another head moved to the
# step (``ScrubChart.at_step``), so every step must give exactly the figure built at that head, as JSON.
AT_STEP_VIEWS = [
    ("heatmap", {}), ("heatmap", dict(hide_special=True)), ("heatmap", dict(hide_special=True, renormalize=False)),
    ("heatmap", dict(log_color=True)), ("heatmap", dict(selected=(3, 4))),
    ("tokens", dict(query=8)), ("tokens", dict(query=2, direction="to")),
    ("lines", dict(threshold=0.2)), ("lines", dict(query=8)), ("lines", dict(threshold=0.05, hide_special=True)),
    ("lines", dict(threshold=0.0, max_lines=40)),  # every head over max_lines: its strongest lines, a note
]


def _view_at(trace, view: str, layer: int, head: int, arguments: dict):
    heads = dict(head=head) if view == "heatmap" else dict(heads=(head,))
    return build_view(trace, view, layer=layer, **heads, **arguments)


def _assert_every_step_is_the_built_figure(trace, view: str, arguments: dict, values=None) -> int:
    chart = scrub_chart(_view_at(trace, view, 1, 1, arguments))
    checked = 0
    for value in values or chart.values:
        layer, head = (int(part) for part in value.split(":"))
        built = scrub_chart(_view_at(trace, view, layer, head, arguments))
        assert built.steps_id == chart.steps_id and built.active == value
        assert json.loads(json.dumps(chart.at_step(value).drawn.spec)) == built.drawn.spec, value
        checked += 1
    return checked


@pytest.mark.parametrize(("view", "arguments"), AT_STEP_VIEWS)
def test_the_figure_at_every_step_is_the_figure_built_at_that_head(trace, view, arguments):
    assert _assert_every_step_is_the_built_figure(trace, view, arguments) == 6 * 12


@pytest.mark.parametrize("view", ["heatmap", "tokens", "lines"])
def test_the_figure_at_a_step_of_causal_and_grouped_query_models(view):
    from encoder.sources import load_path
    from tests.conftest import FIXTURES

    causal = synthetic_trace(["a", "b", "c", "d", "e"], visible="causal", layers=2, heads=3)
    arguments = dict(query=3) if view != "heatmap" else {}
    assert _assert_every_step_is_the_built_figure(causal, view, arguments) == 6
    llama = trace_text(load_path(FIXTURES / "families" / "llama"), "The cat sat on the mat.")  # heads share kv
    assert _assert_every_step_is_the_built_figure(llama, view, arguments) == llama.num_layers * llama.num_heads


def test_the_figure_at_a_step_changes_only_what_the_step_restyles(trace):
    chart = scrub_chart(build_attention_heatmap(trace, layer=0, head=0))
    moved = chart.at_step("4:7")
    assert chart.at_step(chart.active) is chart
    assert (moved.steps_id, moved.steps, moved.values, moved.active) == (chart.steps_id, chart.steps, chart.values,
                                                                          "4:7")
    before, after = chart.drawn.spec, moved.drawn.spec
    assert after["layout"]["sliders"][0]["active"] == chart.values.index("4:7")
    assert after["layout"]["title"]["text"] != before["layout"]["title"]["text"]
    assert after["layout"]["xaxis"] == before["layout"]["xaxis"]
    assert np.array_equal(from_typed_array(after["data"][0]["z"]), trace.attention[4, 7])
    assert before["layout"]["sliders"][0]["active"] == 0  # the kept chart is left as it was
    with pytest.raises(KeyError):
        chart.at_step("9:9")


def test_the_steps_read_back_are_their_json(trace):
    """Each step's contents read back from the steps' JSON (``ScrubChart.update_at``, one step's text) are what the
    whole JSON reads back, for every sliding view; the steps are Plotly's JSON (NumPy scalars as numbers, NaN as
    null)."""
    for view in ("heatmap", "tokens", "lines"):
        chart = scrub_chart(_view_at(trace, view, 2, 3, {}))
        whole = json.loads(chart.steps)
        assert list(whole) == list(chart.values)
        assert {value: chart.update_at(value) for value in chart.values} == whole
    text, spans = steps_json({"1:2": [{"a": [np.float32(0.5), float("nan"), (1, np.int64(2))]}, {"b": None}],
                              'say "x"': [{}, {}]})
    assert json.loads(text) == {"1:2": [{"a": [0.5, None, [1, 2]]}, {"b": None}], 'say "x"': [{}, {}]}
    assert [json.loads(text[start:end]) for start, end in spans.values()] == list(json.loads(text).values())
