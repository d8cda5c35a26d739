"""Shared test support: the one synthetic-trace factory and the tiny model folders every test module builds on."""
