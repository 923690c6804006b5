"""Simulation: every peer of a config in one process, in virtual time (`dlion simulate`; see `run` for the design)."""
