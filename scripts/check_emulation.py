#!/usr/bin/env python3
"""Does the emulation deliver what a scenario configures? Configured versus measured, per peer and per link.

    python3 scripts/check_emulation.py configs/scenarios/hetero-4.yaml [--method real|fallback] [--set KEY=VALUE]

The scenario's emulation is set up exactly as `dlion run` sets it up (`--method` forces one), and one probe process
per peer runs where a peer would run (its namespace and CPU cgroup under the real method, with the in-process shaping
and throttling under the fallback). All probes then, together:
1. compute gradients of the scenario's model for `--seconds`: a peer's CPU share is its rate relative to an
   unthrottled run of the same workload alone (measured first), times its TensorFlow threads;
2. one directed link at a time, in fixed time slots: the sender pushes a burst of messages through dlion's transport
   (its throughput, as the receiver sees it) and then pings the receiver (round-trip time, against the sum of the two
   directions' configured latencies).
Throughput counts message payload (TCP and ZeroMQ headers come on top, a few percent). The last line is a JSON object
with the worst relative errors of CPU shares, bandwidths and latencies, and the method in force.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion.config import Emulation  # noqa: E402

BURST_MESSAGES = 12  # below the transport's send high-water mark (16): a longer burst fails with EAGAIN
PINGS = 7
SLOT_S = 4.0
STARTUP_S = 25.0  # probes import TensorFlow (slowly under small CPU quotas) before the common start time


def message_bytes(bandwidth_bps: float) -> int:
    """Burst message size: ~80 ms on the wire at the configured rate, within [16 KiB, 1 MiB]."""
    return int(min(1 << 20, max(16 << 10, bandwidth_bps * 0.08 / 8)))


def links_of(cfg) -> list[tuple[int, int]]:
    return [(s, d) for s in cfg.peer_ids for d in cfg.peer_ids if s != d]


# ---- probe: runs where a peer would run ------------------------------------------------------------------------------

def probe(args) -> None:
    import numpy as np

    from dlion import data, trainer
    from dlion.emulate import fallback
    from dlion.peer import max_message_bytes
    from dlion.transport import WireLimits, ZmqTransport

    cfg = configmod.load(args.config)
    spec = cfg.peer(args.id)
    trainer.configure_threads(spec.tf_threads)
    tr = trainer.Trainer(cfg.training.model, seed=cfg.seed)
    ds = data.synthetic(n_train=512, n_test=10, seed=1)
    batch = max(1, cfg.training.global_batch // len(cfg.peers))
    x, y = ds.x_train[:batch], ds.y_train[:batch]
    tr.gradients(x, y)  # warm up outside the measurement
    result: dict = {"id": args.id}
    if args.reference:
        result["rate"] = _compute(tr, x, y, None, time.time() + 0.5, args.seconds)
        Path(args.out).write_text(json.dumps(result))
        return
    ids = cfg.peer_ids
    limits = WireLimits(frozenset(ids), max_message_bytes(1 << 18))
    # each slot waits for its one partner: never stop waiting for a peer after missed takes (suspicion)
    transport = ZmqTransport(args.id, {p.id: (p.address, p.port) for p in cfg.peers}, limits, suspect_after=10**9)
    transport.start()
    emulation = fallback.in_process(cfg, args.id, transport)
    if emulation:
        emulation.start()
    try:
        transport.wait_for_peers(STARTUP_S * 2)
        result["rate"] = _compute(tr, x, y, emulation, args.t0, args.seconds)
        result["links"] = _links(cfg, transport, args.t0 + args.seconds + 1.0, np)
    finally:
        transport.close()
    Path(args.out).write_text(json.dumps(result))


def _compute(tr, x, y, emulation, t0: float, seconds: float) -> float:
    """Gradient samples per second between t0 and t0 + seconds (throttled like a peer under the fallback)."""
    while time.time() < t0:
        time.sleep(0.01)
    samples, end = 0, t0 + seconds
    while time.time() < end:
        start, cpu = time.monotonic(), time.process_time()
        tr.gradients(x, y)
        if emulation:
            emulation.throttle(time.process_time() - cpu, time.monotonic() - start)
        samples += len(x)
    return samples / (time.time() - t0)


def _links(cfg, transport, t_links: float, np) -> dict:
    """Each directed link in its slot: a burst from the sender, then pings answered by the receiver."""
    me, out = transport.peer_id, {}
    for slot, (src, dst) in enumerate(links_of(cfg)):
        start = t_links + slot * SLOT_S
        base = slot * 1000
        if me not in (src, dst):
            continue
        while time.time() < start:
            time.sleep(0.005)
        if me == src:
            payload = np.zeros(message_bytes(cfg.link(src, dst).bandwidth) // 4, np.float32)
            for i in range(BURST_MESSAGES):
                transport.send(dst, "grad", base + i, {"g": payload})
            got = transport.mailbox.take("eval", base, [dst], time.monotonic() + SLOT_S)  # burst received
            rtts = []
            for i in range(PINGS):
                sent = time.monotonic()
                transport.send(dst, "report", base + i)
                if transport.mailbox.take("score", base + i, [dst], sent + 1.0):
                    rtts.append(time.monotonic() - sent)
            out[f"{src}->{dst}"] = {"rtt_s": statistics.median(rtts) if rtts else None,
                                    "burst_acknowledged": bool(got),
                                    "send_failed": transport.stats()[dst].send_failed}
        else:
            arrivals, nbytes = [], 0
            for i in range(BURST_MESSAGES):
                msg = transport.mailbox.take("grad", base + i, [src], time.monotonic() + SLOT_S).get(src)
                if msg is None:
                    break
                arrivals.append(msg.received_at)
                nbytes = msg.nbytes
            transport.send(src, "eval", base)
            for i in range(PINGS):
                if transport.mailbox.take("report", base + i, [src], time.monotonic() + 1.0):
                    transport.send(src, "score", base + i)
            rate = ((len(arrivals) - 1) * nbytes * 8 / (arrivals[-1] - arrivals[0])) if len(arrivals) > 2 else None
            out[f"{src}->{dst}"] = {"throughput_bps": rate, "messages": len(arrivals)}
    return out


# ---- driver ------------------------------------------------------------------------------------------------------------

def _probe_cmd(config_path: Path, peer_id: int, out: Path, seconds: float, t0: float = 0.0,
               reference: bool = False) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(config_path), "--probe", "--id",
           str(peer_id), "--out", str(out), "--seconds", str(seconds), "--t0", str(t0)]
    return cmd + (["--reference"] if reference else [])


def reference_rates(cfg, config_path: Path, tmp: Path, seconds: float) -> dict[int, float]:
    """Unthrottled gradient rate, alone on the machine, per distinct TensorFlow thread count."""
    rates = {}
    for peer in cfg.peers:
        if peer.tf_threads not in rates:
            out = tmp / f"reference-{peer.tf_threads}.json"
            subprocess.run(_probe_cmd(config_path, peer.id, out, seconds, reference=True), check=True)
            rates[peer.tf_threads] = json.loads(out.read_text())["rate"]
    return rates


def rel_err(measured, configured) -> float | None:
    return None if measured is None else abs(measured - configured) / configured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?")
    parser.add_argument("--method", choices=["real", "fallback"], help="force an emulation method")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the compute measurement")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--id", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args)
        return 0

    from dlion import launch
    cfg = configmod.load(args.config, args.set)
    if args.method:
        cfg = dataclasses.replace(cfg, emulation=Emulation(args.method))
    cfg, real = launch.resolve_emulation(cfg)
    procs: dict[int, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        plain_path = tmp / "plain.yaml"
        plain_path.write_text(yaml.safe_dump(configmod.to_dict(cfg)))
        references = reference_rates(cfg, plain_path, tmp, args.seconds)
        try:
            if real:
                cfg = launch.bring_up(cfg, real)
            config_path = tmp / "config.yaml"
            config_path.write_text(yaml.safe_dump(configmod.to_dict(cfg)))
            t0 = time.time() + STARTUP_S
            for peer in cfg.peers:
                cmd = _probe_cmd(config_path, peer.id, tmp / f"probe-{peer.id}.json", args.seconds, t0)
                procs[peer.id] = subprocess.Popen(real.wrap(peer.id, cmd) if real else cmd)
                if real:
                    real.attach(peer.id, procs[peer.id].pid)
            deadline = t0 + args.seconds + 1.0 + len(links_of(cfg)) * SLOT_S + 60
            for p in procs.values():
                p.wait(timeout=max(1.0, deadline - time.time()))
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.kill()
            if real:
                real.down()
        results = {pid: json.loads((tmp / f"probe-{pid}.json").read_text()) for pid in cfg.peer_ids}
    return report(cfg, references, results)


def report(cfg, references: dict[int, float], results: dict[int, dict]) -> int:
    cpu_errs, bw_errs, lat_errs = [], [], []
    print(f"{'peer':>4} {'cores':>6} {'measured':>9} {'error':>7}")
    for peer in cfg.peers:
        share = results[peer.id]["rate"] / references[peer.tf_threads] * peer.tf_threads
        expected = min(peer.cores, peer.tf_threads)
        cpu_errs.append(rel_err(share, expected))
        print(f"{peer.id:>4} {expected:>6.2f} {share:>9.3f} {cpu_errs[-1]:>7.1%}")
    print(f"{'link':>6} {'Mbit/s':>8} {'measured':>9} {'error':>7} {'RTT ms':>7} {'measured':>9} {'error':>7}")
    for src, dst in links_of(cfg):
        key = f"{src}->{dst}"
        configured_bw = cfg.link(src, dst).bandwidth
        configured_rtt = cfg.link(src, dst).latency + cfg.link(dst, src).latency
        bw = results[dst]["links"][key]["throughput_bps"]
        rtt = results[src]["links"][key]["rtt_s"]
        bw_errs.append(rel_err(bw, configured_bw))
        lat_errs.append(rel_err(rtt, configured_rtt) if configured_rtt > 0 else None)
        show = (lambda v, scale: f"{v * scale:9.2f}" if v is not None else f"{'-':>9}")
        show_err = (lambda e: f"{e:7.1%}" if e is not None else f"{'-':>7}")
        print(f"{key:>6} {configured_bw / 1e6:8.1f} {show(bw, 1e-6)} {show_err(bw_errs[-1])} "
              f"{configured_rtt * 1e3:7.1f} {show(rtt, 1e3)} {show_err(lat_errs[-1])}")
        if bw is None or rtt is None:
            print(f"       not measured: receiver saw {results[dst]['links'][key]}, sender saw "
                  f"{results[src]['links'][key]}")

    def worst(errs):
        return None if not errs or any(e is None for e in errs) else round(max(errs), 4)

    print(json.dumps({"method": cfg.emulation.method, "cpu_share_max_rel_err": worst(cpu_errs),
                      "bandwidth_max_rel_err": worst(bw_errs),
                      "latency_max_rel_err": worst([e for e in lat_errs if e is not None] or [None])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
