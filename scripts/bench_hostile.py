#!/usr/bin/env python3
"""Hostile traffic, side by side: the same run clean and under `scripts/attack.py`'s flood, to measure what issue 16
asks of the hardening (every peer still reaches the target within a point of the clean accuracy, nothing accepted
that should not be, the flooded peer's memory within 1.3x).

    python3 scripts/bench_hostile.py [CONFIG] [--target 0] [--count 10000] [--security none|curve|default]
        [--curve-unknown] [--extra-set KEY=VALUE ...] [--out DIR]

Runs `python3 -m dlion run CONFIG --set output.dir=DIR/<run>` twice, one after the other: `clean`, then `attacked`,
where `scripts/attack.py` floods peer `--target` with `--count` messages from the moment that peer logs its `start`
event (it aims with the run's resolved `config.yaml`, so with its addresses and keys directory). During both runs the
target's resident memory (VmRSS of the pid in its `start` event) is sampled every 0.5 s and the maximum kept.

Prints one JSON line, then a markdown table: per run and peer the final accuracy, stop reason and training time; the
target's maximum RSS; the attack's counts; every field of the target's `final` event whose name says drop or reject,
whole; and clean against attacked: the accuracy change per peer and the RSS ratio. Exit status 1 if a run left a
peer without a `final` event (or the attack reported nothing), 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlion import config as configmod  # noqa: E402
from dlion.launch import hard_limit_s  # noqa: E402
from dlion.metrics import peer_log_path, read_events  # noqa: E402
from dlion.schema import ConfigError  # noqa: E402

SAMPLE_S = 0.5
RUNS = ("clean", "attacked")
STOP_GRACE_S = 60.0     # a run past its hard limit gets SIGTERM (the launcher stops its peers), then this long
ATTACK_GRACE_S = 20.0   # after its run ended, the attack gets SIGTERM and this long to print its result line


# ---- watching a run ----------------------------------------------------------------------------------------------

def vm_rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB from /proc/PID/status; None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """The maximum VmRSS of one process, sampled every SAMPLE_S in a thread until `stop()` or the process ends."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_mb: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            mb = vm_rss_mb(self.pid)
            if mb is None:
                return
            self.max_mb = mb if self.max_mb is None else max(self.max_mb, mb)
            self.samples += 1
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def first_event(out_dir: Path, peer_id: int, ev: str) -> dict | None:
    return next((e for e in read_events(peer_log_path(out_dir, peer_id)) if e.get("ev") == ev), None)


