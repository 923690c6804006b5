#!/usr/bin/env python3
"""Does the emulation deliver what a scenario configures? Configured versus measured, per peer and per link.

    python3 scripts/check_emulation.py configs/scenarios/hetero-4.yaml [--method real|fallback] [--set KEY=VALUE]

The scenario's emulation is set up exactly as `dlion run` sets it up (`--method` forces one), and one probe process
per peer runs where a peer would run (its namespace and CPU cgroup under the real method, with the in-process shaping
under the fallback; compute paced in the probe under both). All probes then, together:
1. compute gradients of the scenario's model, back to back, for `--seconds`: a peer's CPU share is its rate relative
   to an unthrottled run of the same workload alone (measured first, on as many CPUs as it has TensorFlow threads,
   pinned as the emulation pins peers), times its TensorFlow threads. Paced peers
   compute in one-second bursts (`dlion.emulate.pacing`), so the window is long enough for a partial burst at either
   end to matter little;
2. one directed link at a time, in fixed time slots: the sender pushes a burst of messages through dlion's transport
   (its throughput, as the receiver sees it) and then pings the receiver (round-trip time, against the sum of the two
   directions' configured latencies).
Throughput counts message payload (TCP and ZeroMQ headers come on top, a few percent). The CPU time each probe used
per second is shown too: it is what the pacing holds, while the compute rate also pays for whatever slows a step
down on a shared machine (cold caches after a pause, other peers on the same CPU). The last line is a JSON object with
the worst relative errors of CPU shares (compute rate), CPU time, bandwidths and latencies, and the method in force.

A scenario with a `schedule` gets a timeline instead, over the first change + `--after` seconds: every probe computes
throughout (changes to its cores applied as a peer would see them), and the sender of every scheduled link change
streams messages to its receiver (a window of unacknowledged messages below the send high-water mark). Per peer and
per link it prints configured versus measured before and after each change and the lag: the time from the change to
the end of the first 1-second window from which every later window is within `--tolerance` of the new configured
value (CPU time per second for peers, payload throughput for links). The last line is a JSON object with every lag.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion import yamlio  # noqa: E402
from dlion.config import Emulation  # noqa: E402

PING_ROUNDS = 500  # a slot's pings: rounds above its burst's, below the next slot's (slots are 1000 apart)
BURST_MESSAGES = 12  # below the transport's send high-water mark (16): a longer burst fails with EAGAIN
STREAM_WINDOW = 6  # unacknowledged stream messages: 12 frames, below the high-water mark, which counts frames
STREAM_MESSAGE_BYTES = 128 << 10  # 10 ms at 100 Mbit/s, 105 ms at 10 Mbit/s: fine-grained for 1 s windows
STREAM_ACK_TIMEOUT_S = 2.0  # an unacknowledged window is sent again (go-back-N) after this long
WINDOW_S = 1.0
PINGS = 7
SLOT_S = 4.0
STARTUP_S = 25.0  # probes import TensorFlow (slowly under small CPU quotas) before the common start time


def message_bytes(bandwidth_bps: float) -> int:
    """Burst message size: ~80 ms on the wire at the configured rate, within [16 KiB, 1 MiB]."""
    return int(min(1 << 20, max(16 << 10, bandwidth_bps * 0.08 / 8)))


def links_of(cfg) -> list[tuple[int, int]]:
    return [(s, d) for s in cfg.peer_ids for d in cfg.peer_ids if s != d]


# ---- probe: runs where a peer would run ----------------------------------------------------------------------------

def probe(args) -> None:
    cfg = configmod.load(args.config)
    spec = cfg.peer(args.id)
    if args.reference:  # on CPUs of its own, as the emulation pins a peer (before TensorFlow starts any thread)
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:spec.tf_threads])

    import numpy as np

    from dlion import data, trainer
    from dlion.emulate import fallback, real
    from dlion.wiring import make_transport

    trainer.configure_threads(spec.tf_threads)
    tr = trainer.Trainer(cfg.training.model, seed=cfg.seed)
    ds = data.synthetic(n_train=512, n_test=10, seed=1)
    batch = max(1, cfg.training.global_batch // len(cfg.peers))
    x, y = ds.x_train[:batch], ds.y_train[:batch]
    tr.gradients(x, y)  # warm up outside the measurement
    real.enter_cgroup()  # as a peer does once it is built (under the real method)
    result: dict = {"id": args.id}
    if args.reference:
        result["rate"], _ = _compute(tr, x, y, None, time.time() + 0.5, args.seconds)
        Path(args.out).write_text(json.dumps(result))
        return
    emulation = fallback.for_peer(cfg, args.id, turns_dir=Path(args.out).parent)
    # each slot waits for its one partner: never stop waiting for a peer after missed takes (suspicion)
    transport = make_transport(cfg, args.id, 1 << 18, emulation and emulation.link_policy, suspect_after=10**9)
    transport.start()
    if emulation:
        emulation.start()
    try:
        transport.wait_for_peers(STARTUP_S * 2)
        if args.timeline:
            result.update(_timeline(cfg, tr, x, y, emulation, transport, args.t0, args.seconds, np))
        else:
            result["rate"], result["cpu"] = _compute(tr, x, y, emulation, args.t0, args.seconds)
            result["links"] = _links(cfg, transport, args.t0 + args.seconds + 1.0, np)
    finally:
        if emulation:
            emulation.close()
        transport.close()
    Path(args.out).write_text(json.dumps(result))


def _compute(tr, x, y, emulation, t0: float, seconds: float, steps: list | None = None) -> tuple[float, float]:
    """Gradient samples and CPU seconds per second between t0 and t0 + seconds, paced like a peer (under either
    method), with the schedule's changes applied as they fall due. `steps` collects (end, samples, cpu) per step."""
    while time.time() < t0:
        time.sleep(0.01)
    samples, end = 0, t0 + seconds
    cpu_start = cpu_last = time.process_time()
    while (now := time.time()) < end:
        if emulation:
            emulation.update(now - t0)
        with emulation.step() if emulation else contextlib.nullcontext():
            tr.gradients(x, y)
        samples += len(x)
        if steps is not None:  # the whole process's CPU time since the previous step, as a cgroup counts it
            steps.append((time.time() - t0, len(x), time.process_time() - cpu_last))
            cpu_last = time.process_time()
    wall = time.time() - t0
    return samples / wall, (time.process_time() - cpu_start) / wall


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
                transport.send(dst, "probe", base + i, {"payload": payload})
            got = transport.mailbox.take("ack", base, [dst], time.monotonic() + SLOT_S)  # burst received
            rtts = []
            for i in range(PINGS):
                sent = time.monotonic()
                transport.send(dst, "probe", base + PING_ROUNDS + i)
                if transport.mailbox.take("ack", base + PING_ROUNDS + i, [dst], sent + 1.0):
                    rtts.append(time.monotonic() - sent)
            out[f"{src}->{dst}"] = {"rtt_s": statistics.median(rtts) if rtts else None,
                                    "burst_acknowledged": bool(got),
                                    "send_failed": transport.stats()[dst].send_failed}
        else:
            arrivals, nbytes = [], 0
            for i in range(BURST_MESSAGES):
                msg = transport.mailbox.take("probe", base + i, [src], time.monotonic() + SLOT_S).get(src)
                if msg is None:
                    break
                arrivals.append(msg.received_at)
                nbytes = msg.nbytes
            transport.send(src, "ack", base)
            for i in range(PINGS):
                if transport.mailbox.take("probe", base + PING_ROUNDS + i, [src], time.monotonic() + 1.0):
                    transport.send(src, "ack", base + PING_ROUNDS + i)
            rate = ((len(arrivals) - 1) * nbytes * 8 / (arrivals[-1] - arrivals[0])) if len(arrivals) > 2 else None
            out[f"{src}->{dst}"] = {"throughput_bps": rate, "messages": len(arrivals)}
    return out


