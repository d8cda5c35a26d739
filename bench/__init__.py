"""`make bench`: latency, payload size and memory tables (speed targets live here, never in unit tests)."""
