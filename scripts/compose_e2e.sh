#!/usr/bin/env bash
# End to end on this machine, with real Docker: the committed docker-compose.yml (the default scenario) trains in
# containers, each with its CPU limit and shaped links, to the expected accuracy.
#
# Starts a Docker engine if none answers (and stops it at the end), makes a Debian 12 base image with debootstrap when
# the default base cannot be pulled, builds the peer image (scripts/peer_image.sh), runs `docker-compose up`, shows
# the CPU quota and the tc classes from inside peer-0 while it trains, waits for the run to end and checks every
# peer's `final` event, then removes the containers and the network. Any failure exits non-zero. The base image's
# root file system is cached in $DLION_CACHE (default ~/.cache/dlion) and pip's cache keeps the wheelhouse quick
# (scripts/e2e_lib.sh). Needs root (apt, dockerd) and Python 3.11 with PyYAML and psutil (scripts/install.sh). The
# last line is a JSON object: wall_s, mean_final_accuracy, peers_finished, ...
set -euo pipefail
cd "$(dirname "$0")/.."

E2E="compose_e2e"
PROJECT="dlione2e"
MIN_ACCURACY=0.80
STEP_TIMEOUT_S=300
LOGS="runs/compose-e2e"
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml)
# shellcheck source=scripts/e2e_lib.sh
source scripts/e2e_lib.sh  # its teardown runs on exit: remove_run, then the engine if we started it

remove_run() {  # containers and network of the run; prints what is left
  "${COMPOSE[@]}" logs --no-color >"$LOGS/compose.log" 2>&1 || true
  "${COMPOSE[@]}" down --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
  docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
}

preflight docker-compose dataset-fashion-mnist
python3 -m dlion keys configs/quickstart.yaml -o keys/quickstart >/dev/null  # the link keys the services mount
t_start=$(date +%s.%N)

# ---- an engine and the peer image (scripts/e2e_lib.sh) ------------------------------------------------------------
start_engine
peer_image

# ---- the run ----------------------------------------------------------------------------------------------------
results=$(python3 -c 'import yaml; v = yaml.safe_load(open("docker-compose.yml"))["services"]["peer-0"]["volumes"]
print(next(m.rsplit(":", 1)[0] for m in v if m.endswith(":/results")))')
rm -rf "$results"
mkdir -p "$results"
"${COMPOSE[@]}" down --remove-orphans >/dev/null 2>&1 || true
t_up=$(date +%s.%N)
"${COMPOSE[@]}" up -d 2>"$LOGS/up.log" || fail "docker-compose up; see $LOGS/up.log"
peer0=$("${COMPOSE[@]}" ps -q peer-0)
cids=$("${COMPOSE[@]}" ps -q)

# Evidence from inside peer-0 while it trains: its CPU limit (cgroup v2 cpu.max, else v1 quota and period) and its
# shaped egress.
wait_for "$STEP_TIMEOUT_S" "peer-0 training" grep -q '"ev":"iter"' "$results/peer-0.jsonl"
# shellcheck disable=SC2086  # one container id per word
wait_for 60 "every peer healthy" sh -c "[ \"\$(docker inspect -f '{{.State.Health.Status}}' $cids | sort -u)\" = healthy ]"
cpu=$(docker exec "$peer0" sh -c 'cat /sys/fs/cgroup/cpu.max 2>/dev/null ||
      echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"')
tc_classes=$(docker exec "$peer0" tc -s class show dev eth0)
tc_qdiscs=$(docker exec "$peer0" tc qdisc show dev eth0)
# shellcheck disable=SC2086
health=$(docker inspect -f '{{.State.Health.Status}}' $cids | sort | uniq -c | xargs)
processes=$(docker top "$peer0" -o user,pid,args)
{
  echo "== CPU limit inside peer-0 (quota period, us): $cpu"
  echo "== tc -s class show dev eth0 (inside peer-0):"
  echo "$tc_classes"
  echo "== tc qdisc show dev eth0 (inside peer-0):"
  echo "$tc_qdiscs"
  echo "== processes of peer-0 (host view):"
  echo "$processes"
  echo "== health while training: $health"
} | tee "$LOGS/evidence.txt"

# shellcheck disable=SC2086  # one container id per word
exit_codes=$(timeout "$STEP_TIMEOUT_S" docker wait $cids) || fail "the peers did not stop within ${STEP_TIMEOUT_S}s"
wall_s=$(python3 -c "print(round($(date +%s.%N) - $t_up, 1))")

# ---- the checks -------------------------------------------------------------------------------------------------
export RESULTS="$results" CPU="$cpu" TC_CLASSES="$tc_classes" EXIT_CODES="$exit_codes" WALL_S="$wall_s" \
  BUILD_S="$build_s" BASE="$base" MIN_ACCURACY HEALTH="$health" LOGS
report=$(PYTHONPATH=. python3 - <<'EOF'
"""Check the run against the compose file; print the report (JSON) or exit 1 with the failures."""
import json, os, re, sys
sys.path.insert(0, "scripts")
from e2e_checks import check_run

services, peer_ids, summary, finished, mean, failures = check_run(
    "docker-compose.yml", os.environ["RESULTS"], float(os.environ["WALL_S"]), float(os.environ["MIN_ACCURACY"]))
codes = [int(c) for c in os.environ["EXIT_CODES"].split()]
if any(codes):
    failures.append(f"container exit codes {codes}; see {os.environ['LOGS']}/compose.log")
quota, period = os.environ["CPU"].split()
cpus = services["peer-0"]["cpus"]
if quota == "max" or abs(int(quota) / int(period) - cpus) > 0.01:
    failures.append(f"peer-0's CPU limit is {quota}/{period}, expected {cpus} cores")
classes = {m[0]: (m[1], int(m[2])) for m in re.findall(r"class htb (\S+) .*?rate (\S+) .*?\n\s*Sent (\d+) bytes",
                                                        os.environ["TC_CLASSES"])}
expected = [f"1:{dst + 2:x}" for dst in peer_ids if dst != 0]  # one class per destination (dlion.emulate.real)
if not all(c in classes and classes[c][1] > 0 for c in expected):
    failures.append(f"peer-0's egress classes {classes}: expected {expected}, each having sent traffic")
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"wall_s": float(os.environ["WALL_S"]), "mean_final_accuracy": mean,
                  "worst_final_accuracy": summary["worst_final_accuracy"], "peers_finished": finished,
                  "stop_reasons": {p: s["stop_reason"] for p, s in summary["peers"].items()},
                  "iterations": {p: s["iterations"] for p, s in summary["peers"].items()},
                  "cpu_limit_peer0": {"quota_us": int(quota), "period_us": int(period), "cpus": cpus},
                  "tc_classes_peer0": {c: {"rate": r, "sent_bytes": b} for c, (r, b) in classes.items()},
                  "health_while_training": os.environ["HEALTH"], "exit_codes": codes,
                  "base_image": os.environ["BASE"], "image_build_s": float(os.environ["BUILD_S"]),
                  "results": os.environ["RESULTS"]}))
EOF
) || fail "the run's checks"

trap - EXIT
teardown || fail "teardown"
say "passed in $(python3 -c "print(round($(date +%s.%N) - $t_start, 1))")s; results in $results, logs in $LOGS"
echo "$report"
