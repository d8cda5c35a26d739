"""The Streamlit app through AppTest: widgets in, figure specs out, the URL, bad input, and no re-runs."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.app import open_downloads
from tests.support.models import write_tiny_bert_folder

TIMEOUT = 180


def _app(**params) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _array(value) -> np.ndarray:
    """A figure array as sent to the browser: a plain list, or Plotly's base64 typed array."""
    if isinstance(value, dict):
        shape = tuple(int(n) for n in str(value.get("shape", "-1")).split(","))
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).reshape(shape)
    return np.asarray(value)


def _title(figure: dict) -> str:
    return figure["layout"]["title"]["text"]


def _encoder_runs(at: AppTest) -> int:
    text = "\n".join(m.value for m in at.sidebar.markdown)
    return int(re.search(r"\*\*encoder runs\*\*: (\d+)", text).group(1))


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_default_page_shows_the_heatmap_of_the_example_sentence():
    at = _app()
    _no_errors(at)
    (figure,) = _figures(at)
    assert _title(figure).startswith("Layer 0, head 0")
    heatmap = next(t for t in figure["data"] if t["type"] == "heatmap")
    assert figure["layout"]["xaxis"]["ticktext"][:4] == ["[CLS]", "the", "cat", "sat"]
    assert heatmap is not None
    assert at.selectbox(key="model").value == "minilm"
    assert not at.get("download_button")  # drawn only in an open Download menu
    assert {b.label for b in open_downloads(at).get("download_button")} >= {"PNG", "SVG", "PDF", "HTML", "NPZ",
                                                                               "JSON", "CSV"}
    _no_errors(at)


def test_layer_and_head_changes_update_the_figure_without_rerunning_the_encoder():
    at = _app()
    runs = _encoder_runs(at)
    at.slider(key="layer").set_value(3).run()
    assert _title(_figures(at)[0]).startswith("Layer 3, head 0")
    at.slider(key="head").set_value(7).run()
    assert _title(_figures(at)[0]).startswith("Layer 3, head 7")
    at.segmented_control(key="head_mode").set_value("max").run()
    assert "max of heads 0-11" in _title(_figures(at)[0])
    at.checkbox(key="log_color").check().run()
    at.selectbox(key="colorscale").set_value("Viridis").run()
    _no_errors(at)
    assert _encoder_runs(at) == runs  # every change above was a cache hit


def _scrub_data(at: AppTest) -> dict:
    """What the in-figure slider's component got this run (``ui.scrub``)."""
    (component,) = at.get("bidi_component")
    return json.loads(component.proto.json)


def test_the_chart_comes_with_its_slider_steps_emptied_and_their_contents_once_per_session():
    """A layer change sends the chart without every head's arrays: the page got them with the first chart."""
    at = _app()
    (figure,) = _figures(at)
    steps = figure["layout"]["sliders"][0]["steps"]
    assert len(steps) == 72 and all(step["args"][:2] == [{}, {}] for step in steps)
    first = _scrub_data(at)
    held = json.loads(first["steps"])
    assert list(held) == [step["value"] for step in steps] and first["value"] == "0:0"
    assert held["2:5"][1] == {"title.text": "Layer 2, head 5"} and _array(held["2:5"][0]["z"][0]).shape == (13, 13)
    at.slider(key="layer").set_value(3).run()
    (figure,) = _figures(at)
    assert _title(figure).startswith("Layer 3, head 0") and figure["layout"]["sliders"][0]["active"] == 36
    again = _scrub_data(at)
    assert again["steps"] is None and again["steps_id"] == first["steps_id"] and again["value"] == "3:0"
    at.checkbox(key="hide_special").check().run()  # other steps: their contents go along once
    changed = _scrub_data(at)
    assert changed["steps_id"] != first["steps_id"] and len(json.loads(changed["steps"])) == 72


def test_query_params_open_exactly_that_view():
    at = _app(text="Where is the station?", pair="Two blocks north.", layer="4", head="9", view="Heatmap",
              block="A → B")
    _no_errors(at)
    assert at.text_area(key="text").value == "Where is the station?"
    assert at.slider(key="layer").value == 4 and at.slider(key="head").value == 9
    figure = _figures(at)[0]
    assert _title(figure).startswith("Layer 4, head 9")
    assert "block A → B" in figure["layout"]["title"]["subtitle"]["text"]
    # Queries from sentence A (segment 0, with [CLS] and its [SEP]), keys from sentence B (segment 1).
    assert figure["layout"]["yaxis"]["ticktext"] == ["[CLS]", "where", "is", "the", "station", "?", "[SEP]"]
    assert figure["layout"]["xaxis"]["ticktext"] == ["two", "blocks", "north", ".", "[SEP]"]


