"""What every benchmark shares: timing a call, the CPU seconds of processes (from /proc), and printing a markdown
table."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    """Every live process's parent, by process id."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def _total_cpu(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
    return total


def browser_cpu(server: int) -> float:
    """CPU seconds of this process's live descendants other than the server and its children: Playwright's driver
    and Chromium."""
    parents = _parents()

    def ours(pid: int) -> bool:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, server, os.getpid()):
            ancestor = parents.get(ancestor)
        return ancestor == os.getpid() and pid != server

    return _total_cpu(pid for pid in parents if ours(pid))


def children_cpu(pid: int) -> float:
    """CPU seconds of the live children of ``pid`` (the server's cold-start helper)."""
    return _total_cpu(child for child, parent in _parents().items() if parent == pid)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in headers) + " |")
