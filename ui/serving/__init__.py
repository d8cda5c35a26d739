"""What runs around the page so that a visitor's first chart comes early: start-up machinery, apart from the page.

Modules: ``__main__`` (``python -m ui.serving``: ``streamlit run app.py`` with the helper and the warm-up started
first), ``coldstart`` (the helper process that serves the first visitors while the server loads the model),
``warmup`` (the default model loaded and traced in a background thread, once per process), ``prefetch`` (the
chart's code fetched in the browser while the model loads), ``runtime`` (the one Streamlit patch, and the operator's
settings from Streamlit secrets).

Nothing here imports the page's modules (``ui.*`` outside this package), except the launcher, which starts the page:
the warm-up receives what it loads and traces as functions (``ui.cache.start_warm_up``), and the prefetcher the
element it waits for. Nothing here imports TensorFlow on import: the helper and the warm-up import it in their own
process or thread.
"""
