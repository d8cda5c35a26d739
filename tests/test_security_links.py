"""Crafted links against the app as a stranger would send them: in the default configuration they open nothing, the
page shows no server path and renders nothing they typed as markdown, the hub is never called; folders open only
under the allowed roots and hub ids only from the allowed list, with the size checked before any download."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from encoder.errors import CheckpointError, HeadlightError, SourceError
from encoder.sources import load_path, load_source
from tests.support.families import FAMILIES_DIR
from tests.support.models import write_tiny_bert_folder

ROOT = Path(__file__).resolve().parent.parent
OTHER_MODEL = "folder or hub id…"
CRAFTED = ["/etc", "/proc/self/cwd", "~daemon", "~nosuchuser/x", "x" * 300, "../../../../etc",
           "[click](http://example.com)", "![x](http://example.com/a.png)", "attacker/some-model"]
MARKDOWN_KINDS = ("markdown", "caption", "error", "warning", "info", "success", "title")
UNESCAPED_LINK = re.compile(r"(?<!\\)\]\(")  # "](" that markdown would read as a link or image


def _server_paths() -> list[str]:
    paths = ["/etc", "/proc", str(ROOT), str(Path.home())]
    daemon_home = os.path.expanduser("~daemon")
    if daemon_home != "~daemon" and daemon_home != "/":
        paths.append(daemon_home)
    return paths


@pytest.fixture
def hub_calls(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """Every call to the hub's download and metadata functions (AppTest runs the script in this process)."""
    import huggingface_hub

    calls: list[tuple[str, tuple, dict]] = []

    def spy(name):
        def record(*args, **kwargs):
            calls.append((name, args, kwargs))
            raise RuntimeError(f"{name}: no network in tests")
        return record

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy("snapshot_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy("hf_hub_download"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", spy("model_info"))
    return calls


@pytest.fixture
def default_settings(monkeypatch):
    """The configuration a server starts with: no model roots beyond models/, no hub ids, no token."""
    for name in ("HEADLIGHT_MODEL_ROOTS", "HEADLIGHT_HUB_IDS", "HEADLIGHT_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def _app(**params) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=180)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _texts(at: AppTest) -> list[str]:
    """Everything the page shows as text: each element's value, and each widget's label, help and value (but the
    source box's value: the visitor's own typing, left in the visitor's own box)."""
    texts = [str(element.value) for kind in (*MARKDOWN_KINDS, "exception", "text", "code")
             for element in at.get(kind)]
    for kind in ("selectbox", "text_input", "text_area", "number_input"):
        for widget in at.get(kind):
            texts += [str(widget.label), str(widget.help or "")]
            if widget.key != "source":
                texts.append(str(widget.value))
    return texts


def _assert_safe(at: AppTest) -> None:
    """No exception, no server path, no link or image markdown, and the default model's chart."""
    assert not at.exception, [e.value for e in at.exception]
    shown = "\n".join(_texts(at))
    for path in _server_paths():
        assert path not in shown, path
    for kind in MARKDOWN_KINDS:
        for element in at.get(kind):
            assert not UNESCAPED_LINK.search(str(element.value)), element.value
    (chart, *_) = at.get("plotly_chart")
    assert json.loads(chart.proto.spec)["layout"]["title"]["text"].startswith("Layer 0, head 0")


@pytest.mark.parametrize("source", CRAFTED, ids=lambda s: s[:30])
def test_crafted_links_open_nothing_in_the_default_configuration(source, default_settings, hub_calls):
    at = _app(model=OTHER_MODEL, source=source)
    _assert_safe(at)
    assert not at.error  # the choice is not offered, so the link falls back to the default without a word
    assert at.selectbox(key="model").value == "minilm" and not at.text_input
    assert hub_calls == []


@pytest.mark.parametrize("model", ["/etc", "attacker/some-model", "![x](http://example.com/a.png)"])
def test_a_crafted_model_choice_opens_nothing(model, default_settings, hub_calls):
    at = _app(model=model)
    _assert_safe(at)
    assert not at.error and at.selectbox(key="model").value == "minilm"
    assert hub_calls == []


@pytest.mark.parametrize("source", CRAFTED, ids=lambda s: s[:30])
def test_crafted_links_are_refused_plainly_when_folders_are_allowed(source, tmp_path, monkeypatch, default_settings,
                                                                   hub_calls):
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    at = _app(model=OTHER_MODEL, source=source)
    _assert_safe(at)
    (error,) = at.error
    assert "not available here" in error.value and "Showing the default model" in error.value
    assert str(tmp_path) not in error.value
    assert hub_calls == []


def test_a_folder_under_an_allowed_root_opens(tmp_path, monkeypatch, default_settings):
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    at = _app(model=OTHER_MODEL, source=str(folder), text="the cat sat")
    assert not at.exception and not at.error, [e.value for e in at.error]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["ticktext"] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    assert load_source("tiny", restricted=True).config.num_layers == 2  # a relative name is found under the roots
    assert load_source(str(folder), restricted=True).name == str(folder)  # named as asked: no resolved path


def test_python_callers_are_the_operator_and_open_any_folder(tmp_path, monkeypatch, default_settings, hub_calls):
    """``load_source`` from Python (a script, the command line) opens any folder with no settings; the same name
    from a visitor is refused. The checkpoint checks apply to both."""
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    model = load_source(str(folder))
    assert model.config.num_layers == 2 and model.folder == folder.resolve()
    monkeypatch.chdir(tmp_path)
    relative = load_source("tiny")
    assert relative.folder == folder.resolve() and relative.name == "tiny"  # found as typed, and named so
    with pytest.raises(SourceError, match="opens only its built-in models") as refused:
        load_source(str(folder), restricted=True)
    assert str(tmp_path) not in str(refused.value)
    _edit_config(folder, num_hidden_layers=97)
    with pytest.raises(CheckpointError, match="more layers than Headlight runs"):
        load_source(str(folder))
    assert hub_calls == []


def test_a_symlink_inside_a_root_pointing_outside_is_refused(tmp_path, monkeypatch, default_settings, hub_calls):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    folder = write_tiny_bert_folder(outside / "tiny")
    (root / "link").symlink_to(folder, target_is_directory=True)
    (root / "inside").symlink_to(root, target_is_directory=True)
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(root))
    for name in (str(root / "link"), "link", str(root / "inside" / ".." / "outside" / "tiny"), str(folder)):
        with pytest.raises(SourceError, match="not available here") as refused:
            load_source(name, restricted=True)
        assert str(tmp_path) not in str(refused.value)
    at = _app(model=OTHER_MODEL, source=str(root / "link"))
    _assert_safe(at)
    assert any("not available here" in e.value for e in at.error)
    assert hub_calls == []


