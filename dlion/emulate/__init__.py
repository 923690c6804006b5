"""Micro-cloud emulation: per-peer CPU capacity and per-link bandwidth/latency from the config, changing over time."""
