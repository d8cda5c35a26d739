"""What every benchmark shares: timing a call and printing a markdown table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(function: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, in milliseconds (after one untimed call if
    ``warm_up``, e.g. to compile a new shape)."""
    if warm_up:
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in headers) + " |")
