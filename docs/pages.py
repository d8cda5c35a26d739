"""Sections of the Markdown pages in this folder, found by the registry name in their heading.

A page's section of one view or analysis starts at a level-2 or level-3 heading ending in its name in backticks
(``## Rollout (`rollout`)``) and runs to the next such heading or the page's end.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent


@cache
def page_text(page: str) -> str:
    """The text of ``page`` ("analyses.md") in this folder."""
    return (HERE / page).read_text(encoding="utf-8")


def section(page: str, name: str, images: bool = True) -> str | None:
    """The body of ``page``'s section for the registry name ``name`` (heading excluded, stripped), or None; without
    its image lines unless ``images`` (the app has no route to this folder's pictures)."""
    match = re.search(rf"^###? [^\n]*\(`{re.escape(name)}`\)[ \t]*\n(.*?)(?=^###? |\Z)", page_text(page),
                      flags=re.MULTILINE | re.DOTALL)
    if match is None:
        return None
    body = match[1] if images else re.sub(r"^!\[[^\n]*\n?", "", match[1], flags=re.MULTILINE)
    return body.strip()
