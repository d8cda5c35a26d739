"""``python -m ui.serving [streamlit options]``: ``streamlit run app.py [options]`` with the server's warm-up
(``ui.serving.warmup``) started before the server, and the page's modules imported first. Plain ``streamlit run
app.py`` works too; ``app.main()`` starts the warm-up when the first visitor arrives. Either way, a first visitor's
default page comes from the examples kept on disk (``ui.cache.examples``) while the model loads.

``python -m ui.serving --keep-examples`` loads the default model, writes its card and its traces of the built-in
examples to disk (those missing or invalid), and exits (``make run`` does this before starting the server, when the
encoder's code changed; the warm-up does the same after its first trace).

The launcher is the top of the stack: it imports the page (``ui.views``, ``ui.cache``) to start it.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

APP = Path(__file__).resolve().parent.parent.parent / "app.py"
KEEP_EXAMPLES = "--keep-examples"


def build_examples() -> int:
    """``--keep-examples``: write the default model's examples to disk; prints what it did. Returns the exit
    status: 1 when the default model cannot be loaded (the page will say why)."""
    from encoder.errors import HeadlightError
    from encoder.settings import settings
    from encoder.sources import DEFAULT_SOURCE, load_source
    from ui.cache import keep_examples

    folder = settings().examples_cache
    if folder is None:
        print("HEADLIGHT_EXAMPLES_CACHE is off: no examples kept")
        return 0
    try:
        written = keep_examples(load_source(DEFAULT_SOURCE))
    except HeadlightError as error:
        print(f"the examples were not kept: {error}", file=sys.stderr)
        return 1
    print(f"{written} example traces written to {folder}")
    return 0


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if argv == [KEEP_EXAMPLES]:
        return build_examples()
    from streamlit.web import cli

    import ui.views  # noqa: F401 - the page's modules (Streamlit's too), here: never imported by two threads at once
    from ui.cache import examples, start_warm_up
    from ui.serving.nodelay import watch_listener

    start_warm_up()
    watch_listener()  # Nagle off from the first connection (ui.serving.nodelay)
    # The default model's files checked against their checksums (~0.08 s, hashing: the GIL let go) while the server
    # starts and the first browser loads the page, not in the first page's script, which reads the examples.
    threading.Thread(target=examples, name="headlight-examples", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *argv]
    cli.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