def wait_for_start(out_dir: Path, peer_id: int, proc: subprocess.Popen, timeout_s: float) -> dict | None:
    """The peer's `start` event, once it is logged; None if the run ends or the time is up first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if (start := first_event(out_dir, peer_id, "start")) is not None:
            return start
        time.sleep(0.2)
    return first_event(out_dir, peer_id, "start")


def wait_bounded(proc: subprocess.Popen, timeout_s: float | None, grace_s: float) -> int:
    """Wait for `proc`; past `timeout_s`, SIGTERM it and give it `grace_s`, then kill it."""
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def last_json_line(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


# ---- one run -------------------------------------------------------------------------------------------------

def dlion_argv(args, out_dir: Path) -> list[str]:
    """`dlion run` with the output directory, the security mode and the passthrough overrides, as `--set`s."""
    sets = [f"output.dir={out_dir}"]
    if args.security != "default":
        sets.append(f"security.mode={args.security}")
    sets += args.extra_set
    return [sys.executable, "-m", "dlion", "run", str(args.config), "--overwrite",
            *[a for s in sets for a in ("--set", s)]]


def attack_argv(args, out_dir: Path, start: dict) -> list[str]:
    """`scripts/attack.py` aimed with the run's resolved config; the model size from the target's start event (the
    trainable parameters: right for models without non-trainable state, such as the quickstart's cnn)."""
    argv = [sys.executable, str(ROOT / "scripts" / "attack.py"), "--config", str(out_dir / "config.yaml"),
            "--target", str(args.target), "--count", str(args.count), "--seed", str(args.seed)]
    if start.get("num_params"):
        argv += ["--num-params", str(start["num_params"])]
    if args.curve_unknown:
        argv.append("--curve-unknown")
    if args.server_key:
        argv += ["--server-key", args.server_key]
    if args.rate:
        argv += ["--rate", str(args.rate)]
    if args.attack_max_seconds:
        argv += ["--max-seconds", str(args.attack_max_seconds)]
    return argv


def run_once(args, name: str, peer_ids, limit_s: float | None) -> dict:
    """One `dlion run` into OUT/<name>, flooded if `name` is attacked; what the run and the attack left."""
    out_dir = args.out / name
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    began = time.monotonic()
    sampler = attacker = None
    with open(args.out / f"{name}.log", "w") as console:
        proc = subprocess.Popen(dlion_argv(args, out_dir), cwd=ROOT, env=env, stdout=console,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            start = wait_for_start(out_dir, args.target, proc, limit_s or 600.0)
            sampler = RssSampler(start["pid"]) if start else None
            if name == "attacked" and start:
                with open(args.out / "attack.stderr", "w") as err:
                    attacker = subprocess.Popen(attack_argv(args, out_dir, start), cwd=ROOT, env=env,
                                                stdout=subprocess.PIPE, stderr=err, text=True)
            remaining = None if limit_s is None else max(1.0, limit_s - (time.monotonic() - began))
            exit_code = wait_bounded(proc, remaining, STOP_GRACE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        attack = finish_attack(attacker) if attacker else None
        if sampler:
            sampler.stop()
    return collect(args, peer_ids, out_dir, exit_code, time.monotonic() - began, sampler, attack, name)


def finish_attack(attacker: subprocess.Popen) -> dict | None:
    """The attack's result line: it ends on its own (count or time bound) or on SIGTERM, once its run is over."""
    try:
        out, _ = attacker.communicate(timeout=ATTACK_GRACE_S)
    except subprocess.TimeoutExpired:
        attacker.send_signal(signal.SIGTERM)
        try:
            out, _ = attacker.communicate(timeout=ATTACK_GRACE_S)
        except subprocess.TimeoutExpired:
            attacker.kill()
            out, _ = attacker.communicate()
    return last_json_line(out or "")


def drop_fields(event: dict | None, prefix: str = "") -> dict:
    """Every field (at any depth) whose name contains "drop" or "reject", whole; dotted names for nested ones."""
    found = {}
    for key, value in (event or {}).items():
        name = f"{prefix}{key}"
        if "drop" in str(key).lower() or "reject" in str(key).lower():
            found[name] = value
        elif isinstance(value, dict):
            found.update(drop_fields(value, name + "."))
    return found


def collect(args, peer_ids, out_dir: Path, exit_code: int, wall_s: float, sampler: RssSampler | None,
            attack: dict | None, name: str) -> dict:
    """The run's figures: per peer from its `final` event, the run's from summary.json."""
    finals = {pid: first_event(out_dir, pid, "final") for pid in peer_ids}
    summary_path = out_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    peers = {str(pid): {"final_accuracy": f.get("acc"), "stop_reason": f.get("stop_reason"),
                        "train_s": f.get("train_s"), "iterations": f.get("it")} if f else None
             for pid, f in finals.items()}
    return {"run": name, "dir": str(out_dir), "exit_code": exit_code, "wall_s": round(wall_s, 1),
            "time_to_target_s": summary.get("time_to_target_s"), "finished": all(finals.values()), "peers": peers,
            "target_max_rss_mb": None if sampler is None or sampler.max_mb is None else round(sampler.max_mb, 1),
            "rss_samples": sampler.samples if sampler else 0,
            "target_drops": drop_fields(finals.get(args.target)), "attack": attack}


# ---- comparison and report -----------------------------------------------------------------------------------

def differences(clean: dict, attacked: dict) -> dict:
    """Attacked minus clean accuracy per peer, and the attacked/clean ratio of the target's maximum RSS."""
    delta = {}
    for pid, c in clean["peers"].items():
        a = attacked["peers"].get(pid)
        if c and a and c["final_accuracy"] is not None and a["final_accuracy"] is not None:
            delta[pid] = round(a["final_accuracy"] - c["final_accuracy"], 5)
        else:
            delta[pid] = None
    rss_c, rss_a = clean["target_max_rss_mb"], attacked["target_max_rss_mb"]
    return {"accuracy_delta": delta, "rss_ratio": round(rss_a / rss_c, 3) if rss_c and rss_a else None}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, separators=(",", ":")) + "`"
    return str(value)


def markdown(args, runs: dict, diff: dict) -> str:
    lines = [f"## bench_hostile: {args.config}, target peer {args.target}, {args.count} messages, security "
             f"{args.security}{', CURVE with unknown keys' if args.curve_unknown else ''}", "",
             "| run | peer | final accuracy | stop reason | training s | iterations | max RSS of target (MB) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        for pid, p in r["peers"].items():
            rss = r["target_max_rss_mb"] if int(pid) == args.target else None
            p = p or {}
            lines.append(f"| {name} | {pid} | {_cell(p.get('final_accuracy'))} | {_cell(p.get('stop_reason'))} | "
                         f"{_cell(p.get('train_s'))} | {_cell(p.get('iterations'))} | {_cell(rss)} |")
    attack = runs["attacked"]["attack"] or {}
    lines += ["", "### The attack", "", "| category | sent |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in (attack.get("sent") or {}).items()]
    lines += [f"| send_failed | {_cell(attack.get('send_failed'))} |", f"| total | {_cell(attack.get('total'))} |",
              f"| seconds | {_cell(attack.get('seconds'))} |", f"| connections | {_cell(attack.get('connections'))} |"]
    lines += ["", f"### Drop and reject fields of peer {args.target}'s final event", "", "| run | field | value |",
              "|---|---|---|"]
    for name, r in runs.items():
        lines += [f"| {name} | {k} | {_cell(v)} |" for k, v in r["target_drops"].items()] or [f"| {name} | - | - |"]
    lines += ["", "### Clean against attacked", "", "| peer | accuracy clean | accuracy attacked | change |",
              "|---|---|---|---|"]
    for pid, d in diff["accuracy_delta"].items():
        c, a = runs["clean"]["peers"].get(pid) or {}, runs["attacked"]["peers"].get(pid) or {}
        lines.append(f"| {pid} | {_cell(c.get('final_accuracy'))} | {_cell(a.get('final_accuracy'))} | {_cell(d)} |")
    lines += ["", f"Max RSS of peer {args.target}: clean {_cell(runs['clean']['target_max_rss_mb'])} MB, attacked "
                  f"{_cell(runs['attacked']['target_max_rss_mb'])} MB, ratio {_cell(diff['rss_ratio'])}. "
                  f"Time to target: clean {_cell(runs['clean']['time_to_target_s'])} s, attacked "
                  f"{_cell(runs['attacked']['time_to_target_s'])} s."]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--target", type=int, default=0, help="the peer to flood (default 0)")
    p.add_argument("--count", type=int, default=10000, help="hostile messages (default 10000)")
    p.add_argument("--security", choices=["none", "curve", "default"], default="default",
                   help="security.mode for both runs (default: as the config says)")
    p.add_argument("--curve-unknown", action="store_true", help="the attack uses CURVE with unknown keys")
    p.add_argument("--server-key", help="passed to attack.py (default: it reads the target's key from the config)")
    p.add_argument("--extra-set", action="append", default=[], metavar="KEY=VALUE", help="--set for both runs")
    p.add_argument("--rate", type=float, help="passed to attack.py: messages per second")
    p.add_argument("--attack-max-seconds", type=float, help="passed to attack.py: bound on the attack")
    p.add_argument("--seed", type=int, default=0, help="the attack's seed")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-hostile")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    try:  # a bad config or target fails here, before anything runs
        cfg = configmod.load(args.config, args.extra_set)
        cfg.peer(args.target)
    except (ConfigError, KeyError) as exc:
        print(f"bench_hostile: {exc}", file=sys.stderr)
        return 2
    limit = hard_limit_s(cfg)
    runs = {name: run_once(args, name, cfg.peer_ids, None if limit is None else limit + STOP_GRACE_S)
            for name in RUNS}
    diff = differences(runs["clean"], runs["attacked"])
    attack = runs["attacked"]["attack"]
    result = {"config": str(args.config), "target": args.target, "count": args.count, "security": args.security,
              "curve_unknown": args.curve_unknown, "runs": runs, "attack": attack, "differences": diff}
    (args.out / "bench_hostile.json").write_text(json.dumps(result, indent=2))
    md = markdown(args, runs, diff)
    (args.out / "bench_hostile.md").write_text(md + "\n")
    print(json.dumps(result, separators=(",", ":")))
    print(md)
    ok = all(r["finished"] for r in runs.values()) and attack is not None
    if not ok:
        print("bench_hostile: a run left a peer without a final event, or the attack reported nothing; see "
              f"{args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
