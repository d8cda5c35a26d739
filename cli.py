"""The command line: ``python -m cli`` makes any figure (png, svg, pdf, html), exports a trace's data (npz, json,
csv), or runs an analysis and writes its figure or its numbers (csv, json). ``python -m cli generate`` continues a
prompt with a decoder (``encoder.generate.generate_text``) and writes the generated trace (``--out``) and/or any
view of it (``-o``, the same flags; ``--step`` replays the generation up to a step).

Everything it offers comes from the registry (``viz.registry``): ``--view`` takes every view and analysis there,
and every flag is an ``Option`` declared once, so a new registry entry appears here without editing this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import analysis
from analysis.inputs import TraceInputs
from analysis.steps import generation_steps, step_trace
from encoder.errors import ExportError, HeadlightError, InputError
from encoder.settings import settings
from encoder.sources import LoadedModel, load_source
from encoder.trace import EncoderTrace, trace_text
from encoder.trace_io import DATA_FORMATS, trace_from_json, trace_to_json
from tutorial.dataset import load_splits
from viz.kinds import ENCODER, of_kind, write_kind_csv
from viz.layout import mark_image_model
from viz.options import ATTENTION, MERGE_WORDS, SHARED_OPTIONS, Option, parse_ints
from viz.registry import (
    ANALYSES,
    VIEWS,
    Analysis,
    analysis_options,
    analysis_trace,
    build_view,
    kind_unavailable,
    view_options,
    view_unavailable,
)
from viz.render import FIGURE_FORMATS, figure_to_bytes, figure_to_html

FORMATS = (*FIGURE_FORMATS, *DATA_FORMATS)
ANALYSIS_FORMATS = (*FIGURE_FORMATS, "csv", "json")  # an analysis writes its figure or its numbers
TEST_CORPUS = "test"  # --corpus test: the shipped held-out test sentences (data/test.tsv)
EXAMPLES = """examples:
  python -m cli --text "The cat sat on the mat." --view heatmap --layer 2 --head 5 -o fig.svg
  python -m cli --text "The cat sat." --pair "It was tired." --view model -o model.png
  python -m cli --text "The cat sat." --format csv --layer 0 -o layer0.csv
  python -m cli --trace saved.npz --view tokens --query 2 -o tokens.pdf
  python -m cli --text "The cat sat on the mat." --view distance --layer 1 --signed -o distance.png
  python -m cli --text "The cat sat on the mat." --view rollout --layer 3 -o rollout.png
  python -m cli --text "The cat sat on the mat." --view flow -o flow.csv
  python -m cli --corpus sentences.txt --view report --statistic sep -o sep.svg
  python -m cli --text "The cat sat." --view noise --samples 4 --sigma 0.5 -o noise.html
  python -m cli --text "The cat sat." --view ablation --ablate 0:3,2:5 -o ablation.json
  python -m cli --model tests/fixtures/families/t5 --text "The cat sat." --target "Die Katze sass." \\
      --attention cross --view heatmap --layer 1 -o cross.svg
  python -m cli --model ~/models/sdxl --text-encoder text_encoder_2 --text "a photo of a cat" --view model -o m.png
  python -m cli generate --model tests/fixtures/families/llama --prompt "Once upon a time" --out story.npz"""
GENERATE = "generate"  # the subcommand
TRACE_FORMATS = ("npz", "json")  # what --out writes
GENERATE_EXAMPLES = """examples:
  python -m cli generate --model tests/fixtures/families/llama --prompt "Once upon a time" --max-new-tokens 8 \\
      --out story.npz
  python -m cli generate --model tests/fixtures/families/llama --prompt "Once upon a time" --temperature 0.8 \\
      --top-p 0.9 --seed 1 --view heatmap --layer 1 -o heatmap.html
  python -m cli generate --model tests/fixtures/families/llama --prompt "Once upon a time" --step 3 \\
      --view tokens -o step3.png"""


# ---------------------------------------------------------------------------------------------------------------
# Parser: flags from the registry's options


def _view_flag_options() -> dict[str, Option]:
    """The shared view settings, then each view's own settings (one per name)."""
    found = {option.name: option for option in SHARED_OPTIONS}
    for view in VIEWS.values():
        for option in view.options:
            found.setdefault(option.name, option)
    return found


