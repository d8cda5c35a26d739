"""What runs around the page so that a visitor's first chart comes early: start-up machinery, apart from the page.

Modules: ``__main__`` (``python -m ui.serving``: ``streamlit run app.py`` with the warm-up started first;
``--keep-examples`` writes the examples' traces to disk), ``warmup`` (the default model loaded and traced in a
background thread, once per process), ``prefetch`` (the chart's code fetched in the browser while the model loads),
``runtime`` (the one Streamlit patch, and the operator's settings from Streamlit secrets). The first visitor's
default page needs no model at all: its card and trace come from disk (``ui.cache.examples``,
``encoder.trace_cache``).

Nothing here imports the page's modules (``ui.*`` outside this package), except the launcher, which starts the page:
the warm-up receives what it loads and traces as functions (``ui.cache.start_warm_up``), and the prefetcher the
element it waits for. Nothing here imports TensorFlow on import: the warm-up imports it in its own thread.
"""
