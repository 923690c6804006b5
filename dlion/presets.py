"""Named combinations of stage strategies, for `preset: NAME` in a config and for `scripts/compare.py`.

A preset fills in `strategies`; whatever the config says under `strategies` itself wins, key by key (a stage's `kind`
given in the config replaces the preset's stage entirely; parameters given without a `kind` are merged into it).
"""
from __future__ import annotations

PRESETS: dict[str, dict[str, dict]] = {
    # the baseline: equal batches, dense synchronous averaging (BSP), no knowledge transfer
    "bsp": {"batching": {"kind": "fixed"}, "exchange": {"kind": "dense"}, "knowledge": {"kind": "none"}},
    # each DLion technique alone, for ablations
    "wdb": {"batching": {"kind": "weighted"}, "exchange": {"kind": "dense"}, "knowledge": {"kind": "none"}},
    "pge": {"batching": {"kind": "fixed"}, "exchange": {"kind": "prioritized"}, "knowledge": {"kind": "none"}},
    "dkt": {"batching": {"kind": "fixed"}, "exchange": {"kind": "dense"}, "knowledge": {"kind": "dkt"}},
    # DLion: weighted dynamic batching + per-link prioritized gradient exchange + direct knowledge transfer
    "dlion": {"batching": {"kind": "weighted"}, "exchange": {"kind": "prioritized"}, "knowledge": {"kind": "dkt"}},
}


def with_preset(strategies, preset: str) -> dict:
    """The `strategies` mapping of a config with `preset`'s stages filled in underneath it."""
    merged = {}
    given = strategies if isinstance(strategies, dict) else {}
    for stage, base in PRESETS[preset].items():
        own = given.get(stage)
        if own is None:
            merged[stage] = dict(base)
        elif isinstance(own, dict) and "kind" not in own:
            merged[stage] = {**base, **own}
        else:
            merged[stage] = own
    return {**given, **merged}
