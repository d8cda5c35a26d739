"""Image-generator folders (diffusers: ``model_index.json``, ``text_encoder/``, ``tokenizer/``, ...) assembled from
the clip-text and t5-encoder fixtures (``tests/support/diffusers.py``): each text encoder opens through
``load_source``, the command line and the app, with its own tokenizer (``tokenizer/`` as Stable Diffusion ships it:
vocab.json + merges.txt only); its outputs are the fixture's reference; what the pipeline reads of it (the layer,
the pooled vector, the token window) is what diffusers' pipeline of that class reads; the views mark it; and a
hostile ``model_index.json`` is refused with our error, naming no path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from encoder.diffusers import MODEL_INDEX_BYTES, source_name, split_source
from encoder.errors import CheckpointError, SourceError
from encoder.sources import load_source, text_encoder_choices
from encoder.tokenizer import TextTokenizer
from encoder.trace import EncoderTrace, trace_text
from tests.support.diffusers import CLIP, T5, write_diffusers_folder
from tests.support.families import TOLERANCE, load_family, reference
from tests.test_families_text_encoders import MIDDLE_HIDDEN_TOLERANCE, assert_within
from viz.layout import READ_MARK, mark_image_model
from viz.registry import build_view

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = {"clip-text": CLIP, "t5-encoder": T5}
CASES = {"clip-text": ("simple", "joined", "unicode"), "t5-encoder": ("simple", "unicode")}
LONG = "a photograph of an astronaut riding a horse on the moon, highly detailed, trending on artstation, " * 8
PROMPTS = ["a photo of a cat", "A PHOTO of an Astronaut, riding a horse!!", "Café crème 🍣 at 1234 x 56.7",
           "masterpiece, (best quality:1.2), [worst] {odd}", LONG]
# (pipeline, component) -> (fixture, states the pipeline reads, pooled vector it reads, token window): diffusers'
# encode_prompt of each pipeline; the clip-text fixture has 64 positions, T5 the pipeline's default length.
READS = {
    ("StableDiffusionPipeline", "text_encoder"): ("clip-text", "last_hidden_state", "", 64),
    ("StableDiffusionXLPipeline", "text_encoder"): ("clip-text", "hidden_states[-2]", "", 64),
    ("StableDiffusionXLPipeline", "text_encoder_2"): ("clip-text", "hidden_states[-2]", "text_embeds", 64),
    ("StableDiffusion3Pipeline", "text_encoder"): ("clip-text", "hidden_states[-2]", "text_embeds", 64),
    ("StableDiffusion3Pipeline", "text_encoder_2"): ("clip-text", "hidden_states[-2]", "text_embeds", 64),
    ("StableDiffusion3Pipeline", "text_encoder_3"): ("t5-encoder", "last_hidden_state", "", 256),
    ("FluxPipeline", "text_encoder"): ("clip-text", "", "pooler_output", 64),
    ("FluxPipeline", "text_encoder_2"): ("t5-encoder", "last_hidden_state", "", 512),
}
# the reference's key of each thing a pipeline reads
REFERENCE_KEY = {"hidden_states[-2]": "hidden_states", "last_hidden_state": "last_hidden_state",
                 "text_embeds": "text_embeds", "pooler_output": "pooled"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One folder per pipeline class, under one root."""
    root = tmp_path_factory.mktemp("image-models")
    return {pipeline: write_diffusers_folder(root / pipeline, pipeline)
            for pipeline in {pipeline for pipeline, _ in READS}}


_MODELS: dict[tuple[str, str], object] = {}


def _opened(folders, pipeline: str, component: str):
    if (pipeline, component) not in _MODELS:
        _MODELS[pipeline, component] = load_source(str(folders[pipeline]), text_encoder=component)
    return _MODELS[pipeline, component]


# ---------------------------------------------------------------------------------------------------------------
# Opening: load_source


def test_the_folder_lists_its_text_encoders_and_opens_the_first_by_default(folders):
    folder = str(folders["StableDiffusion3Pipeline"])
    assert text_encoder_choices(folder, restricted=False) == ["text_encoder", "text_encoder_2", "text_encoder_3"]
    first = load_source(folder)
    assert first.reads.component == "text_encoder" and first.name == folder
    assert "StableDiffusion3Pipeline's text_encoder (CLIPTextModelWithProjection)" in first.description
    assert text_encoder_choices(str(CLIP), restricted=False) == []  # a plain model folder: no picker
    assert load_source(str(CLIP)).reads is None


