"""Settings of views and analyses, declared once: each ``Option`` is a builder or compute keyword, a command-line
flag (``--name``) and, where the app shows it, a widget (its key is the name; bound ones live in the URL).

``ViewSettings`` is what the app's shared controls (layer, heads, query token, display options) hold; the
``*_settings`` functions turn it into a view builder's keyword arguments (``View.from_settings``). All plain data:
no Streamlit, no TensorFlow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis import DEFAULT_RESIDUAL, STATISTICS
from analysis.gradients import DEFAULT_STEPS, MAX_STEPS
from analysis.heads import DEFAULT_CLUSTERS, DEFAULT_STATISTIC
from analysis.lens import LENS_WINDOW
from analysis.perturb import DEFAULT_SAMPLES, DEFAULT_SIGMAS, measured_sigmas
from encoder.errors import ViewError
from encoder.trace import ATTENTION_KINDS
from viz.kinds import ENCODER, KIND_HELP

# Option kinds: how a value is typed on the command line and which widget shows it in the app.
KINDS = ("int", "float", "choice", "flag", "ints", "heads", "colorscale", "path", "range")


@dataclass(frozen=True)
class Option:
    """One setting.

    Attributes:
        name: the keyword (``residual``), the flag (``--residual``) and the app widget key.
        kind: one of ``KINDS``: int, float, choice (one of ``choices``), flag (on/off), ints ("0,3,5"),
            heads ("0:3,2:5" = (layer, head) pairs), colorscale (a Plotly scale name), path (a file), range
            ("100:356", token indices, end excluded: checked by the view against the text's length).
        help: one line for ``--help`` and the widget's tooltip.
        label: the widget's label in the app (``None``: the app shows no widget for it; the default applies).
        default: the value when not given (``None``: the builder's or compute function's own default).
        low, high, step: the allowed range of an int or float (inclusive) and the slider step.
        choices: the allowed values of a choice; for an int, the values the app's widget offers (the command line
            takes any int in range).
        stage: "compute" (changes the result: part of its cache key) or "figure" (only redraws).
        url: the app keeps the widget's value in the URL, so a copied link reopens it.
        required: the analysis cannot run without it (the app asks for it; the CLI says which flag is missing).
        dynamic_choices: for figure options whose choices come from the result (e.g. the sigmas measured).
        metavar: how ``--help`` names the value (``R`` in ``--residual R``).
    """

    name: str
    kind: str
    help: str
    label: str | None = None
    default: Any = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: Sequence[Any] = ()
    stage: str = "figure"
    url: bool = False
    required: bool = False
    dynamic_choices: Callable[[Any], Sequence[Any]] | None = field(default=None, compare=False)
    metavar: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.stage not in ("compute", "figure"):
            raise ValueError(f"option {self.name!r}: stage must be 'compute' or 'figure'")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` checked against the kind and range (ViewError naming the flag and what is allowed)."""
        if value is None:
            return None
        if self.kind == "float":
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise ViewError(f"{self.flag} must be a finite number, got {value!r}")
            self._check_range(value)
        elif self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ViewError(f"{self.flag} must be an integer, got {value!r}")
            self._check_range(value)
        elif self.kind == "choice" and value not in self.choices:
            raise ViewError(f"{self.flag} {value!r} is not one of {', '.join(map(str, self.choices))}")
        elif self.kind == "colorscale":
            from viz.validation import check_colorscale

            check_colorscale(value)
        elif self.kind == "heads":
            value = parse_heads(value) if isinstance(value, str) else tuple((int(a), int(b)) for a, b in value)
        return value

    def _check_range(self, value: float) -> None:
        low, high = self.low, self.high
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"between {low:g} and {high:g}" if low is not None and high is not None else (
                f"at least {low:g}" if low is not None else f"at most {high:g}")
            raise ViewError(f"{self.flag} must be {span}, got {value:g}")


