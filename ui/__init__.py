"""Streamlit pieces of the app: cached work (``cache``), downloads, and the Analysis and Compare tabs.

Each ``*_ui()`` function only draws widgets and figures; numbers come from ``encoder/`` and figures from ``viz/``.
"""