def test_the_name_syntax_round_trips_and_means_the_same_as_the_keyword(folders):
    folder = str(folders["FluxPipeline"])
    assert split_source(source_name(folder, "text_encoder_2")) == (folder, "text_encoder_2")
    assert split_source("owner/name") == ("owner/name", None)
    assert split_source("folder#unet") == ("folder#unet", None)  # only a text encoder's name is split off
    by_name = load_source(f"{folder}#text_encoder_2")
    assert by_name.name == f"{folder}#text_encoder_2" and by_name.reads.encoder == "T5"
    with pytest.raises(SourceError, match="Two different text encoders"):
        load_source(f"{folder}#text_encoder_2", text_encoder="text_encoder")
    with pytest.raises(SourceError, match="Only an image generator's folder"):
        load_source(str(CLIP), text_encoder="text_encoder")
    with pytest.raises(SourceError, match="Only an image generator's folder"):
        load_source("minilm#text_encoder")


@pytest.mark.parametrize(("pipeline", "component"), list(READS))
def test_each_text_encoder_reads_what_its_pipeline_reads_and_matches_the_reference(folders, pipeline, component):
    fixture, states, pooled, window = READS[pipeline, component]
    model = _opened(folders, pipeline, component)
    reads = model.reads
    assert (reads.pipeline, reads.component, reads.states, reads.pooled, reads.window) == (
        pipeline, component, states, pooled, window)
    assert reads.reader == ("UNet" if pipeline.startswith("StableDiffusion") and "3" not in pipeline
                            else "transformer")
    assert model.tokenizer.max_length == window
    layers = model.config.num_layers
    marked = reads.marks(layers)
    if states == "hidden_states[-2]":
        assert "hidden_states[-2]" in marked[layers - 2]  # the penultimate layer's output
    if states == "last_hidden_state" or pooled:
        assert layers - 1 in marked
    for case in CASES[fixture]:
        expected = reference(fixture)[case]
        trace = trace_text(model, str(expected["text"]), str(expected["pair"]) or None)
        assert trace.tokens == tuple(str(t) for t in expected["tokens"]), case
        assert_within(trace.attention, expected["attention"], f"{component}/{case} attention")
        assert_within(trace.hidden, expected["hidden_states"], f"{component}/{case} hidden states",
                      MIDDLE_HIDDEN_TOLERANCE[fixture])
        for name, value in reads.read_from(trace).items():  # what the image model gets
            wanted = expected[REFERENCE_KEY[name]]
            wanted = wanted[-2] if name == "hidden_states[-2]" else wanted
            limit = MIDDLE_HIDDEN_TOLERANCE[fixture] if name == "hidden_states[-2]" else TOLERANCE
            assert_within(value, wanted, f"{pipeline}/{component}/{case} {name}", limit)


def test_an_unknown_pipeline_opens_without_marks(tmp_path):
    folder = write_diffusers_folder(tmp_path / "kandinsky", "StableDiffusionPipeline")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "SomeOtherPipeline"}))
    model = load_source(str(folder))
    assert model.reads is None and model.tokenizer.max_length == 64
    assert "which layer this pipeline reads is not known" in model.description


# ---------------------------------------------------------------------------------------------------------------
# Tokens: vocab.json + merges.txt as tokenizer.json, the window cut


@pytest.mark.parametrize("prompt", PROMPTS)
def test_the_sd_tokenizer_folder_tokenizes_as_tokenizer_json_up_to_clips_77_token_window(folders, prompt):
    folder = folders["StableDiffusionXLPipeline"]
    assert not (folder / "tokenizer" / "tokenizer.json").exists()
    assert (folder / "tokenizer_2" / "tokenizer.json").exists()
    ours, theirs = (TextTokenizer.from_folder(path, 77, "clip_text_model").encode(prompt)
                    for path in (folder / "tokenizer", folder / "tokenizer_2"))
    assert ours.tokens == theirs.tokens and ours.token_ids.tolist() == theirs.token_ids.tolist()
    assert ours.special.tolist() == theirs.special.tolist() and ours.words.tolist() == theirs.words.tolist()
    assert (ours.tokens[0], ours.tokens[-1]) == ("<|startoftext|>", "<|endoftext|>")
    if prompt is LONG:
        assert len(ours.tokens) == 77 and ours.truncated and ours.untruncated_length > 77