def _add_flag(group: argparse._ArgumentGroup, option: Option) -> None:
    if option.name == "renormalize":  # on by default in every builder: the flag turns it off
        group.add_argument("--no-renormalize", dest="renormalize", action="store_false", default=None,
                           help="with --hide-special, keep rows as they are")
        return
    if option.kind == "flag":
        group.add_argument(option.flag, action="store_true", default=None, help=option.help)
        return
    kind = {"int": int, "float": float, "ints": parse_ints, "path": Path}.get(option.kind, str)
    choices = list(option.choices) if option.kind == "choice" else None
    group.add_argument(option.flag, type=kind, choices=choices, metavar=option.metavar, help=option.help)


def _parser(generate: bool = False) -> argparse.ArgumentParser:
    """The command's parser; with ``generate``, the ``generate`` subcommand's (a prompt and generation settings
    instead of --text/--pair/--trace/--corpus, and --out for the generated trace)."""
    views = "\n".join(f"  {name:22} {view.description}" for name, view in VIEWS.items())
    analyses = "\n".join(f"  {name:22} {entry.description}" for name, entry in ANALYSES.items())
    if generate:
        parser = argparse.ArgumentParser(
            prog=f"python -m cli {GENERATE}",
            description="Continue a prompt with a decoder (greedy unless --temperature is above 0) and write the "
                        "trace of prompt + continuation (--out: npz, json) and/or a figure or data of any view of it "
                        "(-o, with --view and the view settings below). Prints the continuation.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"views:\n{views}\n\nanalysis views:\n{analyses}\n\n{GENERATE_EXAMPLES}",
        )
    else:
        parser = argparse.ArgumentParser(
            prog="python -m cli",
            description="Make a Headlight figure (png, svg, pdf, html) or export a trace's data (npz, json, csv); or "
                        "run an analysis and write its figure (png, svg, pdf, html) or its numbers (csv, json). "
                        f"'python -m cli {GENERATE} --help': continue a prompt with a decoder.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"views:\n{views}\n\nanalysis views (csv and json hold the analysis numbers, not the trace):\n"
                   f"{analyses}\n\n{EXAMPLES}",
        )
    source = parser.add_argument_group("input")
    source.add_argument("--model", default="minilm",
                        help="model source: minilm (default), tutorial, any folder or hub id (the command line is "
                             "the operator's: no HEADLIGHT_MODEL_ROOTS/HEADLIGHT_HUB_IDS needed)")
    source.add_argument("--text-encoder", metavar="NAME",
                        help="an image generator's folder (diffusers: model_index.json): which text encoder to open "
                             "(text_encoder, text_encoder_2, ...; default the first; also --model FOLDER#NAME); its "
                             "views mark the layer the image model reads and the token window's cut")
    if generate:
        source.add_argument("--prompt", "--text", dest="text", required=True, help="the text to continue")
        parser.set_defaults(pair=None, trace=None, max_tokens=None, corpus=None, corpus_size=None, target=None)
        _add_generation_flags(parser)
    else:
        source.add_argument("--text", help="the sentence to trace")
        source.add_argument("--pair", help="an optional second sentence")
        source.add_argument("--max-tokens", type=int, help="keep at most this many tokens")
        source.add_argument("--target", help="encoder-decoders (T5, BART): the decoder's text, run teacher-forced")
        source.add_argument("--trace", type=Path, help="a saved trace (.npz or .json) instead of --model/--text")
    _add_flag(source, ATTENTION)
    _add_flag(source, MERGE_WORDS)
    output = parser.add_argument_group("output")
    if generate:
        output.add_argument("--out", type=Path, help="write the generated trace here (.npz or .json)")
        output.add_argument("-o", "--output", type=Path, help="write a figure or data of --view here")
    else:
        output.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    output.add_argument("--format", choices=FORMATS, help="default: the output file's extension")
    output.add_argument("--view", default="heatmap", choices=[*VIEWS, *ANALYSES],
                        help="figure or analysis to make (default heatmap; lists below)")
    output.add_argument("--width", type=int, help="image width in pixels (default: the figure's)")
    output.add_argument("--height", type=int, help="image height in pixels (default: the figure's)")
    output.add_argument("--scale", type=float, default=1.0, help="PNG pixel scale, e.g. 2 for print")
    shown = _view_flag_options()
    settings = parser.add_argument_group("view settings (each applies to the views that take it)")
    for option in shown.values():
        _add_flag(settings, option)
    study = parser.add_argument_group(
        "analysis settings",
        "  For the analysis views, with --layer and --colorscale above. noise, importance, ablation and --corpus\n"
        "  re-run the model, so they need --text (or --corpus), not --trace.",
    )
    if not generate:
        corpus = ", ".join(name for name, entry in ANALYSES.items() if entry.corpus)
        study.add_argument("--corpus", type=Path, metavar="FILE",
                           help=f"{corpus}: aggregate over a UTF-8 text file, one sentence per line, instead of "
                                f"--text (progress on stderr); '{TEST_CORPUS}' is the shipped held-out test "
                                "sentences (data/test.tsv)")
        study.add_argument("--corpus-size", type=int, metavar="N", help="--corpus: use the first N sentences only")
    for option in analysis_options().values():
        if option.name not in shown:
            _add_flag(study, option)
    return parser


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation (greedy by default; sampling with --temperature above 0)")
    group.add_argument("--max-new-tokens", type=int, default=settings().max_new_tokens, metavar="N",
                       help="tokens to generate (default %(default)s, HEADLIGHT_MAX_NEW_TOKENS)")
    group.add_argument("--temperature", type=float, default=0.0,
                       help="0 (default): greedy, always the most probable token; above 0: sample at this temperature")
    group.add_argument("--top-k", type=int, default=0, metavar="K",
                       help="sampling: only the K most probable tokens (0, the default: all)")
    group.add_argument("--top-p", type=float, default=1.0, metavar="P",
                       help="sampling: only the most probable tokens whose probabilities sum to P (default 1: all)")
    group.add_argument("--seed", type=int, help="sampling: the random seed (the same seed, the same continuation)")
    group.add_argument("--step", type=int, metavar="K",
                       help="draw -o for the trace after step K (the prompt and the first K generated tokens; "
                            "default: all of them); --out always holds the whole generation")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (flags left out are absent)."""
    names = [*_view_flag_options(), *analysis_options(), "corpus", "corpus_size"]
    return {name: getattr(args, name) for name in dict.fromkeys(names) if getattr(args, name, None) is not None}


def _flags(names: Iterable[str]) -> str:
    """Settings as the flags that set them: ``["hide_special"]`` -> ``"--hide-special"``."""
    return ", ".join("--no-renormalize" if n == "renormalize" else "--" + n.replace("_", "-") for n in sorted(names))


# ---------------------------------------------------------------------------------------------------------------
# Running


def _model(args: argparse.Namespace) -> LoadedModel:
    """``--model`` (and ``--text-encoder``), loaded once per command (kept on ``args``); the operator's own command
    line: any folder or hub id."""
    if getattr(args, "loaded_model", None) is None:
        args.loaded_model = load_source(args.model, text_encoder=args.text_encoder)
    return args.loaded_model


def _load_trace(args: argparse.Namespace, model: LoadedModel | None = None,
                trace: EncoderTrace | None = None) -> EncoderTrace:
    """The trace to draw (``trace``, else ``_read_trace``), with sub-words merged into words when
    ``--merge-words`` asks."""
    trace = _read_trace(args, model) if trace is None else trace
    if args.merge_words and trace.is_encoder_decoder:
        raise ExportError("--merge-words merges the tokens of one text; an encoder-decoder's trace has two")
    return analysis.merge_words(trace) if args.merge_words else trace


def _kind(args: argparse.Namespace) -> str:
    """The attention kind of ``--attention`` (default the encoder's)."""
    return args.attention or ENCODER


def _read_trace(args: argparse.Namespace, model: LoadedModel | None = None) -> EncoderTrace:
    """``--trace`` read back, or ``--text``/``--pair`` traced by ``model`` (default: load ``--model``)."""
    if args.trace is not None:
        if args.text is not None or args.target is not None:
            raise ExportError("give either --trace or --text (and --target), not both")
        if not args.trace.is_file():
            raise ExportError(f"{args.trace} does not exist")
        if args.trace.suffix.lower() == ".json":
            return trace_from_json(args.trace.read_text(encoding="utf-8"))
        return EncoderTrace.load(args.trace)
    if args.text is None:
        raise ExportError("give --text (the sentence to trace) or --trace (a saved trace)")
    model = _model(args) if model is None else model
    cap = settings().max_tokens  # HEADLIGHT_MAX_TOKENS (8,192 by default) bounds --max-tokens and the model's positions
    max_tokens = cap if args.max_tokens is None else min(args.max_tokens, cap)
    if args.target is not None:  # an encoder-decoder's decoder text
        return trace_text(model, args.text, args.pair, max_tokens, target=args.target)
    return trace_text(model, args.text, args.pair, max_tokens)


def run(argv: list[str] | None = None) -> Path:
    """Parse ``argv``, make the figure, data or analysis file, write it; returns the path written."""
    args = _parser().parse_args(argv)
    fmt = _output_format(args)
    given = _given(args)
    if args.view in ANALYSES:
        _run_analysis(args, fmt, ANALYSES[args.view], given)
    else:
        _run_view(args, fmt, given)
    return args.output


def _output_format(args: argparse.Namespace) -> str:
    fmt = args.format or args.output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"cannot tell the format from {args.output.name!r}: use --format ({', '.join(FORMATS)})")
    return fmt


