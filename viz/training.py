"""The training curve of the tutorial model: loss and accuracy per epoch, training next to validation."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

METRICS = (("loss", "Loss"), ("accuracy", "Accuracy"))  # (history key, panel title)
# (history key prefix, legend name, colour): Keras names validation metrics "val_<metric>".
SERIES = (
    ("", "training (mean over the epoch, dropout on)", "#1f77b4"),
    ("val_", "validation (end of epoch)", "#d62728"),
)
WIDTH, HEIGHT = 900, 380  # pixels: two panels side by side, legend below


def build_training_curve(history: dict[str, list[float]], best_epoch: int | None = None) -> go.Figure:
    """Two panels, loss and accuracy against epoch (1, 2, ...), each with training and validation lines.

    Args:
        history: dict, Keras ``fit(...).history``: lists per epoch under "loss", "accuracy", "val_loss",
            "val_accuracy" (missing keys draw empty lines; an empty history draws empty panels).
        best_epoch: int or None, the epoch whose weights were kept (1-based): a dotted line in both panels.

    Example:
        >>> fig = build_training_curve({"loss": [0.7, 0.5], "val_loss": [0.6, 0.55]}, best_epoch=2)
        >>> [trace.name for trace in fig.data][:2]
        ['training (mean over the epoch, dropout on)', 'validation (end of epoch)']
    """
    figure = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[title for _, title in METRICS])
    epochs = list(range(1, len(history.get("loss", [])) + 1))
    for column, (metric, _) in enumerate(METRICS, start=1):
        for prefix, name, color in SERIES:
            figure.add_trace(go.Scatter(x=epochs, y=history.get(prefix + metric, []), mode="lines+markers",
                                        name=name, line={"color": color}, showlegend=column == 1),
                             row=1, col=column)
        if best_epoch is not None:
            figure.add_vline(x=best_epoch, line_dash="dot", line_color="grey", row=1, col=column)
        figure.update_xaxes(title_text="epoch", dtick=1, row=1, col=column)
    title = "Training curve" + (f" (kept epoch {best_epoch}, dotted)" if best_epoch is not None else "")
    figure.update_layout(title=title, width=WIDTH, height=HEIGHT, template="plotly_white", margin={"t": 70},
                         legend={"orientation": "h", "y": -0.25})
    return figure