@pytest.mark.parametrize("prompt", PROMPTS)
def test_both_clip_encoders_of_the_folder_trace_the_same_tokens_cut_at_the_window(folders, prompt):
    first = trace_text(_opened(folders, "StableDiffusionXLPipeline", "text_encoder"), prompt)
    second = trace_text(_opened(folders, "StableDiffusionXLPipeline", "text_encoder_2"), prompt)
    fixture = trace_text(load_family("clip-text"), prompt)
    assert first.tokens == second.tokens == fixture.tokens
    np.testing.assert_allclose(first.attention, fixture.attention, atol=TOLERANCE)
    if prompt is LONG:
        assert first.num_tokens == 64 and first.tokens[-1] == "<|endoftext|>" and first.truncated
        assert first.untruncated_length == len(
            TextTokenizer.from_folder(CLIP, 10_000).encode(prompt).tokens)


# ---------------------------------------------------------------------------------------------------------------
# The marks on the views


def _long_trace(folders, pipeline: str, component: str) -> tuple[EncoderTrace, object]:
    model = _opened(folders, pipeline, component)
    return trace_text(model, LONG), model.reads


def test_the_model_view_marks_the_layers_the_image_model_reads(folders):
    trace, reads = _long_trace(folders, "StableDiffusionXLPipeline", "text_encoder")
    figure = mark_image_model(build_view(trace, "model"), trace, reads)
    ticks = list(figure.layout.yaxis.ticktext)
    assert READ_MARK in ticks[0] and READ_MARK not in ticks[1]  # hidden_states[-2]: layer 0's output of 2
    subtitle = figure.layout.title.subtitle.text
    assert "read by the UNet: layer 0, every token (hidden_states[-2]" in subtitle
    dropped = trace.untruncated_length - 64
    assert f"{dropped} tokens past CLIP's 64-token window are dropped" in subtitle
    flux, flux_reads = _long_trace(folders, "FluxPipeline", "text_encoder")
    ticks = list(mark_image_model(build_view(flux, "model"), flux, flux_reads).layout.yaxis.ticktext)
    assert READ_MARK not in ticks[0] and READ_MARK in ticks[1]  # the pooled output: the last layer


def test_token_views_draw_the_cut_after_the_last_token(folders):
    trace, reads = _long_trace(folders, "StableDiffusionXLPipeline", "text_encoder_2")
    heatmap = mark_image_model(build_view(trace, "heatmap", layer=1), trace, reads, layer=1)
    (cut,) = [shape for shape in heatmap.layout.shapes if shape.name == "cut"]
    assert cut.x0 == cut.x1 == trace.num_tokens - 0.5
    assert "layer 1 is read by the UNet: the end-of-text token" in heatmap.layout.title.subtitle.text
    strip = mark_image_model(build_view(trace, "tokens", layer=1), trace, reads, layer=1)
    assert [shape.name for shape in strip.layout.shapes].count("cut") == 1
    assert "✂" in strip.layout.title.subtitle.text
    short = trace_text(_opened(folders, "StableDiffusionXLPipeline", "text_encoder_2"), "a photo of a cat")
    plain = mark_image_model(build_view(short, "heatmap", layer=0), short, reads, layer=0)
    assert not [s for s in plain.layout.shapes if s.name == "cut"]
    assert "layer 0 is read by the UNet: every token" in plain.layout.title.subtitle.text
    untouched = build_view(short, "heatmap")
    assert mark_image_model(untouched, short, None).to_json() == build_view(short, "heatmap").to_json()


def test_a_lower_max_tokens_is_not_called_the_window(folders):
    trace = trace_text(_opened(folders, "StableDiffusionXLPipeline", "text_encoder"), LONG, max_tokens=20)
    reads = _opened(folders, "StableDiffusionXLPipeline", "text_encoder").reads
    assert reads.cut_note(trace.num_tokens, trace.untruncated_length).endswith("the UNet reads up to 64")


# ---------------------------------------------------------------------------------------------------------------
# Hostile model_index.json


def _index(folder: Path, text: str | bytes) -> None:
    path = folder / "model_index.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))


@pytest.mark.parametrize(("index", "message"), [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('["text_encoder", "tokenizer"]', "should hold a JSON object"),
    ('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}', "names no text"),
    ('{"text_encoder/../../etc": ["transformers", "CLIPTextModel"], "../text_encoder": ["transformers", "X"]}',
     "names no text"),
    ('{"text_encoder": "CLIPTextModel", "text_encoder_2": [null, null], "text_encoder_0": ["transformers", "X"]}',
     "names no text"),
])
def test_a_hostile_index_is_refused_with_our_error(tmp_path, index, message):
    folder = write_diffusers_folder(tmp_path / "sd", "StableDiffusionPipeline")
    _index(folder, index)
    with pytest.raises(CheckpointError, match=message) as refused:
        load_source(str(folder))
    assert str(tmp_path) not in str(refused.value)
    assert text_encoder_choices(str(folder), restricted=False) == []  # no picker: opening it says why


