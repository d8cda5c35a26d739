"""Run every benchmark and print one markdown table each: `make bench` (or `python -m bench [names...]`)."""

from __future__ import annotations

import importlib
import sys

from bench.common import print_table

SUITES = {
    "encoder": "Encoder trace, MiniLM (6x12, d=384), median of alternating runs",
    "families": "Every ported family on its fixture-sized model, against transformers (PyTorch), ~60 tokens",
    "figures": "Figure builders and export",
    "analysis": "Analysis",
    "app": "App in Chromium",
    "load": "Concurrent sessions in Chromium, MiniLM: 10 layer changes each",
    "scrub": "Head scrubbing in Chromium (the slider inside the figure), MiniLM, 128 tokens",
}


def main(names: list[str]) -> int:
    for name in names or list(SUITES):
        if name not in SUITES:
            print(f"unknown benchmark {name!r}; choose from {', '.join(SUITES)}", file=sys.stderr)
            return 2
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"bench.{name}":
                raise
            continue
        rows = module.main()  # a suite either returns its rows or prints its own tables
        if rows:
            print_table(SUITES[name], rows)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
