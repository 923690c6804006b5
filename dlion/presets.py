"""Named combinations of stage strategies, for `preset: NAME` in a config and for `scripts/compare.py`.

A preset fills in `strategies`, for the gossip presets the `topology` they are defined on, and for `full` and
`local-sgd` and `gaia` their `rounds` (local steps per round, outer step); whatever the config says itself wins: a `topology` block replaces the preset's
graph, `rounds` keys replace the preset's key by key, and under `strategies` a stage's `kind` given in the config
replaces the preset's stage entirely, while parameters given without a `kind` are merged into it, unless the
preset turns that stage off (kind none): then they have nothing to tune and are left out. So one scenario can tune,
say, the exchange deadline and still run every preset, the gossip presets without a gradient exchange included.
"""
from __future__ import annotations

NO_GOSSIP = {"gossip": {"kind": "none"}}
BASELINE = {"batching": {"kind": "fixed"}, "exchange": {"kind": "dense"}, "knowledge": {"kind": "none"}, **NO_GOSSIP}
# the gossip presets train each peer on its own gradient and mix models (push-sum over a time-varying directed graph,
# or AD-PSGD's pairwise averages)
GOSSIP = {"batching": {"kind": "fixed"}, "exchange": {"kind": "none"}, "knowledge": {"kind": "none"}}
ONE_PEER_EXPONENTIAL = {"kind": "one-peer-exponential"}
FULL_MESH = {"kind": "full"}
FULL_LOCAL_STEPS = 32  # optimizer steps per round: measured 8, 16 and 32 on hetero-4 and the quickstart (benchmarks)
FULL_MIN_STEP_BATCH = 32  # a slow peer's small share goes in fewer steps of 32: against 8, the same time to 85% on
# hetero-4 and 0.6 point more final accuracy, the worst peer closer to the mean (docs/benchmarks.md)
FULL_STALENESS = 2  # rounds of 32 steps a neighbour may lag: with 8, slow peers' models drifted (worst peer 0.75)
LOCAL_SGD_ROUNDS = {"local_steps": 32, "outer_learning_rate": 0.7, "outer_momentum": 0.9}  # DiLoCo's outer step
# the local steps' learning rate against the training's: four peers' averaged change of 32 steps is shorter than one
# model's, their batches' noise cancelling; 1.5x reached 85% 11-20% sooner on hetero-4 and the quickstart (emulated
# and simulated), 2x less so in the simulator, and left the skewed scenario's end as it was (docs/benchmarks.md)
FULL_LEARNING_RATE_SCALE = 1.5
FULL_GOSSIP_EVERY = 1  # every 4 rounds gave more rounds per second but needed more rounds (docs/benchmarks.md)
# share of the model per gossip message: a round of 32 local steps moves the model as far as 32 single steps, and at
# Sparse-Push's 1% an entry's public copy lags a whole run, so mixing pulled every model back towards old values;
# 10% was faster to the target than 1% and 5% on hetero-4, wan-8 and the skewed scenario (docs/benchmarks.md)
FULL_GOSSIP_FRACTION = 0.1

# the four-part peer: rounds of 32 local steps on shares of the global batch weighted by the peers' rates, the
# round's change of parameters exchanged by prioritized top-k on every link every round (each link carries what
# its budget allows), Sparse-Push gossip on the time-varying graph, direct knowledge transfer over links fast
# enough for a model; rounds overlap: a neighbour may lag 2 rounds before anyone waits for it; a round's
# messages to a peer leave together, one message per link and round; at the end, the peers average their models
# and, where their labels are spread unevenly, refit the last layer on their shared class statistics
FULL = {"strategies": {"batching": {"kind": "weighted"},
                       "exchange": {"kind": "prioritized", "graph": "full", "staleness": FULL_STALENESS},
                       "knowledge": {"kind": "dkt"},
                       "gossip": {"kind": "sparse-push", "staleness": FULL_STALENESS, "every": FULL_GOSSIP_EVERY,
                                  "fraction": FULL_GOSSIP_FRACTION}},
        "topology": ONE_PEER_EXPONENTIAL, "rounds": {"local_steps": FULL_LOCAL_STEPS, "one_message": True,
                                                    "min_step_batch": FULL_MIN_STEP_BATCH, "final_average": True,
                                                    "learning_rate_scale": FULL_LEARNING_RATE_SCALE,
                                                    "classifier_refit": "when-skewed"}}

