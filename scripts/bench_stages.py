#!/usr/bin/env python3
"""CPU cost per peer and round of the exchange and gossip stages alone, on the quickstart CNN's vector size.

    python3 scripts/bench_stages.py [--peers 4] [--size 225034] [--rounds 40] [--staleness 2]

Every peer runs in this process over the in-process transport (which encodes, checks and decodes every message as
TCP peers do), one after another, with the `full` preset's stages: prioritized exchange on every link (a 10 Mbit/s
link budget of 20 ms a round) and Sparse-Push on the one-peer exponential graph. No TensorFlow. The last line is a
JSON object with the CPU milliseconds per peer-round of each stage (a receiver's decoding counts to its sender here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlion.exchange import PrioritizedExchange  # noqa: E402
from dlion.gossip import SparsePush  # noqa: E402
from dlion.stages import StageContext  # noqa: E402
from dlion.topology import Topology, TopologySpec  # noqa: E402
from dlion.transport import InprocHub, InprocTransport, WireLimits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--size", type=int, default=225_034)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--staleness", type=int, default=2)
    args = parser.parse_args()
    ids = list(range(args.peers))
    hub, limits = InprocHub(), WireLimits(frozenset(ids), 8 * args.size + (1 << 20))
    transports = {p: InprocTransport(p, hub, limits) for p in ids}
    for t in transports.values():
        t.start()
    full, gossip_graph = Topology(TopologySpec("full"), ids), Topology(TopologySpec("one-peer-exponential"), ids)

    def ctx(p, graph):
        return StageContext(p, tuple(ids), transports[p], graph, 128, dict.fromkeys(ids, 1.0),
                            {q: 1e7 for q in ids if q != p})

    exchange = {p: PrioritizedExchange(PrioritizedExchange.Params(staleness=args.staleness, graph="full",
                                                                  time_budget_s=0.02, deadline_s=0.001),
                                       ctx(p, full)) for p in ids}
    gossip = {p: SparsePush(SparsePush.Params(staleness=args.staleness, deadline_s=0.001), ctx(p, gossip_graph))
              for p in ids}
    rng = np.random.default_rng(0)
    grads = rng.standard_normal(args.size).astype(np.float32)
    params = {p: rng.standard_normal(args.size).astype(np.float32) for p in ids}
    exchange_s = gossip_s = 0.0
    for r in range(args.rounds):
        for p in ids:
            t0 = time.process_time()
            exchange[p].exchange(r, grads, 32, 0.02)
            t1 = time.process_time()
            params[p] = gossip[p].step(r, params[p]).params
            exchange_s += t1 - t0
            gossip_s += time.process_time() - t1
    for t in transports.values():
        t.close()
    n = args.rounds * args.peers
    print(json.dumps({"peers": args.peers, "size": args.size, "exchange_ms_per_round": round(exchange_s / n * 1e3, 3),
                      "gossip_ms_per_round": round(gossip_s / n * 1e3, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
