"""The Streamlit app's pieces; ``app.py`` is ``main()`` and the sidebar, everything in the main area is here.

Rules: ``*_ui()`` functions only draw widgets and figures and return values; numbers come from ``encoder/`` and
``analysis/`` (through ``cache``, which bounds what it keeps), figures from ``viz/``, and what exists (tabs,
analyses, their settings) from ``viz.registry``, so nothing here names a view or an analysis. Only our own errors
(``HeadlightError``) are caught and shown as messages; anything else is a bug and surfaces as one.

Modules: ``views`` (the tabs fragment), ``controls`` (shared controls -> ``ViewSettings``; one widget per
``Option``), ``clicks`` (chart clicks -> controls, from the figure's click spec), ``scrub`` (the in-figure head
slider: its steps sent once per session; its release -> controls), ``charts`` (one chart + its downloads),
``analysis`` and ``compare`` (the two special tabs), ``cache`` (everything computed, per process) and ``budget``
(its byte budget), ``downloads`` (the trace's files), ``inputs`` (the page's default input), ``text`` (visitor text
shown as plain text). ``serving/`` is the start-up machinery around the page (``python -m ui.serving``, the
warm-up, the prefetcher, the one Streamlit patch): the page imports it, never the reverse.
"""
