"""What AppTest-driven tests share about the page."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest


def open_downloads(at: AppTest) -> AppTest:
    """Every Download menu on the page opened (as a visitor's click on each does: a menu's buttons are drawn only
    while it is open, ``ui.downloads.download_menu``), then the page run again."""
    def blocks(node):
        yield node
        for child in getattr(node, "children", {}).values():
            yield from blocks(child)

    menus = [node.proto.popover.id for node in blocks(at._tree) if getattr(node, "type", None) == "popover"]
    assert menus, "no Download menu on the page"
    for menu in menus:
        at.session_state[menu.split("-", 2)[2]] = True  # a widget's id ends with its key
    return at.run()
