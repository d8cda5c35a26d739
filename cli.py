"""The command line: ``python -m cli`` (or the alias ``python -m viz.export``) makes any figure (png, svg, pdf,
html), exports a trace's data (npz, json, csv), or runs an analysis and writes its figure or its numbers."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

import analysis
from analysis.perturb import DEFAULT_SAMPLES, DEFAULT_SIGMAS
from encoder.errors import ExportError, HeadlightError
from encoder.trace import EncoderTrace
from encoder.trace_io import DATA_FORMATS, trace_from_json, trace_to_json, write_attention_csv
from viz.render import FIGURE_FORMATS, figure_to_bytes, figure_to_html

if TYPE_CHECKING:
    from encoder.sources import LoadedModel

FORMATS = (*FIGURE_FORMATS, *DATA_FORMATS)
ANALYSIS_FORMATS = (*FIGURE_FORMATS, "csv", "json")  # an analysis writes its figure or its numbers

def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


@dataclass(frozen=True)
class AnalysisView:
    """An analysis the CLI runs: a one-line description, the settings it takes, and whether it re-runs the model
    (then a saved trace is not enough)."""

    name: str
    description: str
    options: tuple[str, ...]
    needs_model: bool = False


ANALYSIS_VIEWS: dict[str, AnalysisView] = {
    view.name: view
    for view in (
        AnalysisView("rollout", "attention rollout after --layer (default the last), token x token",
                     ("layer", "residual", "colorscale")),
        AnalysisView("flow", f"attention flow (max flow) through layers 0 to --layer, at most "
                             f"{analysis.MAX_FLOW_TOKENS} tokens", ("layer", "residual", "colorscale")),
        AnalysisView("report", "head report card: one --statistic for every layer x head (text or --corpus)",
                     ("statistic", "corpus", "colorscale")),
        AnalysisView("clusters", "heads clustered by Jensen-Shannon distance (text or --corpus)",
                     ("clusters", "corpus", "colorscale")),
        AnalysisView("noise", "attention change under embedding noise: curve over sigma, or map at --sigma",
                     ("samples", "sigma", "colorscale"), needs_model=True),
        AnalysisView("importance", "each head silenced alone: its effect on the output, layers x heads",
                     ("colorscale",), needs_model=True),
        AnalysisView("ablation", "the output with the --ablate heads silenced together vs the clean output",
                     ("ablate",), needs_model=True),
    )
}
DEFAULT_STATISTIC = "entropy"
DEFAULT_CLUSTERS = 4  # clusters outlined and numbered, as in the app


def _parser() -> argparse.ArgumentParser:
    from viz import VIEWS

    views = "\n".join(f"  {name:22} {view.description}" for name, view in VIEWS.items())
    analyses = "\n".join(f"  {name:22} {view.description}" for name, view in ANALYSIS_VIEWS.items())
    parser = argparse.ArgumentParser(
        prog="python -m viz.export",
        description="Make a Headlight figure (png, svg, pdf, html) or export a trace's data (npz, json, csv); or run "
                    "an analysis and write its figure (png, svg, pdf, html) or its numbers (csv, json).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"views:\n{views}\n\n"
               f"analysis views (csv and json hold the analysis numbers, not the trace):\n{analyses}\n\nexamples:\n"
               '  python -m viz.export --text "The cat sat on the mat." --view heatmap --layer 2 --head 5 -o fig.svg\n'
               '  python -m viz.export --text "The cat sat." --pair "It was tired." --view model -o model.png\n'
               '  python -m viz.export --text "The cat sat." --format csv --layer 0 -o layer0.csv\n'
               "  python -m viz.export --trace saved.npz --view tokens --query 2 -o tokens.pdf\n"
               '  python -m viz.export --text "The cat sat on the mat." --view rollout --layer 3 -o rollout.png\n'
               '  python -m viz.export --text "The cat sat on the mat." --view flow -o flow.csv\n'
               "  python -m viz.export --corpus sentences.txt --view report --statistic sep -o sep.svg\n"
               '  python -m viz.export --text "The cat sat." --view noise --samples 4 --sigma 0.5 -o noise.html\n'
               '  python -m viz.export --text "The cat sat." --view ablation --ablate 0:3,2:5 -o ablation.json',
    )
    source = parser.add_argument_group("input")
    source.add_argument("--model", default="minilm", help="model source: minilm (default), tutorial, a folder, ...")
    source.add_argument("--text", help="the sentence to trace")
    source.add_argument("--pair", help="an optional second sentence")
    source.add_argument("--max-tokens", type=int, help="keep at most this many tokens")
    source.add_argument("--trace", type=Path, help="a saved trace (.npz or .json) instead of --model/--text")
    output = parser.add_argument_group("output")
    output.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    output.add_argument("--format", choices=FORMATS, help="default: the output file's extension")
    output.add_argument("--view", default="heatmap", choices=[*VIEWS, *ANALYSIS_VIEWS],
                        help="figure or analysis to make (default heatmap; lists below)")
    output.add_argument("--width", type=int, help="image width in pixels (default: the figure's)")
    output.add_argument("--height", type=int, help="image height in pixels (default: the figure's)")
    output.add_argument("--scale", type=float, default=1.0, help="PNG pixel scale, e.g. 2 for print")
    settings = parser.add_argument_group("view settings (each applies to the views that take it)")
    settings.add_argument("--layer", type=int,
                          help="layer (default 0; rollout, flow: after this layer, default the last); for trace csv: "
                               "only this layer")
    settings.add_argument("--head", type=int, help="head (default 0); for csv: only this head")
    settings.add_argument("--heads", type=_int_list, help="heads, e.g. 0,3,5 (aggregate, tokens, lines)")
    settings.add_argument("--aggregate", choices=["mean", "max"], help="combine heads instead of one head")
    settings.add_argument("--layer-mean", action="store_true", help="average over all layers")
    settings.add_argument("--colorscale", help="Plotly colour scale name, e.g. Viridis, Cividis, Blues")
    settings.add_argument("--log-color", action="store_true", help="colour by log10(weight)")
    settings.add_argument("--hide-special", action="store_true", help="hide [CLS], [SEP] and similar tokens")
    settings.add_argument("--no-renormalize", action="store_true", help="with --hide-special, keep rows as they are")
    settings.add_argument("--block", choices=["AA", "AB", "BA", "BB"], help="sentence-pair block of the heatmap")
    settings.add_argument("--query", type=int, help="query token index (tokens, lines)")
    settings.add_argument("--direction", choices=["from", "to"], help="tokens: attention from or to the query")
    settings.add_argument("--threshold", type=float, help="lines: smallest weight drawn (default 0.05)")
    settings.add_argument("--dims", type=_int_list, help="positional-dimensions: dimensions to plot, e.g. 0,1,64")
    settings.add_argument("--thumbnail", type=int, help="model: cells per thumbnail side (default 64)")
    settings.add_argument("--max-positions", type=int, help="positional views: show the first N positions only")
    study = parser.add_argument_group(
        "analysis settings",
        "  For the analysis views, with --layer and --colorscale above. noise, importance, ablation and --corpus\n"
        "  re-run the model, so they need --text (or --corpus), not --trace.",
    )
    study.add_argument("--residual", type=float, metavar="R",
                       help="rollout, flow: weight of the skip connection, A' = (1-R) mean(heads) + R I, "
                            f"0 to 1 (default {analysis.DEFAULT_RESIDUAL:g})")
    study.add_argument("--statistic", choices=list(analysis.STATISTICS), metavar="NAME",
                       help=f"report: the statistic drawn (default {DEFAULT_STATISTIC}): "
                            f"{', '.join(analysis.STATISTICS)}; csv and json hold them all")
    study.add_argument("--corpus", type=Path, metavar="FILE",
                       help="report, clusters: aggregate over a UTF-8 text file, one sentence per line, instead of "
                            "--text (progress on stderr)")
    study.add_argument("--clusters", type=int, metavar="K",
                       help=f"clusters: how many clusters to outline and number (default {DEFAULT_CLUSTERS})")
    study.add_argument("--samples", type=int, metavar="N",
                       help=f"noise: noisy samples per sigma (default {DEFAULT_SAMPLES})")
    study.add_argument("--sigma", type=float, metavar="S",
                       help="noise: draw the layers x heads map at this sigma (measured besides "
                            f"{', '.join(f'{s:g}' for s in DEFAULT_SIGMAS)}) instead of the curve over sigma")
    study.add_argument("--ablate", metavar="L:H,...", help="ablation: heads to silence together, e.g. 0:3,2:5")
    return parser


# CLI options that are view settings: each is the builder keyword of the same name (--hide-special -> hide_special).
_SETTINGS = ("layer", "head", "heads", "aggregate", "layer_mean", "colorscale", "log_color", "hide_special", "block",
             "query", "direction", "threshold", "dims", "thumbnail", "max_positions")
# CLI options that only analysis views take.
_ANALYSIS_SETTINGS = ("residual", "statistic", "corpus", "clusters", "samples", "sigma", "ablate")


def _load_trace(args: argparse.Namespace, model: LoadedModel | None = None) -> EncoderTrace:
    """The trace to draw: ``--trace`` read back, or ``--text``/``--pair`` traced by ``model`` (default: load
    ``--model``)."""
    if args.trace is not None:
        if args.text is not None:
            raise ExportError("give either --trace or --text, not both")
        if not args.trace.is_file():
            raise ExportError(f"{args.trace} does not exist")
        if args.trace.suffix.lower() == ".json":
            return trace_from_json(args.trace.read_text(encoding="utf-8"))
        try:
            return EncoderTrace.load(args.trace)
        except (OSError, KeyError, ValueError) as error:
            raise ExportError(f"{args.trace} is not a saved trace: {error}") from error
    if args.text is None:
        raise ExportError("give --text (the sentence to trace) or --trace (a saved trace)")
    from encoder.sources import load_source
    from encoder.trace import trace_text

    return trace_text(load_source(args.model) if model is None else model, args.text, args.pair, args.max_tokens)


def run(argv: list[str] | None = None) -> Path:
    """Parse ``argv``, make the figure, data or analysis file, write it; returns the path written."""
    from viz import VIEWS, build_view

    args = _parser().parse_args(argv)
    fmt = args.format or args.output.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"cannot tell the format from {args.output.name!r}: use --format ({', '.join(FORMATS)})")
    given = {key: getattr(args, key) for key in _SETTINGS if getattr(args, key) not in (None, False)}
    if args.no_renormalize:
        given["renormalize"] = False
    chosen = {key: getattr(args, key) for key in _ANALYSIS_SETTINGS if getattr(args, key) is not None}
    if args.view in ANALYSIS_VIEWS:
        _run_analysis(args, fmt, {**given, **chosen})
        return args.output
    if chosen:
        raise ExportError(f"view {args.view!r} does not take {_flags(chosen)} (analysis settings)")
    trace = _load_trace(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        trace.save(args.output)
    elif fmt == "json":
        args.output.write_text(trace_to_json(trace), encoding="utf-8")
    elif fmt == "csv":
        layers = [given["layer"]] if "layer" in given else None
        heads = given.get("heads", [given["head"]] if "head" in given else None)
        with args.output.open("w", encoding="utf-8", newline="") as handle:
            write_attention_csv(trace, handle, layers, heads)
    else:
        accepted = VIEWS[args.view].parameters
        ignored = ", ".join("--" + k.replace("_", "-") for k in sorted(set(given) - set(accepted)))
        if ignored:
            raise ExportError(f"view {args.view!r} does not take {ignored}")
        _write_figure(args, fmt, build_view(trace, args.view, **given))
    return args.output


def _write_figure(args: argparse.Namespace, fmt: str, fig: go.Figure) -> None:
    if fmt == "html":
        args.output.write_text(figure_to_html(fig), encoding="utf-8")
    else:
        args.output.write_bytes(figure_to_bytes(fig, fmt, width=args.width, height=args.height, scale=args.scale))


def _flags(keys: Iterable[str]) -> str:
    """Settings as the command-line flags that set them: ``["hide_special"]`` -> ``"--hide-special"``."""
    return ", ".join("--no-renormalize" if k == "renormalize" else "--" + k.replace("_", "-") for k in sorted(keys))


# ---------------------------------------------------------------------------------------------------------------
# Command line: analysis views


@dataclass(frozen=True)
class _Output:
    """What an analysis view writes: its figure (built only when asked for), its numbers as CSV rows, and the
    result written as JSON."""

    figure: Callable[[], go.Figure]
    rows: list[dict]
    result: object


def _run_analysis(args: argparse.Namespace, fmt: str, settings: dict) -> None:
    """Run the analysis view ``args.view`` and write its figure (png, svg, pdf, html) or numbers (csv, json)."""
    view = ANALYSIS_VIEWS[args.view]
    if fmt not in ANALYSIS_FORMATS:
        raise ExportError(f"view {view.name!r} writes {', '.join(ANALYSIS_FORMATS)}, not {fmt} (npz holds a whole "
                          "trace: use a trace view such as heatmap)")
    ignored = set(settings) - set(view.options)
    if ignored:
        raise ExportError(f"view {view.name!r} does not take {_flags(ignored)}")
    settings = _checked(settings)
    if view.name == "ablation" and "ablate" not in settings:
        raise ExportError("view 'ablation' needs --ablate, the heads to silence together, e.g. --ablate 0:3,2:5")
    if view.name == "noise" and "colorscale" in settings and "sigma" not in settings:
        raise ExportError("--colorscale colours the noise map: give --sigma too (the curve has one colour per layer)")
    output = _analysis_output(args, view, settings)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        args.output.write_text(analysis.rows_to_csv(output.rows), encoding="utf-8", newline="")
    elif fmt == "json":
        args.output.write_text(analysis.to_json(output.result), encoding="utf-8")
    else:
        _write_figure(args, fmt, output.figure())


def _checked(settings: dict) -> dict:
    """Analysis settings checked before anything runs; ``ablate`` parsed into (layer, head) pairs."""
    from viz.common import check_colorscale

    if "colorscale" in settings:
        check_colorscale(settings["colorscale"])
    for name in ("clusters", "samples"):
        if name in settings and settings[name] < 1:
            raise ExportError(f"--{name} must be at least 1, got {settings[name]}")
    sigma = settings.get("sigma")
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise ExportError(f"--sigma must be a finite number >= 0, got {sigma}")
    if "ablate" in settings:
        return {**settings, "ablate": _head_pairs(settings["ablate"])}
    return settings


def _head_pairs(text: str) -> list[tuple[int, int]]:
    """``"0:3,2:5"`` -> ``[(0, 3), (2, 5)]``: layer:head pairs separated by commas or spaces.

    Raises:
        ExportError: anything else (the message shows the expected form).
    """
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    matches = [re.fullmatch(r"(\d+):(\d+)", part) for part in parts]
    if not parts or not all(matches):
        raise ExportError(f"--ablate takes layer:head pairs separated by commas, e.g. 0:3,2:5; got {text!r}")
    return [(int(match[1]), int(match[2])) for match in matches]


def _analysis_output(args: argparse.Namespace, view: AnalysisView, settings: dict) -> _Output:
    from viz import analysis_figures as figures

    style = {"colorscale": settings["colorscale"]} if "colorscale" in settings else {}
    if "corpus" in settings:
        report = _corpus_report(args, settings["corpus"], distances=view.name == "clusters")
        if view.name == "report":
            return _report(report, settings, style)
        return _clusters(report.distance, report.num_layers, report.num_heads, settings, style)
    model = None
    if view.needs_model:
        if args.trace is not None:
            raise ExportError(f"view {view.name!r} re-runs the model, so it needs --text (and --model), not --trace")
        from encoder.sources import load_source

        model = load_source(args.model)
    trace = _load_trace(args, model)
    if view.name in ("rollout", "flow"):
        return _token_matrix(view.name, trace, settings, style)
    if view.name == "report":
        return _report(analysis.head_report(trace), settings, style)
    if view.name == "clusters":
        distance = analysis.head_distances(trace.attention)  # (N, N)
        return _clusters(distance, trace.num_layers, trace.num_heads, settings, style)

    from analysis import perturb

    if view.name == "noise":
        sigma = settings.get("sigma")
        sigmas = DEFAULT_SIGMAS if sigma is None else tuple(sorted({*DEFAULT_SIGMAS, sigma}))
        result = perturb.noise_stability(model, trace, sigmas, settings.get("samples", DEFAULT_SAMPLES),
                                         progress=_progress_line("noisy runs"))
        if sigma is None:
            return _Output(partial(figures.build_noise_curve, result), result.rows(), result)
        return _Output(partial(figures.build_noise_heatmap, result, sigma, **style), result.rows(), result)
    if view.name == "importance":
        result = perturb.head_importance(model, trace, progress=_progress_line("heads silenced"))
        return _Output(partial(figures.build_importance_heatmap, result, **style), result.rows(), result)
    effect = perturb.ablate_heads(model, trace, settings["ablate"])
    return _Output(partial(figures.build_ablation_chart, effect), effect.rows(), effect)


def _token_matrix(name: str, trace: EncoderTrace, settings: dict, style: dict) -> _Output:
    """Rollout or flow after ``--layer`` (default the last): CSV rows are the (T, T) matrix in long format."""
    from viz import analysis_figures as figures
    from viz.common import check_layer

    layer = check_layer(trace, settings.get("layer", trace.num_layers - 1))
    residual = settings.get("residual", analysis.DEFAULT_RESIDUAL)
    if name == "rollout":
        rollout = analysis.attention_rollout(trace.attention, residual)  # (L, T, T)
        matrix = rollout[layer]
        figure = partial(figures.build_rollout_heatmap, rollout, trace.tokens, layer, residual, **style)
    else:
        matrix = analysis.attention_flow(trace.attention, residual, num_layers=layer + 1)  # (T, T)
        figure = partial(figures.build_flow_heatmap, matrix, trace.tokens, layer + 1, residual, **style)
    rows = analysis.matrix_rows(matrix, trace.tokens, name)
    result = {"kind": name, "model": trace.model, "text": trace.text, "pair": trace.pair, "layer": layer,
              "residual": residual, "tokens": trace.tokens, "rows": rows}
    return _Output(figure, rows, result)


def _report(report: analysis.HeadReport, settings: dict, style: dict) -> _Output:
    from viz import analysis_figures as figures

    statistic = settings.get("statistic", DEFAULT_STATISTIC)
    return _Output(partial(figures.build_report_heatmap, report, statistic, **style), report.rows(), report)


def _clusters(distance: np.ndarray, num_layers: int, num_heads: int, settings: dict, style: dict) -> _Output:
    """Heads clustered from an (N, N) distance; CSV rows are the heads in cluster order cut into ``--clusters``."""
    from viz import analysis_figures as figures

    count = settings.get("clusters", DEFAULT_CLUSTERS)
    clustering = analysis.cluster_heads(distance, num_layers, num_heads)
    figure = partial(figures.build_clustering_heatmap, clustering, clusters=count, **style)
    return _Output(figure, clustering.rows(count), clustering)


def _corpus_report(args: argparse.Namespace, path: Path, distances: bool) -> analysis.HeadReport:
    """The report card over the sentences of ``path`` (one per line), traced by ``--model``; progress on stderr."""
    if args.trace is not None:
        raise ExportError("--corpus re-runs the model on every sentence, so it takes --model, not --trace")
    if args.text is not None or args.pair is not None:
        raise ExportError("give either --corpus or --text/--pair, not both")
    if not path.is_file():
        raise ExportError(f"corpus {path} does not exist")
    try:
        sentences = analysis.sentences_from_text(path.read_text(encoding="utf-8"), limit=sys.maxsize)
    except UnicodeDecodeError as error:
        raise ExportError(f"corpus {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except ValueError as error:
        raise ExportError(f"corpus {path}: {error}") from None
    from encoder.sources import load_source

    limit = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
    traces = analysis.iter_traces(load_source(args.model), sentences, **limit)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit code 0 on success, 2 with a one-line message (no traceback) on bad input."""
    try:
        path = run(argv)
    except (HeadlightError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
