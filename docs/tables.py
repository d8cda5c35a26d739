"""Write the tables of views and analyses into docs/views.md and docs/analyses.md, from the registry.

Run ``python -m docs.tables`` after changing an entry of ``viz.registry``; ``python -m docs.tables --check`` exits 1
(naming the pages) when a page differs from what this would write, and tests/test_doc_tables.py fails the same way.
Each table sits between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->``; the rest of the
page is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from viz.entries import Analysis, View
from viz.registry import VIEWS, group_analyses, view_options

HERE = Path(__file__).resolve().parent
PAGES = {"views": HERE / "views.md", "analyses": HERE / "analyses.md"}  # marker name -> page


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _flags(names: list[str]) -> str:
    """``["layer", "hide_special"]`` -> "`--layer`, `--hide-special`" (a dash for none)."""
    flags = ["--no-renormalize" if name == "renormalize" else "--" + name.replace("_", "-") for name in names]
    return ", ".join(f"`{flag}`" for flag in flags) or "–"


def _view_row(view: View) -> str:
    kinds = ", ".join(view.kinds)
    return (f"| `{view.name}` | {view.label} | {_cell(view.description)} | {_flags(list(view_options(view)))} | "
            f"{kinds} |")


def views_table() -> str:
    """The views: name, app tab, what it shows, the flags it takes, the kinds of an encoder-decoder's attention it
    shows (``--attention``)."""
    lines = ["| view (`--view`) | app tab | what it shows | options | attention (`--attention`) |",
             "| --- | --- | --- | --- | --- |"]
    return "\n".join([*lines, *(_view_row(view) for view in VIEWS.values())])


def _analysis_row(entry: Analysis) -> str:
    names = [*(["layer"] if entry.layer else []), *(option.name for option in entry.options)]
    flags = _flags([*names, *(["corpus"] if entry.corpus else [])])
    model = "yes" if entry.needs_model else "no"
    length = "any" if entry.any_length else "whole attention"
    return f"| `{entry.name}` | {entry.label} | {_cell(entry.description)} | {flags} | {model} | {length} |"


def analyses_table() -> str:
    """The analyses under their questions: name, app label, what it computes, options, whether it re-runs the
    model (then a saved trace is not enough), and the lengths it runs at (``Analysis.any_length``: any, or up to
    the length whose whole attention a trace keeps, ``viz.registry.length_limit``)."""
    parts = []
    for group, entries in group_analyses().items():
        parts += [f"**{group.title}** Answers: {group.answers}.", "",
                  "| analysis (`--view`) | app label | what it computes | options | needs the model | length |",
                  "| --- | --- | --- | --- | --- | --- |", *(_analysis_row(entry) for entry in entries), ""]
    return "\n".join(parts).rstrip("\n")


TABLES = {"views": views_table, "analyses": analyses_table}


def with_table(text: str, name: str, table: str) -> str:
    """``text`` with the block between the ``name`` markers replaced by ``table`` (ValueError without markers)."""
    begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
    pattern = re.compile(rf"{re.escape(begin)}\n.*?{re.escape(end)}", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{table}\n{end}", text, count=1)


def expected_pages() -> dict[Path, str]:
    """Each page as this script would write it."""
    return {page: with_table(page.read_text(encoding="utf-8"), name, TABLES[name]()) for name, page in PAGES.items()}


def stale_pages() -> list[Path]:
    """The pages whose tables differ from the registry's."""
    return [page for page, text in expected_pages().items() if page.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages()
        for page in stale:
            print(f"{page.name} differs from the registry: run python -m docs.tables", file=sys.stderr)
        return 1 if stale else 0
    for page, text in expected_pages().items():
        if page.read_text(encoding="utf-8") != text:
            page.write_text(text, encoding="utf-8")
            print(f"wrote {page.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