PRESETS: dict[str, dict] = {
    # the reference without collaboration: each peer trains alone on its own data, nothing sent but evaluations
    "local": {"strategies": {**GOSSIP, **NO_GOSSIP}},
    # the baseline: equal batches, dense synchronous averaging (BSP), no knowledge transfer, no gossip
    "bsp": {"strategies": BASELINE},
    # each DLion technique alone, for ablations
    "wdb": {"strategies": {**BASELINE, "batching": {"kind": "weighted"}}},
    "pge": {"strategies": {**BASELINE, "exchange": {"kind": "prioritized"}}},
    "dkt": {"strategies": {**BASELINE, "knowledge": {"kind": "dkt"}}},
    # DLion: weighted dynamic batching + per-link prioritized gradient exchange + direct knowledge transfer
    "dlion": {"strategies": {"batching": {"kind": "weighted"}, "exchange": {"kind": "prioritized"},
                             "knowledge": {"kind": "dkt"}, **NO_GOSSIP}},
    # DiLoCo-style local SGD (a baseline of the field): H local steps on equal shares, the peers' changes of
    # parameters averaged densely in lockstep, applied by an outer SGD step with Nesterov momentum
    "local-sgd": {"strategies": BASELINE, "rounds": LOCAL_SGD_ROUNDS},
    # Gaia (a baseline of the field): per link, only the accumulated updates significant against their parameters;
    # rounds of 4 local steps, so that what is weighed against a parameter is a change of it (Gaia's update)
    "gaia": {"strategies": {**BASELINE, "exchange": {"kind": "gaia"}}, "rounds": {"local_steps": 4}},
    # Ako (a baseline of the field): per link, one of 4 partitions of the accumulated gradient each round, in turn
    "ako": {"strategies": {**BASELINE, "exchange": {"kind": "ako"}}},
    # stochastic gradient push: dense push-sum gossip of the model, no gradient exchange
    "sgp": {"strategies": {**GOSSIP, "gossip": {"kind": "push-sum"}}, "topology": ONE_PEER_EXPONENTIAL},
    # Sparse-Push: top-k updates of per-link public copies instead of the whole model
    "sparse-push": {"strategies": {**GOSSIP, "gossip": {"kind": "sparse-push"}}, "topology": ONE_PEER_EXPONENTIAL},
    # Sparse-Push with skew compensation, for label-skewed (non-IID) partitions
    "sparse-push-skew": {"strategies": {**GOSSIP, "gossip": {"kind": "sparse-push", "skew_compensation": "logit-adjustment"}},
                         "topology": ONE_PEER_EXPONENTIAL},
    # AD-PSGD (a baseline of the field): after every step, a pairwise average with one random peer (any other: the
    # full mesh), asynchronous, nobody waits; no gradient exchange
    "ad-psgd": {"strategies": {**GOSSIP, "gossip": {"kind": "ad-psgd"}}, "topology": FULL_MESH},
    "full": FULL,
    # the four-part peer with skew compensation, for label-skewed (non-IID) data: every peer's update weighs the same
    # in the exchange's mean, not its batch, which weighted batching makes largest on the fastest peers
    "full-skew": {**FULL, "rounds": {**FULL["rounds"], "update_weights": "uniform"}},
}


def with_preset(raw: dict, preset: str) -> dict:
    """A config mapping with `preset`'s strategies filled in underneath its own, its topology where it has none, and
    its rounds underneath the config's own."""
    merged = {}
    given = raw.get("strategies") if isinstance(raw.get("strategies"), dict) else {}
    for stage, base in PRESETS[preset]["strategies"].items():
        own = given.get(stage)
        if own is None or (isinstance(own, dict) and "kind" not in own and base["kind"] == "none"):
            merged[stage] = dict(base)
        elif isinstance(own, dict) and "kind" not in own:
            merged[stage] = {**base, **own}
        else:
            merged[stage] = own
    filled = {**raw, "strategies": {**given, **merged}}
    if raw.get("topology") is None and "topology" in PRESETS[preset]:
        filled["topology"] = dict(PRESETS[preset]["topology"])
    if "rounds" in PRESETS[preset]:
        own = raw.get("rounds")
        filled["rounds"] = {**PRESETS[preset]["rounds"], **(own or {})} if isinstance(own, dict) or own is None else own
    return filled
