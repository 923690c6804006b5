#!/usr/bin/env python3
"""Round trip of a small message between two `ZmqTransport`s over loopback, with an emulated one-way latency on both
directions (the transport's holdback, as the fallback and the real method on kernels without netem use it), against
no latency at all: what the stack adds to an emulated link's round trip.

    python3 scripts/bench_latency.py [--latency-ms 6] [--pings 60] [--repeats 2]

The last line is a JSON object with the median round trips and the overhead over the configured round trip.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlion.emulate.links import ShapedLinks  # noqa: E402
from dlion.transport import WireLimits, ZmqTransport  # noqa: E402

BASE_PORT = 48100


def median_rtt(port: int, latency_s: float, pings: int) -> float:
    endpoints = {0: ("127.0.0.1", port), 1: ("127.0.0.1", port + 1)}
    limits = WireLimits(frozenset(endpoints), 1 << 20)
    a, b = ZmqTransport(0, endpoints, limits), ZmqTransport(1, endpoints, limits)
    a.link_policy, b.link_policy = ShapedLinks(), ShapedLinks()
    a.start()
    b.start()
    try:
        a.wait_for_peers(10)
        b.wait_for_peers(10)
        a.link_policy.set(1, None, latency_s)
        b.link_policy.set(0, None, latency_s)
        rtts = []
        for i in range(pings):
            sent = time.monotonic()
            a.send(1, "probe", i)
            b.mailbox.take("probe", i, [0], time.monotonic() + 2)
            b.send(0, "ack", i)
            a.mailbox.take("ack", i, [1], time.monotonic() + 2)
            rtts.append(time.monotonic() - sent)
            time.sleep(0.013)  # not in step with the poll's millisecond ticks
        return statistics.median(rtts[5:])  # the first ones pay for connection warm-up
    finally:
        a.close()
        b.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=6.0, help="one-way latency of each direction")
    parser.add_argument("--pings", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    shaped, bare = [], []
    for r in range(args.repeats):
        shaped.append(median_rtt(BASE_PORT + 10 * r, latency, args.pings))
        bare.append(median_rtt(BASE_PORT + 10 * r + 5, 0.0, args.pings))
        print(f"repeat {r + 1}: configured {2 * latency * 1e3:.1f} ms, round trip {shaped[-1] * 1e3:.2f} ms "
              f"(with no latency: {bare[-1] * 1e3:.2f} ms)")
    rtt = statistics.median(shaped)
    print(json.dumps({"configured_rtt_ms": round(2 * latency * 1e3, 3), "rtt_ms": round(rtt * 1e3, 3),
                      "rtt_no_latency_ms": round(statistics.median(bare) * 1e3, 3),
                      "overhead_ms": round((rtt - 2 * latency) * 1e3, 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