def test_names_are_checked_before_the_filesystem(tmp_path, monkeypatch, default_settings):
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    for name in ("x" * 300, "tiny\x00", "a\nb", "~nosuchuser/x", "~daemon", "/proc/self/cwd", "../../../../etc"):
        with pytest.raises(SourceError, match="not available here") as refused:
            load_source(name, restricted=True)
        message = str(refused.value)
        assert name.strip() not in message and "/" not in message


def test_a_hub_id_not_on_the_list_is_refused_without_a_network_call(monkeypatch, default_settings, hub_calls):
    monkeypatch.setenv("HEADLIGHT_HUB_IDS", "someone/allowed-model")
    with pytest.raises(SourceError, match="not available here"):
        load_source("attacker/some-model", restricted=True)
    assert hub_calls == []
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):  # allowed, but offline and not cached
        load_source("someone/allowed-model", restricted=True)
    assert [(name, kwargs["local_files_only"], kwargs["token"]) for name, _, kwargs in hub_calls] == [
        ("snapshot_download", True, False)]  # the cache only, and never the login of whoever runs the server


def _hub_info(sizes: dict[str, int | None]) -> SimpleNamespace:
    siblings = [SimpleNamespace(rfilename=name, size=size) for name, size in sizes.items()]
    return SimpleNamespace(sha="0123456789abcdef", siblings=siblings)


def test_hub_downloads_check_the_size_of_the_allowed_files_first(tmp_path, monkeypatch, default_settings):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HEADLIGHT_HUB_IDS", "*")
    monkeypatch.setenv("HEADLIGHT_HUB_MAX_MB", "1")
    monkeypatch.setenv("HEADLIGHT_HUB_TOKEN", "hf_operator_configured")
    folder = write_tiny_bert_folder(tmp_path / "snapshot")
    files = {"config.json": 500, "model.safetensors": 600_000, "vocab.txt": 100, "pytorch_model.bin": 10**10}
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(("snapshot_download", kwargs))
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        return str(folder)

    def model_info(self, repo_id, **kwargs):
        calls.append(("model_info", kwargs))
        return _hub_info(files)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    assert load_source("owner/small", restricted=True).config.num_layers == 2  # the .bin is never fetched
    download = calls[-1][1]
    assert download["revision"] == "0123456789abcdef" and download["token"] == "hf_operator_configured"
    assert "*.bin" not in download["allow_patterns"] and calls[1] == ("model_info", {
        "files_metadata": True, "token": "hf_operator_configured"})

    files["model.safetensors"] = 2 * 2**20
    for restricted in (True, False):  # the operator's own download has the same cap
        calls.clear()
        with pytest.raises(CheckpointError, match="larger than this server downloads"):
            load_source("owner/large", restricted=restricted)
        assert [name for name, _ in calls] == ["snapshot_download", "model_info"]  # nothing fetched
    files["model.safetensors"] = None
    with pytest.raises(CheckpointError, match="size is not known"):
        load_source("owner/unknown-size", restricted=True)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "config.json").unlink(),
        lambda f: (f / "config.json").write_text("{not json"),
        lambda f: (f / "config.json").write_text(json.dumps({"model_type": "[x](http://example.com) /etc"})),
        lambda f: _edit_config(f, hidden_act="/etc/passwd"),
        lambda f: _edit_config(f, position_embedding_type="<img src=http://example.com/a.png>"),
        lambda f: _edit_config(f, num_hidden_layers="/etc/shadow"),
        lambda f: _edit_config(f, num_hidden_layers=3),
        lambda f: (f / "model.safetensors").write_bytes(b"\x00garbage" * 10),
        lambda f: (f / "model.safetensors").unlink(),
        lambda f: (f / "vocab.txt").unlink(),
        lambda f: (f / "tokenizer.json").write_text("{\"model\": \"/etc/passwd\"}"),
        lambda f: (f / "vocab.txt").write_text("just\nwords\n"),
    ],
)
def test_messages_name_no_path_and_echo_no_config_value(tmp_path, damage):
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    damage(folder)
    with pytest.raises(HeadlightError) as failed:
        load_path(folder)
    message = str(failed.value)
    for leaked in (str(tmp_path), "/etc", "http", "<img", "](", "/tiny"):
        assert leaked not in message, message


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_labels_and_descriptions_from_a_config_are_never_markdown(tmp_path, monkeypatch, default_settings):
    folder = tmp_path / "roberta-cls"
    shutil.copytree(FAMILIES_DIR / "roberta-cls", folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "![x](http://example.com/a.png)", "1": "[click](http://example.com)"}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    at = _app(model=OTHER_MODEL, source=str(folder), text="A wonderful film.")
    assert not at.exception and not at.error, [e.value for e in at.error]
    (prediction,) = [m.value for m in at.markdown if m.value.startswith("**Prediction: ")]
    assert "\\!\\[x\\]\\(http\\:" in prediction or "\\[click\\]\\(http\\:" in prediction, prediction
    description = "\n".join(c.value for c in at.sidebar.caption)
    assert "\\!\\[x\\]" in description and not UNESCAPED_LINK.search(description)
    for kind in MARKDOWN_KINDS:
        assert not any(UNESCAPED_LINK.search(str(e.value)) for e in at.get(kind))


