"""The checks of a run in containers that scripts/compose_e2e.sh and scripts/swarm_e2e.sh share (their inline checks
import this with scripts/ on sys.path)."""
import json
import os
from typing import NamedTuple

import yaml

from dlion.analysis import summarize


class Run(NamedTuple):
    services: dict       # the compose or stack file's services
    peer_ids: list       # theirs
    summary: dict        # dlion.analysis.summarize's
    finished: list       # the peers with a final event
    mean: float | None   # their mean final accuracy
    failures: list       # what went wrong, one line each


def check_run(compose_file: str, results: str, wall_s: float, min_accuracy: float) -> Run:
    """The run of the services of `compose_file`, from the peers' events in `results`, where its summary is written
    (summary.json). Failures: a peer without a final event, a mean final accuracy below `min_accuracy`."""
    services = yaml.safe_load(open(compose_file))["services"]
    peer_ids = sorted(int(s["environment"]["PEER_ID"]) for s in services.values())
    summary = summarize(results, peer_ids, None, wall_s)
    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    failures = []
    finished = [pid for pid in peer_ids if summary["peers"][str(pid)]["finished"]]
    if finished != peer_ids:
        failures.append(f"peers without a final event: {sorted(set(peer_ids) - set(finished))}")
    mean = summary["final_accuracy"]
    if mean is None or mean < min_accuracy:
        failures.append(f"mean final accuracy {mean} < {min_accuracy}")
    return Run(services, peer_ids, summary, finished, mean, failures)