def _run_view(args: argparse.Namespace, fmt: str, given: dict[str, Any], traced: EncoderTrace | None = None) -> None:
    view = VIEWS[args.view]
    studies = set(given) - set(_view_flag_options())
    if studies:
        raise ExportError(f"view {args.view!r} does not take {_flags(studies)} (analysis settings)")
    tokens = _read_trace(args) if traced is None else traced
    trace = _load_trace(args, trace=tokens)
    kind = _kind(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    why = view_unavailable(view, trace, kind)
    if why is not None:
        raise ExportError(why)
    if view.rows is not None and fmt in ("csv", "json"):  # the view's own numbers, not the trace's attention
        rows, document = view.rows(of_kind(trace, kind), given)
        text = analysis.rows_to_csv(rows) if fmt == "csv" else analysis.to_json(document)
        args.output.write_text(text, encoding="utf-8", newline="")
    elif fmt == "npz":
        trace.save(args.output)
    elif fmt == "json":
        args.output.write_text(trace_to_json(trace), encoding="utf-8")
    elif fmt == "csv":
        layers = [given["layer"]] if "layer" in given else None
        heads = given.get("heads", [given["head"]] if "head" in given else None)
        with args.output.open("w", encoding="utf-8", newline="") as handle:
            write_kind_csv(trace, kind, handle, layers, heads)
    else:
        accepted = view_options(view)
        ignored = set(given) - set(accepted)
        if ignored:
            raise ExportError(f"view {args.view!r} does not take {_flags(ignored)}")
        settings = {name: accepted[name].check(value) for name, value in given.items()}
        figure = build_view(trace, args.view, attention=kind, **settings)
        _write_figure(args, fmt, _marked(args, figure, tokens, settings if "layer" in accepted else None))


def _marked(args: argparse.Namespace, figure, tokens: EncoderTrace, settings: dict[str, Any] | None):
    """``figure`` with what an image model reads of the loaded text encoder marked (``viz.layout.mark_image_model``:
    the layer of a one-layer view, ``settings``' or the first, and the cut in ``tokens``); as it is for any other
    model or a saved trace."""
    model = getattr(args, "loaded_model", None)
    if model is None or model.reads is None:
        return figure
    layer = None if settings is None or settings.get("layer_mean") else settings.get("layer", 0)
    return mark_image_model(figure, tokens, model.reads, layer)


def _write_figure(args: argparse.Namespace, fmt: str, fig) -> None:
    if fmt == "html":
        args.output.write_text(figure_to_html(fig), encoding="utf-8")
    else:
        args.output.write_bytes(figure_to_bytes(fig, fmt, width=args.width, height=args.height, scale=args.scale))


def _analysis_settings(entry: Analysis, given: dict[str, Any]) -> dict[str, Any]:
    """The analysis' settings from the flags: only those it takes, checked, required ones present."""
    allowed = {option.name for option in entry.options} | ({"layer"} if entry.layer else set())
    allowed |= {"corpus", "corpus_size"} if entry.corpus else set()
    ignored = set(given) - allowed
    if ignored:
        raise ExportError(f"view {entry.name!r} does not take {_flags(ignored)}")
    if "corpus_size" in given and "corpus" not in given:
        raise ExportError("--corpus-size takes the first N sentences of --corpus; give --corpus too")
    settings = {name: value for name, value in given.items() if name in ("layer", "corpus", "corpus_size")}
    for option in entry.options:
        if option.name in given:
            settings[option.name] = option.check(given[option.name])
        elif option.required:
            raise ExportError(f"view {entry.name!r} needs {option.flag} ({option.help.split(': ', 1)[-1]})")
    return settings


def _run_analysis(args: argparse.Namespace, fmt: str, entry: Analysis, given: dict[str, Any],
                  traced: tuple[EncoderTrace, LoadedModel] | None = None) -> None:
    """Run the analysis ``entry`` (on ``traced``, a trace and its model, when given) and write its figure (png,
    svg, pdf, html) or numbers (csv, json)."""
    if fmt not in ANALYSIS_FORMATS:
        raise ExportError(f"view {entry.name!r} writes {', '.join(ANALYSIS_FORMATS)}, not {fmt} (npz holds a whole "
                          "trace: use a trace view such as heatmap)")
    settings = _analysis_settings(entry, given)
    corpus, size = settings.pop("corpus", None), settings.pop("corpus_size", None)
    inputs = _inputs(args, entry, corpus, size) if traced is None else _generated_inputs(args, entry, *traced)
    why = kind_unavailable(entry, inputs.trace, _kind(args))  # the analysis checks its own limits
    if why is not None:
        raise ExportError(why)
    if inputs.trace is not None:
        inputs = dataclasses.replace(inputs, trace=analysis_trace(inputs.trace, _kind(args)))
    result = entry.compute(inputs, settings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        rows, _ = entry.rows(result, inputs.trace, settings)
        args.output.write_text(analysis.rows_to_csv(rows), encoding="utf-8", newline="")
    elif fmt == "json":
        _, numbers = entry.rows(result, inputs.trace, settings)
        args.output.write_text(analysis.to_json(numbers), encoding="utf-8")
    else:
        _write_figure(args, fmt, entry.figures(result, inputs.trace, settings)[0][1])


def _inputs(args: argparse.Namespace, entry: Analysis, corpus: Path | None, size: int | None = None) -> TraceInputs:
    """What the analysis runs on: a corpus (traced by ``--model``), or the trace of ``--text`` (and the model
    itself when the analysis re-runs it)."""
    if args.merge_words and (corpus is not None or entry.needs_model):
        why = "traces every sentence itself" if corpus is not None else "re-runs the model on the tokens"
        raise ExportError(f"--merge-words does not apply to view {entry.name!r} here: it {why}")
    model = None
    if entry.needs_model:
        if args.trace is not None:
            raise ExportError(f"view {entry.name!r} re-runs the model, so it needs --text (and --model), not --trace")
        model = _model(args)
    if corpus is not None:
        sentences = _corpus_sentences(args, corpus)
        if size is not None:
            if size < 1:
                raise ExportError(f"--corpus-size must be at least 1, got {size}")
            sentences = sentences[:size]
        name = f"the first {len(sentences):,} sentences of {'the test set' if _is_test(corpus) else corpus.name}"
        return TraceInputs(None, model, report=lambda distances: _corpus_report(args, sentences, distances),
                           on_progress=_progress_line, sentences=(name, tuple(sentences)))
    return TraceInputs(_load_trace(args, model), model, on_progress=_progress_line)


def _generated_inputs(args: argparse.Namespace, entry: Analysis, trace: EncoderTrace,
                      model: LoadedModel) -> TraceInputs:
    """What the analysis runs on in ``generate``: the generated trace (and its model when the analysis re-runs it)."""
    if args.merge_words and entry.needs_model:
        raise ExportError(f"--merge-words does not apply to view {entry.name!r} here: it re-runs the model on the "
                          "tokens")
    return TraceInputs(_load_trace(args, trace=trace), model if entry.needs_model else None,
                       on_progress=_progress_line)


def _is_test(path: Path) -> bool:
    return str(path) == TEST_CORPUS and not path.exists()


def _corpus_sentences(args: argparse.Namespace, path: Path) -> list[str]:
    if args.trace is not None:
        raise ExportError("--corpus re-runs the model on every sentence, so it takes --model, not --trace")
    if args.text is not None or args.pair is not None:
        raise ExportError("give either --corpus or --text/--pair, not both")
    if _is_test(path):
        return [example.text for example in load_splits()["test"]]
    if not path.is_file():
        raise ExportError(f"corpus {path} does not exist")
    try:
        return analysis.sentences_from_text(path.read_text(encoding="utf-8"), limit=sys.maxsize)
    except UnicodeDecodeError as error:
        raise ExportError(f"corpus {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except HeadlightError as error:
        raise ExportError(f"corpus {path}: {error}") from None


def _corpus_report(args: argparse.Namespace, sentences: list[str], distances: bool) -> analysis.HeadReport:
    """The report card over ``sentences``, traced by ``--model``; progress on stderr."""
    limit = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
    traces = analysis.iter_traces(_model(args), sentences, **limit)
    return analysis.corpus_head_report(traces, len(sentences), _progress_line("sentences traced"), distances)


def _progress_line(what: str) -> analysis.Progress:
    """A progress callback that keeps one line on stderr up to date ("250/1,000 sentences traced"), redrawn at
    most once per percent and ended with a newline when done."""
    shown = -1

    def show(done: int, total: int | None) -> None:
        nonlocal shown
        percent = done * 100 // total if total else done
        if percent == shown and done != total:
            return
        shown = percent
        count = f"{done:,}/{total:,}" if total else f"{done:,}"
        sys.stderr.write(f"\r{count} {what}" + ("\n" if done == total else ""))
        sys.stderr.flush()

    return show


# ---------------------------------------------------------------------------------------------------------------
# generate


def generate(argv: list[str]) -> tuple[str, EncoderTrace, list[Path]]:
    """``python -m cli generate`` with ``argv`` (the arguments after ``generate``): continue the prompt, write the
    trace (``--out``) and/or the view (``-o``); returns the prompt, the generated trace (its ``text`` is the prompt
    and the continuation) and the paths written. Everything given is checked before the model is loaded."""
    args = _parser(generate=True).parse_args(argv)
    if args.out is None and args.output is None:
        raise ExportError("give --out (the generated trace: .npz or .json) and/or -o (a figure or data of --view)")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.step is not None and args.output is None:
        raise ExportError("--step chooses what -o draws: give -o too")
    if args.out is not None and (kind := args.out.suffix.lower().lstrip(".")) not in TRACE_FORMATS:
        raise ExportError(f"--out writes a trace: {', '.join(TRACE_FORMATS)}, not {kind or 'a file without suffix'}")
    fmt = _output_format(args) if args.output is not None else None
    given = _given(args)
    from encoder.generate import generate_text  # the model code: not loaded for a saved trace's figures

    model = _model(args)
    trace = generate_text(model, args.text, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    written = []
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix.lower() == ".json":
            args.out.write_text(trace_to_json(trace), encoding="utf-8")
        else:
            trace.save(args.out)
        written.append(args.out)
    if args.output is not None:
        shown = trace if args.step is None else step_trace(trace, args.step)
        if args.view in ANALYSES:
            _run_analysis(args, fmt, ANALYSES[args.view], given, (shown, model))
        else:
            _run_view(args, fmt, given, shown)
        written.append(args.output)
    return args.text, trace, written


# python -m cli corpus <command>: the module whose main(argv) runs it.
CORPUS_COMMANDS = {"build": "corpus.build", "query": "corpus.query"}


def corpus(argv: list[str]) -> int:
    """``python -m cli corpus build|... ARGS``: the command's module's ``main`` (imported only then: Beam is heavy)."""
    if not argv or argv[0] not in CORPUS_COMMANDS:
        print(f"usage: python -m cli corpus {{{','.join(CORPUS_COMMANDS)}}} ... (--help for each)", file=sys.stderr)
        return 2
    return importlib.import_module(CORPUS_COMMANDS[argv[0]]).main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit code 0 on success, 2 with a one-line message (no traceback) on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["corpus"]:
        return corpus(argv[1:])
    try:
        if argv[:1] == [GENERATE]:
            prompt, trace, paths = generate(argv[1:])
        else:
            prompt, trace, paths = "", None, [run(argv)]
    except HeadlightError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trace is not None:
        print(f"generated {generation_steps(trace)} tokens: {trace.text[len(prompt):]!r}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
