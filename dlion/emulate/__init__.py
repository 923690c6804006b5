"""Micro-cloud emulation: per-peer CPU capacity and per-link bandwidth/latency from the config, changing over time.

Two methods: `real` (network namespaces, tc and cgroups, set up around the peers by the launcher or `dlion emulate`:
`real.py`) and `fallback` (no privileges: each peer shapes its links in its transport). Under both, each peer paces
its own compute (`pacing.py`, `turns.py`). What a peer emulates itself is attached to it from outside through its two
hooks, a step clock and a link policy (`fallback.for_peer`); the training code never imports this package. `auto`
picks real where the machine allows it.
"""


class EmulationError(RuntimeError):
    """The requested emulation cannot be set up on this machine (the message says why)."""