def test_any_exception_while_opening_a_model_is_a_plain_message(tmp_path, monkeypatch, default_settings, caplog):
    import ui.cache

    monkeypatch.setenv("HEADLIGHT_MODEL_ROOTS", str(tmp_path))
    real = ui.cache.load_source

    def hostile(name: str, restricted: bool = False):
        if name == "minilm":
            return real(name, restricted=restricted)
        raise MemoryError(f"{tmp_path}/model.safetensors: cannot allocate")  # not ours: a library's

    monkeypatch.setattr(ui.cache, "load_source", hostile)
    at = _app(model=OTHER_MODEL, source=str(tmp_path / "hostile-folder-for-this-test"))
    _assert_safe(at)
    (error,) = at.error
    assert "could not be opened" in error.value and str(tmp_path) not in error.value
    assert any("opening a model failed" in record.message and record.exc_info for record in caplog.records)


def test_plain_text_shows_every_character_and_starts_no_markup():
    from ui.text import WORD_JOINER, plain

    text = "see http://example.com, www.example.com, a@b.com; **b** <b>x</b> :red[x] $x$ # h ![i](j) \\"
    shown = plain(text)
    assert re.sub(r"\\(.)", r"\1", shown).replace(WORD_JOINER, "") == text  # each escape undone: the text
    assert re.fullmatch(r"(?:\\[!-/:-@\[-`{-~]|[^!-/:-@\[-`{-~])*", shown)  # no punctuation left bare
    bare = shown.replace("\\", "")
    assert not any(address in bare for address in ("://example", "www.", "@b"))  # no autolink (GitHub's) forms


def test_a_failed_load_is_remembered_briefly_so_reruns_do_not_repeat_it(monkeypatch):
    from encoder.errors import SourceError
    from ui import cache

    calls = []

    def refuse(source, restricted=False):
        calls.append((source, restricted))
        raise SourceError("This model is not available here.")

    clock = [1000.0]
    monkeypatch.setattr(cache, "load_source", refuse)
    monkeypatch.setattr(cache.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cache, "_failed_loads", {})
    for _ in range(3):
        with pytest.raises(SourceError, match="not available here"):
            cache.get_model("someone/refused")
    assert calls == [("someone/refused", True)]  # a visitor's name; refused once, remembered for the reruns
    clock[0] += cache.FAILED_LOAD_SECONDS + 1
    with pytest.raises(SourceError):
        cache.get_model("someone/refused")
    assert len(calls) == 2  # tried again after a while


def test_settings_can_come_from_streamlit_secrets(tmp_path, default_settings):
    """The operator may put HEADLIGHT_* in .streamlit/secrets.toml instead of the environment."""
    folder = write_tiny_bert_folder(tmp_path / "tiny")
    at = AppTest.from_file("../app.py", default_timeout=180)
    at.secrets["HEADLIGHT_MODEL_ROOTS"] = str(tmp_path)
    for key, value in {"model": OTHER_MODEL, "source": str(folder), "text": "the cat sat"}.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["xaxis"]["ticktext"] == ["[CLS]", "the", "cat", "sat", "[SEP]"]