def test_a_huge_index_is_refused_before_it_is_read(tmp_path):
    folder = write_diffusers_folder(tmp_path / "sd", "StableDiffusionPipeline")
    _index(folder, '{"text_encoder": ["transformers", "CLIPTextModel"], "pad": "' + "x" * MODEL_INDEX_BYTES + '"}')
    with pytest.raises(CheckpointError, match="larger than a pipeline's index"):
        load_source(str(folder))


def test_missing_or_escaping_subfolders_are_refused(tmp_path):
    folder = write_diffusers_folder(tmp_path / "sd", "StableDiffusionXLPipeline")
    for path in (folder / "tokenizer_2").iterdir():
        path.unlink()
    (folder / "tokenizer_2").rmdir()
    with pytest.raises(CheckpointError, match="no tokenizer_2/ subfolder") as refused:
        load_source(str(folder), text_encoder="text_encoder_2")
    assert str(tmp_path) not in str(refused.value)
    (folder / "tokenizer_2").symlink_to(CLIP, target_is_directory=True)  # a tokenizer outside the folder
    with pytest.raises(CheckpointError, match="no tokenizer_2/ subfolder"):
        load_source(str(folder), text_encoder="text_encoder_2")
    assert load_source(str(folder)).reads.component == "text_encoder"  # the other encoder still opens


@pytest.mark.parametrize("asked", ["text_encoder_3", "text_encoder_9"])
def test_a_text_encoder_the_folder_lacks_is_refused_without_echoing_it(tmp_path, asked):
    folder = write_diffusers_folder(tmp_path / "sd", "StableDiffusionXLPipeline")
    with pytest.raises(SourceError, match="it has text_encoder, text_encoder_2") as refused:
        load_source(str(folder), text_encoder=asked)
    assert asked not in str(refused.value) and str(tmp_path) not in str(refused.value)
    with pytest.raises(SourceError, match="Unknown model"):  # not a text encoder's name: the whole is no folder
        load_source(f"{folder}#../../etc")


def test_a_visitor_opens_image_models_only_under_the_model_roots(tmp_path, monkeypatch):
    inside = write_diffusers_folder(tmp_path / "roots" / "sd", "FluxPipeline")
    outside = write_diffusers_folder(tmp_path / "elsewhere" / "sd", "FluxPipeline")
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path / "roots"))
    assert text_encoder_choices(str(inside)) == ["text_encoder", "text_encoder_2"]
    assert text_encoder_choices("sd") == ["text_encoder", "text_encoder_2"]  # relative to a root
    assert text_encoder_choices(str(outside)) == [] and text_encoder_choices(str(outside) + "#text_encoder") == []
    for odd in ("~nosuchuser/sd", "sd" * 200, "s\x01d", "minilm#text_encoder"):  # no picker, no error
        assert text_encoder_choices(odd) == [] and text_encoder_choices(odd, restricted=False) == []
    assert load_source(source_name("sd", "text_encoder_2"), restricted=True).reads.encoder == "T5"
    for name in (str(outside), source_name(str(outside), "text_encoder_2")):
        with pytest.raises(SourceError, match="not available here") as refused:
            load_source(name, restricted=True)
        assert str(tmp_path) not in str(refused.value)


# ---------------------------------------------------------------------------------------------------------------
# The command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=300)


def test_the_cli_opens_each_text_encoder(folders, tmp_path):
    folder = str(folders["StableDiffusion3Pipeline"])
    figure = tmp_path / "model.html"
    done = _cli("--model", folder, "--text-encoder", "text_encoder_2", "--text", LONG, "--view", "model",
                "-o", str(figure))
    assert done.returncode == 0, done.stderr
    html = figure.read_text(encoding="utf-8")
    assert "read by the transformer: layer 0, every token (hidden_states[-2]" in html
    assert "past CLIP's 64-token window are dropped" in html
    saved = tmp_path / "t5.npz"
    done = _cli("--model", f"{folder}#text_encoder_3", "--text", "a photo of a cat", "-o", str(saved))
    assert done.returncode == 0, done.stderr
    trace = EncoderTrace.load(saved)
    expected = trace_text(load_family("t5-encoder"), "a photo of a cat")
    assert trace.tokens == expected.tokens and trace.model == f"{folder}#text_encoder_3"
    np.testing.assert_allclose(trace.hidden, expected.hidden, atol=TOLERANCE)
    refused = _cli("--model", folder, "--text-encoder", "text_encoder_7", "--text", "a cat", "-o",
                   str(tmp_path / "x.png"))
    assert refused.returncode == 2 and "no such text encoder" in refused.stderr
    assert "Traceback" not in refused.stderr