def scheduled_links(cfg) -> list[tuple[int, int]]:
    return sorted({(c.src, c.dst) for c in cfg.schedule if c.is_link})


def _timeline(cfg, tr, x, y, emulation, transport, t0: float, seconds: float, np) -> dict:
    """Compute throughout while streaming over every scheduled link this probe is an end of."""
    import threading

    streams, received = [], {}
    for src, dst in scheduled_links(cfg):
        if transport.peer_id == src:
            streams.append(threading.Thread(target=_stream_send, args=(transport, dst, t0, t0 + seconds, np)))
        elif transport.peer_id == dst:
            received[f"{src}->{dst}"] = arrivals = []
            streams.append(threading.Thread(target=_stream_receive, args=(transport, src, t0, t0 + seconds,
                                                                           arrivals)))
    for thread in streams:
        thread.start()
    steps: list = []
    _compute(tr, x, y, emulation, t0, seconds, steps)
    for thread in streams:
        thread.join()
    return {"steps": steps, "arrivals": received}


def _stream_send(transport, dst: int, t0: float, end: float, np) -> None:
    """Keep the link busy from t0 to `end`: at most STREAM_WINDOW messages sent and not yet acknowledged; a window
    left unacknowledged for STREAM_ACK_TIMEOUT_S (a message the transport could not queue) is sent again."""
    payload = np.zeros(STREAM_MESSAGE_BYTES // 4, np.float32)
    sent = acked = 0
    while time.time() < t0:
        time.sleep(0.005)
    while time.time() < end:
        if sent - acked < STREAM_WINDOW:
            transport.send(dst, "probe", sent, {"payload": payload})
            sent += 1
            continue
        # the newest acknowledgement of any unacknowledged message
        got = transport.mailbox.take("ack", sent - 1, [dst], time.monotonic() + STREAM_ACK_TIMEOUT_S,
                                     staleness=sent - 1 - acked).get(dst)
        if got is None:
            sent = acked
        else:
            acked = got.round + 1


def _stream_receive(transport, src: int, t0: float, end: float, arrivals: list) -> None:
    """Acknowledge every stream message, noting (arrival time since t0, bytes), until the stream stops."""
    while time.time() < t0:
        time.sleep(0.005)
    i = 0
    while (msg := transport.mailbox.take("probe", i, [src], time.monotonic() + end - time.time() + 1.0).get(src)):
        arrivals.append((msg.received_at - t0, msg.nbytes))
        transport.send(src, "ack", i)
        i += 1


# ---- driver --------------------------------------------------------------------------------------------------------

def _probe_cmd(config_path: Path, peer_id: int, out: Path, seconds: float, t0: float = 0.0,
               reference: bool = False, timeline: bool = False) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(config_path), "--probe", "--id",
           str(peer_id), "--out", str(out), "--seconds", str(seconds), "--t0", str(t0)]
    return cmd + (["--reference"] if reference else []) + (["--timeline"] if timeline else [])


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
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the compute measurement")
    parser.add_argument("--after", type=float, default=8.0,
                        help="timeline: seconds measured after the last scheduled change")
    parser.add_argument("--tolerance", type=float,
                        help="timeline: relative band around the new value that counts as followed (default: 0.15 "
                             "under real, 0.20 under fallback, the issue's bars)")
    parser.add_argument("--series", metavar="FILE",
                        help="timeline: also write every 1-second window (end, value) per peer and link as JSON")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--timeline", action="store_true", help=argparse.SUPPRESS)
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
    timeline = bool(cfg.schedule)
    seconds = max(c.at for c in cfg.schedule) + args.after if timeline else args.seconds
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = launch.with_keys(cfg, tmp)  # the probes' links are authenticated as the peers' are
        plain_path = tmp / "plain.yaml"
        plain_path.write_text(yamlio.dump(configmod.to_dict(cfg)))
        references = reference_rates(cfg, plain_path, tmp, args.seconds)

        def write_config(resolved) -> Path:
            path = tmp / "config.yaml"
            path.write_text(yamlio.dump(configmod.to_dict(resolved)))
            return path

        t0 = time.time() + STARTUP_S
        probes = (lambda path: lambda pid: _probe_cmd(path, pid, tmp / f"probe-{pid}.json", seconds, t0,
                                                     timeline=timeline))
        # the probes run where peers run, under the emulation `dlion run` sets up (the launcher's own code)
        with launch.launched(cfg, tmp, write_config, probes) as run:
            cfg = run.cfg
            limit = t0 - time.time() + seconds + (0 if timeline else 1.0 + len(links_of(cfg)) * SLOT_S) + 60
            launch.supervise(run, lambda: t0, limit, poll_s=0.05)
        results = {pid: json.loads((tmp / f"probe-{pid}.json").read_text()) for pid in cfg.peer_ids}
    if timeline:
        tolerance = args.tolerance or (0.15 if cfg.emulation.method == "real" else 0.20)
        return report_timeline(cfg, references, results, seconds, tolerance, args.series)
    return report(cfg, references, results)


