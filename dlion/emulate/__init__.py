"""Micro-cloud emulation: per-peer CPU capacity and per-link bandwidth/latency from the config, changing over time.

Two methods: `real` (network namespaces, tc, cgroups; set up around the peers by the launcher or `dlion emulate`) and
`fallback` (inside each peer: link shaping in the transport, compute duty-cycling). `auto` picks real where the machine
allows it.
"""


class EmulationError(RuntimeError):
    """The requested emulation cannot be set up on this machine (the message says why)."""