def parse_ints(text: str) -> list[int]:
    """``"0,3 5"`` -> ``[0, 3, 5]`` (ViewError otherwise)."""
    try:
        return [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        raise ViewError(f"expected integers separated by commas, got {text!r}") from None


def parse_heads(text: str) -> tuple[tuple[int, int], ...]:
    """``"0:3,2:5"`` -> ``((0, 3), (2, 5))``: layer:head pairs separated by commas or spaces (ViewError otherwise)."""
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    matches = [re.fullmatch(r"(\d+):(\d+)", part) for part in parts]
    if not parts or not all(matches):
        raise ViewError(f"--ablate takes layer:head pairs separated by commas, e.g. 0:3,2:5; got {text!r}")
    return tuple((int(match[1]), int(match[2])) for match in matches)


# The settings many views share. A view takes those its builder has a parameter for (``--hide-special`` goes to
# ``hide_special``); ``--no-renormalize`` sets ``renormalize=False``.
SHARED_OPTIONS: tuple[Option, ...] = (
    Option("layer", "int", "layer (default 0; rollout, flow: after this layer, default the last); for trace csv: "
           "only this layer", low=0),
    Option("head", "int", "head (default 0); for csv: only this head", low=0),
    Option("heads", "ints", "heads, e.g. 0,3,5 (aggregate, tokens, lines)"),
    Option("aggregate", "choice", "combine heads instead of one head", choices=("mean", "max")),
    Option("layer_mean", "flag", "average over all layers"),
    Option("colorscale", "colorscale", "Plotly colour scale name, e.g. Viridis, Cividis, Blues"),
    Option("log_color", "flag", "colour by log10(weight)"),
    Option("hide_special", "flag", "hide [CLS], [SEP] and similar tokens"),
    Option("renormalize", "flag", "with --hide-special, keep rows as they are (flag: --no-renormalize)"),
    Option("block", "choice", "sentence-pair block of the heatmap", choices=("AA", "AB", "BA", "BB")),
    Option("query", "int", "query token index (tokens, lines; next-token: whose candidates, default the last)", low=0),
    Option("direction", "choice", "tokens: attention from or to the query", choices=("from", "to")),
    Option("threshold", "float", "lines: smallest weight drawn (default 0.05)", low=0.0, high=1.0),
)


COLORSCALE = next(option for option in SHARED_OPTIONS if option.name == "colorscale")

# The views' own settings.
THUMBNAIL = Option("thumbnail", "int", "model: cells per thumbnail side (default 64)", low=4, high=512)
SIGNED = Option("signed", "flag", "distance: keep the sign (keys before the query are negative)",
                label="Signed distance (left: keys before the query)", url=True)
SINKS = Option("sinks", "flag", "model: mark the attention sinks (heads whose queries from position 4 on put at "
               "least half their attention on the first token) with a red dot", label="Mark attention sinks", url=True)
ROWS = Option("rows", "range", "heatmap: zoom to the queries A:B (token indices, end excluded; every cell up to "
              "512 a side)", metavar="A:B")
COLS = Option("cols", "range", "heatmap: zoom to the keys A:B (token indices, end excluded)", metavar="A:B")
REDUCE = Option("reduce", "choice", "heatmap of over 512 tokens: each cell of the block image is the max (default) or "
                "the mean of its block", choices=("max", "mean"))
MAX_POSITIONS = Option("max_positions", "int", "positional views: show the first N positions only", low=1)
DIMS = Option("dims", "ints", "positional-dimensions: dimensions to plot, e.g. 0,1,64")

# The analyses' settings.
RESIDUAL = Option("residual", "float", "rollout, flow: weight of the skip connection, A' = (1-R) mean(heads) + R I, "
                  f"0 to 1 (default {DEFAULT_RESIDUAL:g})", label="Residual weight", metavar="R",
                  default=DEFAULT_RESIDUAL, low=0.0, high=1.0, step=0.05, stage="compute", url=True)
STATISTIC = Option("statistic", "choice", f"report: the statistic drawn (default {DEFAULT_STATISTIC}): "
                   f"{', '.join(STATISTICS)}; csv and json hold them all", label="Statistic", metavar="NAME",
                   default=DEFAULT_STATISTIC, choices=tuple(STATISTICS))
CLUSTERS = Option("clusters", "int", f"clusters: how many clusters to outline and number (default {DEFAULT_CLUSTERS})",
                  label="Clusters outlined", metavar="K", default=DEFAULT_CLUSTERS, low=1, choices=tuple(range(1, 13)),
                  url=True)
SAMPLES = Option("samples", "int", f"noise: noisy samples per sigma (default {DEFAULT_SAMPLES})",
                 label="Samples per sigma", metavar="N", default=DEFAULT_SAMPLES, low=1, choices=(4, 8, 16),
                 stage="compute")
SIGMA = Option("sigma", "float", "noise: draw the layers x heads map at this sigma (measured besides "
               f"{', '.join(f'{s:g}' for s in DEFAULT_SIGMAS)}) instead of the curve over sigma",
               label="Sigma shown in the map", metavar="S", low=0.0, dynamic_choices=measured_sigmas)
ABLATE = Option("ablate", "heads", "ablation: heads to silence together, e.g. 0:3,2:5",
                label="Heads to silence together", metavar="L:H,...", stage="compute", required=True)
STEPS = Option("steps", "int", "integrated-gradients: Gauss-Legendre points on the path from the baseline "
               f"(default {DEFAULT_STEPS})", label="Points on the path", metavar="N", default=DEFAULT_STEPS, low=1,
               high=MAX_STEPS, choices=(16, 32, 50, 100, 200), stage="compute")


UNTIL = Option("until", "int", f"lens: the last position of its window of at most {LENS_WINDOW} positions (default "
               "the last token)", metavar="POSITION", low=0, stage="compute")


# How the trace is read, before any view: the CLI's input flags and the app's display options, declared once.
ATTENTION = Option("attention", "choice", KIND_HELP, label="Attention", default=ENCODER, choices=ATTENTION_KINDS,
                   url=True, metavar="KIND")
MERGE_WORDS = Option("merge_words", "flag", "merge sub-word tokens into words (attention to a word summed over its "
                     "pieces, from a word averaged) for every view and for json, csv and npz output",
                     label="Merge sub-words into words", url=True)


@dataclass(frozen=True)
class ViewSettings:
    """What the app's shared controls hold, named like the builders' keywords.

    ``aggregate`` None means one ``head``; "mean"/"max" combine ``heads``. ``selected`` is a clicked heatmap cell
    (query, key) or None. ``merge_words``: the views show the trace with sub-words merged into words (token
    indices such as ``query`` are then word indices). ``attention``: which attention of an encoder-decoder the
    views show (``viz.kinds``; ``query`` and ``selected`` then index its queries and keys).
    """

    layer: int = 0
    layer_mean: bool = False
    aggregate: str | None = None
    head: int = 0
    heads: tuple[int, ...] = ()
    query: int = 0
    direction: str = "from"
    hide_special: bool = False
    renormalize: bool = True
    colorscale: str = "Blues"
    log_color: bool = False
    threshold: float = 0.1
    block: str | None = None
    selected: tuple[int, int] | None = None
    merge_words: bool = False
    attention: str = ENCODER
    rows: tuple[int, int] | None = None  # a long text's heatmap window: queries rows[0] .. rows[1] - 1
    cols: tuple[int, int] | None = None  # and keys
    reduce: str = "max"  # what a block image's cell shows of its block

    @property
    def shown_heads(self) -> tuple[int, ...]:
        """The heads on screen: the one head, or the heads being combined."""
        return (self.head,) if self.aggregate is None else self.heads

    def by_name(self, names: Sequence[str]) -> dict[str, Any]:
        """The settings whose names are in ``names`` (a builder's parameters), as keyword arguments."""
        return {name: getattr(self, name) for name in names if hasattr(self, name) and name != "shown_heads"}


# ---------------------------------------------------------------------------------------------------------------
# A view builder's keyword arguments from the shared controls (``View.from_settings``)


def display_settings(s: ViewSettings) -> dict[str, Any]:
    """Hide special tokens, and renormalise the rows after hiding them."""
    return dict(hide_special=s.hide_special, renormalize=s.renormalize)


def model_view_settings(s: ViewSettings) -> dict[str, Any]:
    """The display settings and the one head outlined (none while heads or layers are combined)."""
    return dict(**display_settings(s), selected=None if s.layer_mean or s.aggregate else (s.layer, s.head))


def token_view_settings(s: ViewSettings) -> dict[str, Any]:
    """The heads on screen combined (mean when one head is shown), from or to the query token."""
    return dict(layer=s.layer, heads=s.shown_heads, query=s.query, direction=s.direction,
                aggregate=s.aggregate or "mean", layer_mean=s.layer_mean, colorscale=s.colorscale,
                **display_settings(s))


def head_lines_settings(s: ViewSettings) -> dict[str, Any]:
    """The heads on screen as lines above the threshold."""
    return dict(layer=s.layer, heads=s.shown_heads, threshold=s.threshold, **display_settings(s))


def query_settings(s: ViewSettings) -> dict[str, Any]:
    """The query token only (the Next-token view: its candidates)."""
    return dict(query=s.query)


def no_settings(s: ViewSettings) -> dict[str, Any]:
    """None: the view draws the model's own table, whatever the controls say."""
    return {}
