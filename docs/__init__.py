"""The documentation pages (Markdown, one per topic) and the code that reads or writes them: ``pages`` (a section
of a page, for the app's "more" panels), ``tables`` (``python -m docs.tables``: the tables of views and analyses,
generated from the registry)."""
