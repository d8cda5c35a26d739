"""``python -m ui.serving [streamlit options]``: ``streamlit run app.py [options]`` with the default model loading
from the process's first moment in the cold-start helper process (``ui.serving.coldstart``), while Streamlit starts
its server, and the server's own warm-up thread (``ui.serving.warmup``). Plain ``streamlit run app.py`` works too;
``app.main()`` starts the warm-up when the first visitor arrives.

The launcher is the top of the stack: it imports the page (``ui.views``, ``ui.cache``) to start it. Its imports sit
in ``main`` in the order that makes the first chart early: the helper is spawned before anything heavy is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent.parent / "app.py"


def main(argv: list[str]) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from encoder.settings import settings
    from ui.serving import coldstart

    if settings().warm_up:
        coldstart.spawn()  # first of all: it loads the default model on the other core while the server starts
    from streamlit.web import cli

    import ui.views  # noqa: F401 - the page's modules (Streamlit's too), here: never imported by two threads at once
    from ui.cache import start_warm_up

    start_warm_up()
    sys.argv = ["streamlit", "run", str(APP), *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