@pytest.mark.parametrize(
    "view, expected",
    [("Head grid", r"Layer 0"), ("Model view", r"6 layers"), ("Token view", r"Layer 0"),
     ("Head lines", r"Layer 0"), ("Positional encodings", r"Positional encodings")],
)
def test_every_view_renders(view, expected):
    at = _app(view=view)
    _no_errors(at)
    figures = _figures(at)
    assert figures and re.search(expected, _title(figures[0]))


def test_positional_view_shows_the_learned_table_rows():
    at = _app(view="Positional encodings")
    table = _figures(at)[0]
    assert "learned" in _title(table)
    assert len(_figures(at)) == 3


@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_text_is_a_message_not_an_exception(text):
    at = _app(text=text) if text else _app()
    if not text:
        at.text_area(key="text").set_value("").run()
    _no_errors(at)
    assert any("empty" in w.value for w in at.warning)
    assert not at.get("plotly_chart")
    assert at.selectbox(key="model").value == "minilm"  # the rest of the app still works


def test_huge_text_is_a_message():
    at = _app()
    at.text_area(key="text").set_value("word " * 30_000).run()
    _no_errors(at)
    assert any("limit" in w.value for w in at.warning)


def test_long_text_is_truncated_and_says_so():
    at = _app()
    at.text_area(key="text").set_value("word " * 600).run()
    _no_errors(at)
    assert any("602 tokens" in i.value and "first 512" in i.value for i in at.info)
    assert _figures(at)


