"""docs/views.md and docs/analyses.md match the registry: their generated tables are what ``python -m docs.tables``
writes, and every view and analysis has its own section (the app shows an analysis' section under it)."""

from __future__ import annotations

import pytest

from docs import tables
from docs.pages import section
from viz.registry import ANALYSES, GROUPS, VIEWS


def test_the_generated_tables_match_the_registry():
    stale = [page.name for page in tables.stale_pages()]
    assert not stale, f"{', '.join(stale)} differ from the registry: run python -m docs.tables"


def test_the_tables_name_every_view_analysis_and_question():
    views, analyses = tables.views_table(), tables.analyses_table()
    for name, view in VIEWS.items():
        assert f"| `{name}` | {view.label} |" in views
    for name, entry in ANALYSES.items():
        assert f"| `{name}` | {entry.label} |" in analyses
        assert ("| yes |" if entry.needs_model else "| no |") in analyses.split(f"| `{name}` |")[1].split("\n")[0]
    assert all(f"**{group.title}**" in analyses for group in GROUPS.values())
    assert "`--residual`" in analyses.split("| `rollout` |")[1].split("\n")[0]


def test_a_changed_entry_makes_the_page_stale_and_the_script_rewrites_only_the_table(monkeypatch, tmp_path):
    page = tmp_path / "views.md"
    block = "<!-- BEGIN GENERATED: views -->\nSTALE TABLE\n<!-- END GENERATED: views -->"
    page.write_text(f"# Views\n\nbefore\n{block}\nafter\n", encoding="utf-8")
    monkeypatch.setitem(tables.PAGES, "views", page)
    monkeypatch.setitem(tables.PAGES, "analyses", tables.HERE / "analyses.md")
    assert tables.stale_pages() == [page]
    assert tables.main(["--check"]) == 1
    assert page.read_text(encoding="utf-8").count("STALE TABLE") == 1  # --check writes nothing
    assert tables.main([]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Views\n\nbefore\n") and text.endswith("<!-- END GENERATED: views -->\nafter\n")
    assert "| `heatmap` | Heatmap |" in text and "STALE TABLE" not in text
    assert tables.stale_pages() == []


def test_a_page_without_markers_is_an_error():
    with pytest.raises(ValueError, match="no <!-- BEGIN GENERATED: views -->"):
        tables.with_table("# Views\n", "views", "| table |")


def test_every_view_and_analysis_has_its_section():
    missing = [name for name in VIEWS if not section("views.md", name)]
    missing += [name for name in ANALYSES if not section("analyses.md", name)]
    assert not missing, f"no section for {', '.join(missing)}: add a heading ending in (`name`)"
    rollout = section("analyses.md", "rollout")
    assert rollout.startswith("**What it computes.**") and "Abnar & Zuidema" in rollout
    assert "## Flow" not in rollout  # a section stops at the next heading
    assert "![" in section("analyses.md", "rollout") and "![" not in section("analyses.md", "rollout", images=False)