# ---------------------------------------------------------------------------------------------------------------
# The app


def _facts(at) -> str:
    """The sidebar's facts as they read (markdown escapes removed)."""
    return "\n".join(m.value for m in at.sidebar.markdown).replace("\\", "")


def _infos(at) -> list[str]:
    return [info.value.replace("\\", "") for info in at.info]


def test_the_app_opens_an_image_model_and_picks_each_text_encoder(folders, monkeypatch):
    from tests.test_app import _app, _figures, _no_errors

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(folders["StableDiffusion3Pipeline"].parent))
    at = _app(model="folder or hub id…", source="StableDiffusion3Pipeline", text=LONG, view="Model view")
    _no_errors(at)
    assert not at.error
    picker = at.selectbox(key="component")
    assert picker.options == ["text_encoder", "text_encoder_2", "text_encoder_3"] and picker.value == "text_encoder"
    assert "image model" in _facts(at) and "text_encoder" in _facts(at)
    assert any("past CLIP's 64-token window are dropped" in info for info in _infos(at))
    (figure,) = _figures(at)
    assert READ_MARK in figure["layout"]["yaxis"]["ticktext"][0]
    picker.set_value("text_encoder_3").run()
    _no_errors(at)
    assert not at.error and "text_encoder_3" in _facts(at) and "256" in _facts(at)
    (figure,) = _figures(at)
    assert READ_MARK in figure["layout"]["yaxis"]["ticktext"][-1]  # T5's last_hidden_state: the last layer
    assert not any("window" in info for info in _infos(at))  # the prompt fits T5's 256 tokens


def test_the_app_opens_the_text_encoder_a_link_names(folders, monkeypatch):
    from tests.test_app import _app, _figures, _no_errors

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", os.pathsep.join([str(folders["FluxPipeline"].parent),
                                                              str(CLIP.parent)]))
    at = _app(model="folder or hub id…", source="FluxPipeline", component="text_encoder_2", text="a photo of a cat")
    _no_errors(at)
    assert not at.error and at.selectbox(key="component").value == "text_encoder_2"
    assert _figures(at)[0]["layout"]["xaxis"]["ticktext"][-1] == "&lt;/s&gt;"  # T5's tokens
    plain = _app(model="folder or hub id…", source=str(CLIP), text="a photo of a cat")
    _no_errors(plain)
    assert not plain.error and "image model" not in _facts(plain)
    assert "component" not in {box.key for box in plain.selectbox}  # not an image model: no picker


def test_a_variant_file_name_and_shards_open_as_diffusers_saves_them(tmp_path):
    """diffusers saves ``model.fp16.safetensors`` (``variant="fp16"``), and big encoders (SD3's T5) as shards."""
    from safetensors.numpy import load_file, save_file

    folder = write_diffusers_folder(tmp_path / "sd3", "StableDiffusion3Pipeline")
    (folder / "text_encoder" / "model.safetensors").rename(folder / "text_encoder" / "model.fp16.safetensors")
    t5 = folder / "text_encoder_3"
    weights = load_file(t5 / "model.safetensors")
    names = sorted(weights)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, held in shards.items():
        save_file({name: weights[name] for name in held}, t5 / shard)
    (t5 / "model.safetensors").unlink()
    (t5 / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: shard for shard, held in shards.items() for name in held}}))
    for component, fixture in (("text_encoder", "clip-text"), ("text_encoder_3", "t5-encoder")):
        expected = reference(fixture)["simple"]
        trace = trace_text(load_source(str(folder), text_encoder=component), str(expected["text"]))
        assert_within(trace.attention, expected["attention"], f"{component} attention")


def test_the_app_says_why_a_hostile_index_does_not_open(tmp_path, monkeypatch):
    from tests.test_app import _app, _figures, _no_errors

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_diffusers_folder(tmp_path / "sd", "StableDiffusionPipeline")
    _index(folder, '{"text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "X"]}')
    at = _app(model="folder or hub id…", source="sd", component="text_encoder_2")
    _no_errors(at)
    assert at.selectbox(key="component").options == ["text_encoder", "text_encoder_2"]
    (error,) = at.error
    shown = error.value.replace("\\", "")  # markdown escapes removed
    assert "no text_encoder_2/ subfolder" in shown and str(tmp_path) not in shown
    assert _figures(at)  # the default model instead
    _index(folder, "{not json")
    at = _app(model="folder or hub id…", source="sd")
    _no_errors(at)
    assert "component" not in {box.key for box in at.selectbox}
    assert any("not valid JSON" in error.value for error in at.error)