def report(cfg, references: dict[int, float], results: dict[int, dict]) -> int:
    cpu_errs, time_errs, bw_errs, lat_errs = [], [], [], []
    print(f"{'peer':>4} {'cores':>6} {'compute':>8} {'error':>7} {'CPU time':>9} {'error':>7}")
    for peer in cfg.peers:
        share = results[peer.id]["rate"] / references[peer.tf_threads] * peer.tf_threads
        expected = min(peer.cores, peer.tf_threads)
        cpu_errs.append(rel_err(share, expected))
        time_errs.append(rel_err(results[peer.id]["cpu"], expected))
        print(f"{peer.id:>4} {expected:>6.2f} {share:>8.3f} {cpu_errs[-1]:>7.1%} {results[peer.id]['cpu']:>9.3f} "
              f"{time_errs[-1]:>7.1%}")
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
                      "cpu_time_max_rel_err": worst(time_errs), "bandwidth_max_rel_err": worst(bw_errs),
                      "latency_max_rel_err": worst([e for e in lat_errs if e is not None] or [None])}))
    return 0


def windows(events: list[tuple[float, float]], end: float, width: float = WINDOW_S, step: float = 0.1):
    """(window end, value per second) for sliding windows over (time, value) events. Each event's value is spread
    evenly over the time since the event before it (the link carried the message, the CPU ran the step, in that time),
    so a window's figure does not jump by a whole message as an arrival crosses its edge: at 10 Mbit/s one stream
    message is 10% of a second's worth, and counted whole, 8 or 9 arrivals in a window read 16% apart."""
    import numpy as np

    ordered = sorted(events)
    times = np.array([0.0] + [t for t, _ in ordered])
    totals = np.concatenate([[0.0], np.cumsum([v for _, v in ordered])])
    ends = np.arange(width, end + 1e-9, step)
    sums = np.interp(ends, times, totals) - np.interp(ends - width, times, totals)
    return [(float(e), float(v) / width) for e, v in zip(ends, sums)]


