"""The Streamlit app's pieces; ``app.py`` is ``main()`` and the sidebar, everything in the main area is here.

Rules: ``*_ui()`` functions only draw widgets and figures and return values; numbers come from ``encoder/`` and
``analysis/`` (through ``cache``, which bounds what it keeps), figures from ``viz/``, and what exists (tabs,
analyses, their settings) from ``viz.registry``, so nothing here names a view or an analysis. Only our own errors
(``HeadlightError``) are caught and shown as messages; anything else is a bug and surfaces as one.

Modules: ``views`` (the tabs fragment), ``controls`` (shared controls -> ``ViewSettings``; one widget per
``Option``), ``clicks`` (chart clicks -> controls, from the figure's click spec), ``scrub`` (the in-figure head
slider: its steps sent once per session; its release -> controls), ``charts`` (one chart + its downloads),
``analysis`` and ``compare`` (the two special tabs), ``cache``, ``downloads`` (the trace's files), ``runtime`` (the
one Streamlit patch), ``warmup`` (the default model loaded and traced in the background), ``coldstart`` (the helper
process that serves the first visitors while the server loads the model), ``prefetch`` (the chart's code fetched in
the browser while the model loads), ``serve`` (``python -m ui.serve``: ``streamlit run app.py`` with the helper and
the warm-up from the start), ``inputs`` (the page's default input).
"""