def test_broken_folder_and_offline_hub_id_show_errors_and_fall_back(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    monkeypatch.setenv("HEADLIGHT_HUB_IDS", "*")
    folder = write_tiny_bert_folder(tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not a checkpoint")
    at = _app(model="folder or hub id…", source=str(folder))
    _no_errors(at)
    assert any("not a readable safetensors" in e.value for e in at.error)
    assert _figures(at)  # the default model is shown instead
    at.text_input(key="source").set_value("someone/not-cached-model").run()
    _no_errors(at)
    assert any("not in the local Hugging Face cache" in e.value for e in at.error)


def test_a_local_checkpoint_folder_is_explored(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    at = _app(model="folder or hub id…", source=str(folder), text="the cat sat on the mat")
    _no_errors(at)
    assert not at.error
    figure = _figures(at)[0]
    assert figure["layout"]["xaxis"]["ticktext"] == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", "[SEP]"]
    assert at.slider(key="layer").max == 1 and at.slider(key="head").max == 1


def test_a_one_layer_one_head_model_with_few_positions_opens_every_tab(tmp_path, monkeypatch):
    """Legal edge configurations: one layer, one head (no slider can span 0-0), and fewer positions than the
    Max-tokens default and than the text's tokens (truncated and flagged)."""
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "one", num_hidden_layers=1, num_attention_heads=1,
                                    max_position_embeddings=8)
    at = _app(model="folder or hub id…", source=str(folder), text="the cat sat on the mat the cat sat on the mat")
    _no_errors(at)
    assert not at.error
    assert {slider.key for slider in at.slider}.isdisjoint({"layer", "head"})  # captions instead of 0-0 sliders
    assert any("the model sees the first 8" in i.value for i in at.info)
    for tab in ("Head grid", "Model view", "Token view", "Head lines", "Attention distance", "Positional encodings"):
        tabbed = _app(model="folder or hub id…", source=str(folder), text="the cat sat", view=tab)
        _no_errors(tabbed)
        assert _figures(tabbed), tab


@pytest.mark.parametrize(
    "analysis, expected",
    [("Rollout", ["Attention rollout after layer 0", "Rollout after layer 0"]),
     ("Flow", ["Attention flow through 1 layer"]),  # through the Layer slider's layer, as rollout
     ("Report card", ["Head report card"]),
     ("Head clusters", ["Heads clustered"]),
     ("Noise stability", ["Noise stability at sigma 1", "How attention moves as input noise grows"]),
     ("Head importance", ["Head importance"]),
     # the method's map, then raw attention beside it (rollout for rolled-out methods), then its other figures
     ("Value zeroing", ["Value zeroing rollout after layer 0", "Attention rollout after layer 0",
                        "Value zeroing in layer 0"]),
     ("ALTI", ["ALTI rollout after layer 0", "Attention rollout after layer 0"]),
     ("Norm-based", ["Norm-based attention (head mean) in layer 0", "Layer 0, mean of heads"]),
     ("Attention × gradient", ["Attention × gradient of", "Layer 0, mean of heads"]),
     ("Input × gradient", ["Input × gradient of"]),
     ("Integrated gradients", ["Integrated gradients of"])],
)
def test_every_analysis_renders_with_its_downloads(analysis, expected):
    at = _app(view="Analysis", analysis=analysis)
    _no_errors(at)
    titles = [_title(f) for f in _figures(at)]
    assert len(titles) == len(expected)
    for title, start in zip(titles, expected):
        assert title.startswith(start)
    labels = {b.label for b in open_downloads(at).get("download_button")}
    assert {"PNG", "HTML"} <= labels
    if analysis != "Rollout":
        assert "CSV (numbers)" in labels


def test_the_analysis_picker_asks_the_question_first_and_links_reopen_the_analysis():
    at = _app(view="Analysis")
    _no_errors(at)
    question, picked = at.segmented_control(key="question"), at.segmented_control(key="analysis")
    assert question.options[:3] == ["How does information flow?", "What do the heads do?", "Which heads matter?"]
    assert (question.value, picked.value) == ("How does information flow?", "Rollout")
    assert picked.options == ["Rollout", "Flow", "Norm-based", "GlobEnc", "ALTI", "Value zeroing"]
    assert any(c.value.startswith("Answers: how much of each input token") for c in at.caption)
    (more,) = [e for e in at.expander if e.label.startswith("More on Rollout")]  # its section of docs/analyses.md
    assert "Abnar & Zuidema" in more.markdown[0].value
    at.segmented_control(key="question").set_value("What do the heads do?").run()
    _no_errors(at)
    assert at.segmented_control(key="analysis").options == ["Report card", "Head clusters"]
    assert at.segmented_control(key="analysis").value == "Report card"  # the question's first analysis
    assert _title(_figures(at)[0]).startswith("Head report card")
    linked = _app(view="Analysis", analysis="Head clusters")  # a link naming only the analysis opens its question
    _no_errors(linked)
    assert linked.segmented_control(key="question").value == "What do the heads do?"
    assert _title(_figures(linked)[0]).startswith("Heads clustered")
    asked = _app(view="Analysis", question="What do the heads do?")  # the question's first analysis is left out
    assert _title(_figures(asked)[0]).startswith("Head report card")


def test_rollout_follows_the_layer_slider_and_rows_sum_to_one():
    at = _app(view="Analysis", analysis="Rollout", layer="5")
    figure = _figures(at)[0]
    assert _title(figure).startswith("Attention rollout after layer 5")
    z = _array(figure["data"][0]["z"])
    assert z.shape == (13, 13)
    np.testing.assert_allclose(z.sum(axis=1), 1.0, atol=1e-5)


def test_flow_refuses_long_inputs_with_a_message():
    at = _app(view="Analysis", analysis="Flow", text="word " * 40)
    _no_errors(at)
    assert any("limited to 32 tokens" in i.value and "42" in i.value for i in at.info)


def test_ablation_of_chosen_heads_shows_the_effect():
    at = _app(view="Analysis", analysis="Head ablation")
    at.multiselect(key="ablate").set_value(["L0 H1", "L2 H3"]).run()
    _no_errors(at)
    assert _title(_figures(at)[-1]) == "Silencing L0 H1, L2 H3: sentence embedding"


def test_corpus_report_card_over_test_sentences():
    at = _app(view="Analysis", analysis="Report card", corpus="test sentences")
    at.slider(key="corpus_size").set_value(50).run()
    _no_errors(at)
    assert "50 texts" in _title(_figures(at)[0])
    assert len(at.dataframe[0].value) == 72  # one row per head, sortable in the page


def test_tutorial_shows_its_prediction_and_compares_initial_with_trained():
    at = _app(model="tutorial", text="a wonderful, moving film", view="Compare")
    _no_errors(at)
    assert any(m.value.startswith("**Prediction: positive**") for m in at.markdown)
    titles = [_title(f) for f in _figures(at)]
    assert titles[:2] == ["Layer 0, head 0", "Layer 0, head 0"]  # the same head, before and after training
    assert "tutorial-initial vs tutorial" in titles[3]
    assert any(m.value == "**tutorial\\-initial**" for m in at.markdown)  # names are plain text (ui.text)


def test_minimal_pair_compare_needs_equal_lengths():
    at = _app(view="Compare", text="The cat was tired.")
    at.text_area(key="other_text").set_value("The dog was tired.").run()
    _no_errors(at)
    titles = [_title(f) for f in _figures(at)]
    assert len(titles) == 5 and "second text minus first text" in titles[2]
    at.text_area(key="other_text").set_value("The big dog was very tired.").run()
    _no_errors(at)
    assert any("7 tokens\\, the second 9" in w.value for w in at.warning)  # messages are plain text (ui.text)


def test_long_traces_offer_npz_and_csv_but_not_a_huge_json():
    at = _app()
    assert "JSON" in {b.label for b in open_downloads(at).get("download_button")}
    at.text_area(key="text").set_value("word " * 200).run()
    labels = {b.label for b in at.get("download_button")}  # the menus stay open
    assert {"NPZ", "CSV"} <= labels and "JSON" not in labels


def test_a_long_texts_zoom_windows_are_cut_to_the_step_a_continued_text_shows():
    """The display options are drawn from the whole trace, outside the views; a continued text's step shows fewer
    tokens, so its zoom windows are cut to them (a window reaching the whole step is none)."""
    from ui.controls import _fit_zoom

    display = {"rows": (10, 600), "cols": None, "log_color": True}
    assert _fit_zoom(dict(display), 700) == display
    assert _fit_zoom(dict(display), 300) == {"rows": (10, 300), "cols": None, "log_color": True}
    assert _fit_zoom({"rows": (0, 600), "cols": (650, 700)}, 500) == {"rows": None, "cols": (499, 500)}


# --- the registry in the app ------------------------------------------------------------------------------------


def test_the_attention_distance_view_is_a_tab_with_its_own_url_bound_option():
    at = _app(view="Attention distance", layer="2")
    _no_errors(at)
    (figure,) = _figures(at)
    assert _title(figure).startswith("Layer 2: attention by query-key distance, all 12 heads")
    assert figure["layout"]["xaxis"]["title"]["text"] == "distance (tokens)"
    at.checkbox(key="signed").check().run()
    _no_errors(at)
    assert _figures(at)[0]["layout"]["xaxis"]["title"]["text"] == "key - query (tokens)"
    assert {"dl-distance-png", "dl-distance-html"} <= {b.key for b in open_downloads(at).get("download_button")}
    linked = _app(view="Attention distance", signed="true")  # the option is in the URL
    assert _figures(linked)[0]["layout"]["xaxis"]["title"]["text"] == "key - query (tokens)"


def test_merging_sub_words_shows_fewer_tokens_without_rerunning_the_encoder():
    text = "Unbelievably, the kittens were purring."  # MiniLM: un ##bel ##ie ##va ##bly, kitten ##s, pu ##rring
    at = _app(text=text)
    _no_errors(at)
    runs = _encoder_runs(at)
    before = _figures(at)[0]["layout"]["xaxis"]["ticktext"]
    at.checkbox(key="merge_words").check().run()
    _no_errors(at)
    words = ["[CLS]", "unbelievably", ",", "the", "kittens", "were", "purring", ".", "[SEP]"]
    assert len(before) == 15 and _figures(at)[0]["layout"]["xaxis"]["ticktext"] == words
    heatmap = next(t for t in _figures(at)[0]["data"] if t["type"] == "heatmap")
    np.testing.assert_allclose(_array(heatmap["z"]).sum(axis=1), 1.0, atol=1e-5)  # rows still sum to 1
    assert at.selectbox(key="query").options == [f"{i}: {word}" for i, word in enumerate(words)]
    assert {b.key for b in open_downloads(at).get("download_button")} >= {"dl-trace-npz", "dl-trace-json",
                                                                             "dl-trace-csv"}
    at.selectbox(key="query").set_value("4: kittens").run()
    _no_errors(at)
    assert _encoder_runs(at) == runs  # the merged trace is NumPy on the cached one
    linked = _app(text=text, merge_words="true", view="Token view", query="4: kittens")  # kept in the URL
    _no_errors(linked)
    assert "attention from “kittens” (4)" in _title(_figures(linked)[0])


def test_flow_follows_the_layer_slider():
    at = _app(view="Analysis", analysis="Flow", layer="5")
    _no_errors(at)
    assert _title(_figures(at)[0]).startswith("Attention flow through 6 layers")


def test_ablation_asks_for_heads_before_running():
    at = _app(view="Analysis", analysis="Head ablation")
    _no_errors(at)
    assert not _figures(at)
    assert any("Choose heads to silence together" in i.value for i in at.info)


def test_clicks_are_decoded_from_the_figure_click_spec():
    from ui import clicks
    from viz.clicks import click_spec
    from viz.registry import build_view

    trace = __import__("tests.support.traces", fromlist=["synthetic_trace"]).synthetic_trace(
        ["[CLS]", "the", "cat", "[SEP]"], layers=2, heads=2)
    spec = click_spec(build_view(trace, "heatmap"))
    cell = next(index for index, fields in spec.items() if fields == ("query", "key"))
    event = {"selection": {"points": [{"curve_number": 0, "customdata": [9]},
                                      {"curve_number": cell, "customdata": {"0": 2, "1": 1, "2": 0.25}}]}}
    assert clicks.clicked_values(event, spec) == {"query": 2, "key": 1}
    heads = click_spec(build_view(trace, "model"))
    (index,) = heads
    assert clicks.clicked_values({"selection": {"points": [{"curve_number": index, "customdata": [1, 0]}]}},
                                 heads) == {"layer": 1, "head": 0}


def test_the_private_streamlit_hook_we_patch_still_exists():
    """Streamlit 1.67 calls ``script_runner._clean_problem_modules`` (keras.backend.clear_session) after every run and
    has no setting to turn it off; ``ui.serving.runtime`` replaces it. If an upgrade renames it, the patch silently does
    nothing and every widget change gets ~0.15 s slower: this test says so first."""
    import inspect

    from streamlit.runtime.scriptrunner import script_runner

    from ui.serving.runtime import PATCHED_HOOK

    assert callable(getattr(script_runner, PATCHED_HOOK, None)), (
        f"streamlit.runtime.scriptrunner.script_runner.{PATCHED_HOOK} is gone: find what clears Keras' session "
        "after each run in this Streamlit version and update ui/serving/runtime.py")
    assert PATCHED_HOOK in inspect.getsource(script_runner.ScriptRunner), "the runner no longer calls the hook"


def test_analysis_settings_point_a_word_query_back_at_its_first_token():
    from tests.support.traces import synthetic_trace
    from ui.views import token_settings
    from viz.options import ViewSettings

    trace = synthetic_trace(["[CLS]", "un", "##bel", "##ievably", "cats", "[SEP]"], words=[-1, 0, 0, 0, 1, -1])
    merged = ViewSettings(query=2, selected=(2, 1), merge_words=True)
    assert token_settings(trace, merged) == ViewSettings(query=4)  # word 2 ("cats") is token 4
    assert token_settings(trace, ViewSettings(query=2)) == ViewSettings(query=2)


# --- decoders: the prompt, "Continue the text", the generation replayed -----------------------------------------


@pytest.fixture
def llama(monkeypatch) -> dict[str, str]:
    """The URL of the llama decoder fixture (a real ``LlamaForCausalLM`` folder), opened under the model roots."""
    from tests.support.families import FAMILIES_DIR

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(FAMILIES_DIR))
    return {"model": "folder or hub id…", "source": str(FAMILIES_DIR / "llama")}


def _heatmap_tokens(at: AppTest) -> list[str]:
    return _figures(at)[0]["layout"]["xaxis"]["ticktext"]


def test_a_decoder_opens_on_a_prompt_and_an_encoder_has_no_continue_control(llama):
    from ui.inputs import DEFAULT_PROMPT

    at = _app(**llama)
    _no_errors(at)
    assert at.text_area(key="text").value == DEFAULT_PROMPT
    assert _heatmap_tokens(at)[1:4] == ["O", "n", "ce"]  # "Once upon a time, there was"
    assert at.toggle(key="continue").value is False
    assert "continue" not in {t.key for t in _app().toggle}  # MiniLM has no LM head


def test_continuing_the_text_shows_the_generated_trace_and_replays_it_without_rerunning(llama):
    at = _app(**llama)
    prompt = len(_heatmap_tokens(at))
    at.toggle(key="continue").set_value(True).run()
    at.number_input(key="new_tokens").set_value(4).run()
    _no_errors(at)
    tokens = _heatmap_tokens(at)
    assert len(tokens) == prompt + 4
    assert any(f"**tokens**: {prompt + 4} (4 generated)" in m.value for m in at.sidebar.markdown)
    query = at.selectbox(key="query")
    assert query.value == query.options[-1]  # the query starts on the last generated token
    runs = _encoder_runs(at)
    at.slider(key="layer").set_value(1).run()
    at.slider(key="step").set_value(1).run()  # the prompt and the first generated token
    _no_errors(at)
    assert _heatmap_tokens(at) == tokens[:prompt + 1]
    assert any(c.value.startswith("Step 1 of 4") for c in at.caption)
    assert at.selectbox(key="query").value == at.selectbox(key="query").options[-1]
    at.slider(key="step").set_value(0).run()
    assert _heatmap_tokens(at) == tokens[:prompt]
    at.slider(key="step").set_value(4).run()
    assert _heatmap_tokens(at) == tokens
    assert _encoder_runs(at) == runs  # every step is a slice of the one cached generation


def test_the_generated_tokens_reach_the_views(llama):
    at = _app(**llama, text="The cat", **{"continue": "true", "new_tokens": "3"})
    _no_errors(at)
    tokens = _heatmap_tokens(at)
    italic = [label.startswith("<i>") for label in tokens]
    assert italic == [False] * (len(tokens) - 3) + [True] * 3  # the generated tokens, marked
    at.checkbox(key="merge_words").check().run()  # merged into words, the mask follows
    _no_errors(at)
    assert _heatmap_tokens(at)[-1].startswith("<i>") and not _heatmap_tokens(at)[0].startswith("<i>")
    next_token = _app(**llama, text="The cat", view="Next token", **{"continue": "true", "new_tokens": "3"})
    _no_errors(next_token)
    assert _figures(next_token)


def test_too_many_new_tokens_are_refused_before_anything_runs(llama, monkeypatch):
    monkeypatch.setenv("HEADLIGHT_MAX_NEW_TOKENS", "4")
    at = _app(**llama, **{"continue": "true", "new_tokens": "5"})
    _no_errors(at)
    assert any("1 to 4 new tokens" in w.value and "5 were asked for" in w.value for w in at.warning)
    assert not _figures(at) and _encoder_runs(at) == 0
    at.number_input(key="new_tokens").set_value(10**15).run()
    _no_errors(at)
    assert any("1 to 4 new tokens" in w.value for w in at.warning)
    at.number_input(key="max_tokens").set_value(12).run()  # the prompt has 11 tokens: 15 do not fit
    at.number_input(key="new_tokens").set_value(4).run()
    _no_errors(at)
    assert any("The text has 11 tokens\\; with 4 new ones" in w.value for w in at.warning)
    assert not _figures(at) and _encoder_runs(at) == 0


def test_a_sampled_continuation_and_its_analyses(llama):
    params = {**llama, "text": "The cat", "continue": "true", "new_tokens": "4", "temperature": "0.9", "seed": "3"}
    at = _app(**params)
    _no_errors(at)
    assert not at.number_input(key="seed").disabled
    sampled = _heatmap_tokens(at)
    assert sum(label.startswith("<i>") for label in sampled) == 4
    assert _heatmap_tokens(_app(**params)) == sampled  # the seed is in the link: the same continuation
    lens = _app(**params, view="Analysis", analysis="Logit lens", step="2")
    _no_errors(lens)
    assert not lens.warning and _figures(lens)  # on the prompt and the first 2 generated tokens


def test_a_head_change_draws_that_head_and_its_downloads_export_it(monkeypatch):
    """A layer or head change draws the kept figure moved to that step (no figure built on the way); the chart, its
    steps and its HTML download are those of the head shown."""
    import streamlit as st

    made: dict[str, object] = {}
    original = st.download_button

    def record(label, data, file_name=None, key=None, **kwargs):  # each button's data maker, the newest kept
        made[key] = data
        return original(label, data, file_name=file_name, key=key, **kwargs)

    monkeypatch.setattr(st, "download_button", record)
    at = open_downloads(_app())
    at.slider(key="layer").set_value(3).run()
    at.slider(key="head").set_value(7).run()
    assert not at.exception
    (figure,) = _figures(at)
    assert _title(figure).startswith("Layer 3, head 7")
    slider = next(s for s in figure["layout"]["sliders"] if s["name"] == "heads")
    assert slider["steps"][slider["active"]]["value"] == "3:7"
    html = made["dl-heatmap-html"]()
    assert "Layer 3, head 7" in (html.decode() if isinstance(html, bytes) else html)
