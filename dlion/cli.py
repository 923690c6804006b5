"""`dlion run | peer | simulate | validate | keys | emulate | compose | report`: every command that takes a config
validates it first and exits 2 on a mistake. `simulate` runs every peer in this process in virtual time
(`dlion.simulate.run`)."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn

import dlion
from dlion import config as configmod
from dlion import security
from dlion.data import DataError
from dlion.emulate import EmulationError
from dlion.schema import ConfigError

EXIT_CONFIG = 2


def version() -> str:
    """The installed distribution's version, or the source tree's where dlion runs without being installed."""
    try:
        return importlib.metadata.version("dlion")
    except importlib.metadata.PackageNotFoundError:
        return dlion.__version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlion", description="Decentralized P2P training for micro-clouds")
    parser.add_argument("--version", action="version", version=f"dlion {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                           help="override a config key, e.g. --set training.max_seconds=30 (repeatable)")

    run = sub.add_parser("run", parents=[overrides], help="run every peer of a config as local processes")
    run.add_argument("config", nargs="?", help="YAML config file (with --resume: default DIR/config.yaml)")
    run.add_argument("--out", help="output directory (default: output.dir of the config)")
    run.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in the output "
                                                              "directory (refused otherwise)")
    run.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR from its latest checkpoint")

    peer = sub.add_parser("peer", parents=[overrides], help="run one peer of a config in this process")
    peer.add_argument("--config", required=True, help="YAML config file")
    peer.add_argument("--id", type=int, required=True, help="this peer's id in the config")
    peer.add_argument("--out", help="output directory (default: output.dir of the config)")
    peer.add_argument("--resume-at", type=_iteration_or_latest, metavar="N",
                      help="continue from this peer's checkpoint of iteration N in the output directory, or "
                           "`latest`: from its latest one if it has any (a restarted container)")

    simulate = sub.add_parser("simulate", parents=[overrides],
                              help="run every peer of a config in this process, in virtual time: compute calibrated "
                                   "on this host, messages timed by their links (many peers, reproducible)")
    simulate.add_argument("config", help="YAML config file")
    simulate.add_argument("--peers", type=int, metavar="N",
                          help="number of peers: population.count, or the listed peers repeated to N")
    simulate.add_argument("--out", help="output directory (default: output.dir of the config)")
    simulate.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in the "
                                                                   "output directory (refused otherwise)")
    simulate.add_argument("--queue", choices=["link", "uplink"], default="link",
                          help="what a message queues behind: earlier messages on its link (default; as the "
                               "emulation shapes links) or all earlier messages of its sender (a shared uplink)")
    simulate.add_argument("--calibration", metavar="FILE",
                          help="the calibration cache to read and extend (default: $DLION_CALIBRATION or "
                               "~/.cache/dlion/calibration.json)")
    simulate.add_argument("--recalibrate", action="store_true", help="measure the model on this host again")
    simulate.add_argument("--cpu-overhead", action="store_true",
                          help="also charge each peer the CPU time its own work outside TensorFlow takes on this host "
                               "(stages, encoding, run control), at its cores: closer to emulated runs where that "
                               "work bounds small peers' rounds, but no longer exactly repeatable")

    validate = sub.add_parser("validate", parents=[overrides],
                              help="check a config, its data and its model, and print it resolved")
    validate.add_argument("config", help="YAML config file")
    validate.add_argument("--no-model", action="store_true", help="skip loading the data and building the model")

    keys = sub.add_parser("keys", parents=[overrides],
                          help="write CURVE key pairs for the peers of a config (peer-<id>.key, peer-<id>.key_secret)")
    keys.add_argument("config", help="YAML config file")
    keys.add_argument("-o", "--output", help="keys directory (default: security.keys_dir of the config)")
    keys.add_argument("--peer", type=int, help="only this peer's pair (one site's)")
    keys.add_argument("--force", action="store_true", help="replace existing pairs")

    emulate = sub.add_parser("emulate", parents=[overrides],
                             help="set up, inspect or remove the real emulation of a config by hand (root); "
                                  "shape: shape this network namespace's egress as one peer's (in its container)")
    emulate.add_argument("action", choices=["up", "down", "status", "shape"])
    emulate.add_argument("config", help="YAML config file")
    emulate.add_argument("--id", type=int, help="shape: the peer whose egress this is")
    emulate.add_argument("--dev", default="eth0", help="shape: the device to shape (default: eth0)")

    compose = sub.add_parser("compose", parents=[overrides],
                             help="write a docker-compose file running every peer of a config in its own container "
                                  "(--swarm: a Docker stack file, the peers on swarm nodes labelled by site)")
    compose.add_argument("config", help="YAML config file")
    compose.add_argument("-o", "--output", help="compose file to write (default: standard output, paths relative "
                                                "to the current directory)")
    compose.add_argument("--swarm", action="store_true",
                         help="a stack file for `docker stack deploy`: each peer placed on the nodes labelled "
                              "dlion.site=<its peers[i].site>, addressed by service name on an overlay network")

    report = sub.add_parser("report", help="a table (markdown, CSV) and plots of runs that already exist")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="a run's output directory, or a directory of run directories (as compare.py's runs/)")
    report.add_argument("-o", "--output", default="report", help="directory for report.md, report.csv and the "
                                                                 "plots (default: report)")
    report.add_argument("--target", type=float, metavar="ACC",
                        help="time every run to this accuracy (default: each run's own target)")
    report.add_argument("--no-plots", action="store_true", help="only the table (no matplotlib needed)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":  # runs, not a config
        from dlion import report
        return report.main(args, shlex.join(["dlion", *(sys.argv[1:] if argv is None else argv)]))
    if args.command == "run" and args.resume:
        args.config = args.config or str(Path(args.resume) / "config.yaml")
        args.out = args.resume
    if args.command == "run" and not args.config:
        print("dlion: run needs a config file (or --resume DIR)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        cfg = configmod.load(args.config, args.set, peers=getattr(args, "peers", None))
        if args.command == "peer" or getattr(args, "action", None) == "shape":
            if args.id is None:
                raise KeyError("required for emulate shape")
            cfg.peer(args.id)
        if args.command == "compose":
            return _compose(args, cfg)  # its own checks of the config are config errors too
        if args.command == "keys":
            return _keys(args, cfg)
        if args.command == "peer" and cfg.security.mode == "curve":
            security.load(cfg, args.id)  # before TensorFlow starts
    except (ConfigError, security.KeysError) as exc:
        return _refused(exc)
    except KeyError as exc:
        print(f"dlion: config error: --id: {exc.args[0]}", file=sys.stderr)
        return EXIT_CONFIG
    out_dir = getattr(args, "out", None) or cfg.output.dir
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.command == "validate":
            print(json.dumps(configmod.to_dict(cfg), indent=2))
            if not args.no_model:
                from dlion.wiring import check_model
                for line in check_model(cfg):
                    print(line, file=sys.stderr)
            print(f"{args.config}: valid ({len(cfg.peers)} peers)", file=sys.stderr)
            return 0
        if args.command == "simulate":
            return _simulate(args, cfg, out_dir)
        if args.command == "run":
            from dlion import launch
            from dlion.forkserver import ForkServerError
            try:
                summary = launch.run(cfg, out_dir, resume=bool(args.resume), overwrite=args.overwrite)
            except launch.LaunchError as exc:
                print(f"dlion: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            except ForkServerError as exc:  # the peers could not be started: nothing of the run is left
                print(f"dlion: {exc}", file=sys.stderr)
                return 1
            print(json.dumps({k: v for k, v in summary.items() if k != "peers"}))
            return 0 if summary["peers_finished"] == len(cfg.peers) else 1
        if cfg.security.mode == "none":
            logging.getLogger("dlion").warning("security.mode is none: links are not authenticated; anyone who "
                                               "reaches a peer's port can speak as any peer")
        if args.command == "emulate":
            return _emulate(args, cfg)
        resume_at = args.resume_at
        if resume_at == "latest":
            from dlion import checkpoint
            resume_at = checkpoint.latest(out_dir, args.id)
        _end_process(_peer(cfg, args.id, out_dir, resume_at))
    except (DataError, ConfigError, security.KeysError, EmulationError) as exc:
        return _refused(exc)


_KINDS_OF_ERROR = {DataError: "data error", ConfigError: "config error", security.KeysError: "keys error",
                   EmulationError: "emulation error"}


def _refused(exc: Exception) -> int:
    """One line naming what kind of mistake stopped the command, and the exit status of a mistake."""
    kind = next(label for cls, label in _KINDS_OF_ERROR.items() if isinstance(exc, cls))
    print(f"dlion: {kind}: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def _iteration_or_latest(text: str):
    if text == "latest":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an iteration number or `latest`, got {text!r}") from None


def _peer(cfg, peer_id: int, out_dir: str, resume_at: int | None = None) -> int:
    """`dlion peer`: one peer in this process, with what it emulates itself attached to its hooks."""
    from dlion.emulate import fallback, real
    from dlion.wiring import run_peer
    emulation = fallback.for_peer(cfg, peer_id, turns_dir=Path(out_dir))
    hooks = {} if emulation is None else {"clock": emulation, "link_policy": emulation.link_policy}
    run_peer(cfg, peer_id, out_dir, ready=real.enter_cgroup, trained=real.leave_cap,  # the CPU cap binds from
             resume_at=resume_at, **hooks)                             # the model's build to the training's end
    return 0


def _end_process(code: int) -> NoReturn:
    """End a finished peer's process at once: its results are on disk and its links closed, and the interpreter's
    teardown of TensorFlow would keep the launcher (and a run's wall time) waiting another second or two."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _simulate(args, cfg, out_dir: str) -> int:
    """`dlion simulate CONFIG [--peers N] [--out DIR]`: prints the summary without its per-peer part."""
    from dlion import launch
    from dlion.simulate.run import simulate
    if (earlier := launch.earlier_results(Path(out_dir))) and not args.overwrite:
        print(f"dlion: {out_dir} holds an earlier run ({', '.join(p.name for p in earlier)}): use --overwrite to "
              f"replace it, or another --out", file=sys.stderr)
        return EXIT_CONFIG
    summary = simulate(cfg, out_dir, queue=args.queue, calibration=args.calibration, recalibrate=args.recalibrate,
                       cpu_overhead=args.cpu_overhead)
    print(json.dumps({k: v for k, v in summary.items() if k != "peers"}))
    return 0 if summary["peers_finished"] == len(cfg.peers) else 1


def _compose(args, cfg) -> int:
    """`dlion compose FILE [-o OUT] [--swarm]`: paths in the file are relative to where it is written."""
    from dlion import compose
    out_dir = Path(args.output).parent if args.output else Path.cwd()
    text = compose.render(cfg, args.config, out_dir, args.set, swarm=args.swarm)
    start = "docker stack deploy" if args.swarm else "docker-compose up"
    if cfg.security.mode == "curve":
        keys = compose.keys_dir(cfg)
        if args.output:
            security.generate(keys, [p.id for p in cfg.peers if p.public_key is None])
        elif not all(security.secret_path(keys, p.id).exists() for p in cfg.peers):
            print(f"dlion compose: the services {'get' if args.swarm else 'mount'} key pairs from {keys}: make them "
                  f"with `dlion keys {args.config} -o {keys}` before {start}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text)
        todo = (f"label each node with its site (dlion.site: {', '.join(sorted({p.site_name for p in cfg.peers}))}), "
                f"make the results directory {cfg.output.dir} on each, load the image, then {start}" if args.swarm
                else f"build the image, then {start}")
        print(f"{args.output}: {len(cfg.peers)} peer services; {todo}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _keys(args, cfg) -> int:
    """`dlion keys CONFIG [-o DIR] [--peer N] [--force]`: key pairs for the config's peers."""
    keys_dir = args.output or cfg.security.keys_dir
    if keys_dir is None:
        raise ConfigError("security.keys_dir", "expected a keys directory, in the config or as -o DIR")
    ids = [cfg.peer(args.peer).id] if args.peer is not None else list(cfg.peer_ids)
    written = security.generate(keys_dir, ids, overwrite=args.force)
    kept = len(ids) - len(written) // 2
    print(f"{keys_dir}: {len(written) // 2} key pair(s) written" + (f", {kept} kept (--force replaces them)"
                                                                      if kept else ""), file=sys.stderr)
    for peer_id in ids:
        public = security.public_path(keys_dir, peer_id).read_text()
        key = next(line.split('"')[1] for line in public.splitlines() if line.strip().startswith("public-key"))
        print(f"peer {peer_id}: public_key: {json.dumps(key)}")  # Z85 has no quotes: valid YAML as it is
    return 0


def _emulate(args, cfg) -> int:
    """`dlion emulate up|down|status`: the real method's namespaces, shaping and CPU cgroups, managed by hand;
    `shape`: the same egress shaping for one peer, in the current namespace (its container's entry point runs it)."""
    from dlion.emulate import real
    action = args.action
    if action == "shape":
        print(json.dumps(real.shape_here(cfg, args.id, args.dev), indent=2))
        return 0
    emulation = real.RealEmulation(cfg)
    if action == "down":  # works without root checks too: removes whatever of ours exists
        emulation.down()
        return 0
    if action == "status":
        print(json.dumps(emulation.status(), indent=2))
        return 0
    ok, why = real.available()
    if not ok:
        raise EmulationError(f"real emulation is not available on this machine: {why}")
    # peers started by hand run as `ip netns exec <namespace> dlion peer ... --set peers.N.address=<address>`
    print(json.dumps({str(k): v for k, v in emulation.up().items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
