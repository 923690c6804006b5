#!/usr/bin/env bash
# End to end on this machine, with real Docker: the committed docker-compose.yml (the default scenario) trains in
# containers, each with its CPU limit and shaped links, to the expected accuracy.
#
# Starts a Docker engine if none answers (and stops it at the end), makes a Debian 12 base image with debootstrap when
# the default base cannot be pulled, builds the peer image (scripts/peer_image.sh), runs `docker-compose up`, shows
# the CPU quota and the tc classes from inside peer-0 while it trains, waits for the run to end and checks every
# peer's `final` event, then removes the containers and the network. Any failure exits non-zero. The base image's
# root file system is cached in $DLION_CACHE (default ~/.cache/dlion) and pip's cache keeps the wheelhouse quick.
# Needs root (apt, dockerd) and Python 3.11 with PyYAML and psutil (scripts/install.sh). The last line is a JSON
# object: wall_s, mean_final_accuracy, peers_finished, ...
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
LOCAL_BASE="dlion-base:bookworm"
CACHE="${DLION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlion}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PROJECT="dlione2e"
MIN_ACCURACY=0.80
STEP_TIMEOUT_S=300
LOGS="runs/compose-e2e"
COMPOSE=(docker-compose -p "$PROJECT" -f docker-compose.yml)
DOCKERD_PID=""

say() { echo "compose_e2e: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

teardown() {  # containers and network of the run, then the engine if we started it; fails if anything is left
  local left=""
  if docker info >/dev/null 2>&1; then
    "${COMPOSE[@]}" logs --no-color >"$LOGS/compose.log" 2>&1 || true
    "${COMPOSE[@]}" down --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    left="$left$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  fi
  if [ -n "$DOCKERD_PID" ]; then  # stopping it stops the containerd it started; its cgroups are left empty
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
    rmdir /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null || true
  fi
  [ -z "$left" ] || { say "left behind: $left"; return 1; }
}
trap 'status=$?; teardown; exit $status' EXIT

need_debs() {
  local missing=""
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
  if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
  local limit=$1 what=$2
  shift 2
  for _ in $(seq "$limit"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  fail "$what: not within ${limit}s"
}

[ "$(id -u)" = 0 ] || fail "run as root: it installs packages and may start dockerd"
python3 -c 'import yaml, psutil' 2>/dev/null || fail "python3 lacks PyYAML or psutil: run scripts/install.sh first"
mkdir -p "$LOGS" "$CACHE"
need_debs docker-compose dataset-fashion-mnist
python3 -m dlion keys configs/quickstart.yaml -o keys/quickstart >/dev/null  # the link keys the services mount
t_start=$(date +%s.%N)

# ---- an engine --------------------------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  need_debs docker.io
  say "starting dockerd (log: $LOGS/dockerd.log)"
  dockerd --iptables=false --bridge=none >"$LOGS/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  wait_for 60 "dockerd answering" docker info
fi

# ---- the base image: pulled, or made here -------------------------------------------------------------------------
base="$BASE_IMAGE"
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$base" >/dev/null 2>&1; then
  base="$LOCAL_BASE"
  say "$BASE_IMAGE cannot be pulled: using $base, made with debootstrap"
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    tarball="$CACHE/base-bookworm.tar"
    if [ ! -s "$tarball" ]; then
      need_debs debootstrap
      rootfs=$(mktemp -d)
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" \
        >"$LOGS/debootstrap.log" 2>&1 || fail "debootstrap; see $LOGS/debootstrap.log"
      rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
      tar -C "$rootfs" -c . >"$tarball.part"
      mv "$tarball.part" "$tarball"
      rm -rf "$rootfs"
    fi
    docker import "$tarball" "$base" >/dev/null
  fi
fi

# ---- the peer image ---------------------------------------------------------------------------------------------
t_build=$(date +%s.%N)
bash scripts/peer_image.sh "$base" >"$LOGS/build.log" 2>&1 || fail "building the peer image; see $LOGS/build.log"
build_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $t_build, 1))")
say "peer image built on $base in ${build_s}s"

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
import yaml
from dlion.metrics import summarize

services = yaml.safe_load(open("docker-compose.yml"))["services"]
peer_ids = sorted(int(s["environment"]["PEER_ID"]) for s in services.values())
summary = summarize(os.environ["RESULTS"], peer_ids, None, float(os.environ["WALL_S"]))
with open(os.path.join(os.environ["RESULTS"], "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
failures = []
finished = [pid for pid in peer_ids if summary["peers"][str(pid)]["finished"]]
if finished != peer_ids:
    failures.append(f"peers without a final event: {sorted(set(peer_ids) - set(finished))}")
mean = summary["final_accuracy"]
if mean is None or mean < float(os.environ["MIN_ACCURACY"]):
    failures.append(f"mean final accuracy {mean} < {os.environ['MIN_ACCURACY']}")
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