def lag(series, change_at: float, before: float, after: float, tolerance: float) -> float | None:
    """Seconds from `change_at` to the end of the first window after it from which every later window is within
    `tolerance` of `after` (None if never)."""
    settled = None
    for e, v in series:
        if e <= change_at:
            continue
        if abs(v - after) <= tolerance * after:
            settled = e if settled is None else settled
        else:
            settled = None
    return None if settled is None else round(settled - change_at, 2)


def _median_between(series, start: float, end: float) -> float | None:
    values = [v for e, v in series if start < e <= end]
    return statistics.median(values) if values else None


def _show(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """A measured figure, or '-' where the timeline was too short to have one (see --after)."""
    return "-" if value is None else f"{value * scale:.{digits}f}"


def report_timeline(cfg, references, results, seconds: float, tolerance: float,
                    series_path: str | None = None) -> int:
    """Per peer and per scheduled link: configured and measured before and after each change, and the lag; every
    window's figure goes to `series_path` if given."""
    lags, saved = {}, {}
    print(f"{'':>8} {'change at':>9} {'before':>13} {'after':>13} {'lag s':>6}   (configured / measured; peers: "
          f"CPU time per s and compute share; links: Mbit/s)")
    for change in sorted(cfg.schedule, key=lambda c: c.at):
        at = change.at
        if change.is_link:
            key = f"{change.src}->{change.dst}"
            series = windows([(t, n * 8 / 1e6) for t, n in results[change.dst]["arrivals"][key]], seconds)
            before = cfg.link(change.src, change.dst, at - 1e-6).bandwidth / 1e6
            after = cfg.link(change.src, change.dst, at).bandwidth / 1e6
            extra = ""
        else:
            key = f"peer {change.peer}"
            steps = results[change.peer]["steps"]
            series = windows([(t, cpu) for t, _, cpu in steps], seconds)
            rate = windows([(t, n) for t, n, _ in steps], seconds)
            threads = cfg.peer(change.peer).tf_threads
            ref = references[threads] / threads
            before, after = cfg.cores(change.peer, at - 1e-6), cfg.cores(change.peer, at)
            extra = (f"   compute share {_show(_median_between(rate, 1.0, at), 1 / ref, 3)} -> "
                     f"{_show(_median_between(rate, at + 2.0, seconds), 1 / ref, 3)}")
        lags[key] = lag(series, at, before, after, tolerance)
        saved[key] = {"at": at, "before": before, "after": after, "windows": [(round(e, 2), v) for e, v in series]}
        measured_before = _median_between(series, 1.0, at)
        measured_after = _median_between(series, at + 2.0, seconds)
        shown = f"{lags[key]:6.2f}" if lags[key] is not None else f"{'never':>6}"
        print(f"{key:>8} {at:>8.1f}s {before:>6.2f}/{_show(measured_before):<6} "
              f"{after:>6.2f}/{_show(measured_after):<6} {shown}{extra}")
    if series_path:
        Path(series_path).write_text(json.dumps(saved))
    print(json.dumps({"method": cfg.emulation.method, "tolerance": tolerance, "lag_s": lags,
                      "max_lag_s": None if any(v is None for v in lags.values()) else max(lags.values())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
