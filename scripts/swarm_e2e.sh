#!/usr/bin/env bash
# End to end on this machine, with a real Docker engine in swarm mode: the quickstart as a Docker stack
# (`dlion compose configs/quickstart.yaml --swarm`) trains in one service per peer, placed by site, each with its CPU
# limit, the peers addressing one another by service name over an overlay network, the link keys as secrets.
#
# Starts a Docker engine if none answers (`dockerd --iptables=false --bridge=none`, stopped at the end), makes it a
# single-node swarm (`docker swarm init --advertise-addr 127.0.0.1`), builds the peer image as compose_e2e.sh does
# (scripts/e2e_lib.sh, scripts/peer_image.sh), writes the stack, labels the node with every site of it (one node
# carries one value of the label, so here every peer's site is the same: --set peers.<i>.site=...), runs
# `docker stack deploy`, shows from inside peer-0 how the service names resolve and its CPU quota, waits for every
# peer's `final` event, shows each service's CPU limit (`docker service inspect`), checks the run, then removes the
# stack, waits for its network to go, leaves the swarm (and removes the docker_gwbridge network it made) and stops the
# engine it started. Any failure exits non-zero and leaves nothing behind either. Needs root (apt, dockerd) and Python
# 3.11 with PyYAML and psutil (scripts/install.sh). The last line is a JSON object: wall_s, peers_finished,
# mean_final_accuracy, cpu_limits, ...
set -euo pipefail
cd "$(dirname "$0")/.."

E2E="swarm_e2e"
CONFIG="configs/quickstart.yaml"
STACK_NAME="dlionswarm"
SITE="e2e-local"             # this node's site
LOGS="runs/swarm-e2e"
STACK="$LOGS/stack.yml"
RESULTS="$LOGS/results"      # the peers' output.dir: bind-mounted into every service from this node
MIN_ACCURACY=0.85
STEP_TIMEOUT_S=300           # until peer-0 trains; until the containers have stopped after the finals
RUN_TIMEOUT_S=600            # from deploy until every peer's final event
# shellcheck source=scripts/e2e_lib.sh
source scripts/e2e_lib.sh  # its teardown runs on exit: remove_run, then the engine if we started it
SWARM_STARTED=""

stack_left() {  # what of the stack still exists: services, containers, its network, secrets
  docker service ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME" 2>/dev/null
  docker ps -aq --filter "label=com.docker.stack.namespace=$STACK_NAME" 2>/dev/null
  docker network ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME" 2>/dev/null
  docker secret ls -q --filter "label=com.docker.stack.namespace=$STACK_NAME" 2>/dev/null
}

remove_run() {  # the stack and the swarm if we made them (their logs first); prints what is left
  [ -n "$SWARM_STARTED" ] || return 0
  for service in $(docker stack services -q "$STACK_NAME" 2>/dev/null); do
    docker service logs --raw "$service" >"$LOGS/$(docker service inspect -f '{{.Spec.Name}}' "$service").log" 2>&1 \
      || true
  done
  docker stack ps --no-trunc "$STACK_NAME" >"$LOGS/stack-ps.txt" 2>&1 || true
  docker stack rm "$STACK_NAME" >/dev/null 2>&1 || true
  # `docker stack rm` returns before the containers and the network are gone
  for _ in $(seq 60); do [ -z "$(stack_left)" ] && break; sleep 1; done
  stack_left
  if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != inactive ]; then
    docker swarm leave --force >/dev/null 2>&1 || echo swarm
  fi
  if [ -z "$GWBRIDGE_BEFORE" ]; then  # the bridge to the host that the swarm made for containers on overlays
    for _ in $(seq 10); do docker network rm docker_gwbridge >/dev/null 2>&1 && break; sleep 1; done
    docker network inspect docker_gwbridge >/dev/null 2>&1 && echo docker_gwbridge
  fi
  return 0
}

preflight dataset-fashion-mnist
t_start=$(date +%s.%N)

# ---- an engine in swarm mode, and the peer image (scripts/e2e_lib.sh) ---------------------------------------------
start_engine
state=$(docker info -f '{{.Swarm.LocalNodeState}}')
[ "$state" = inactive ] || fail "this engine's swarm state is '$state': run on an engine outside any swarm"
GWBRIDGE_BEFORE=$(docker network inspect -f '{{.Id}}' docker_gwbridge 2>/dev/null || true)
SWARM_STARTED=1
docker swarm init --advertise-addr 127.0.0.1 >"$LOGS/swarm-init.log" 2>&1 \
  || fail "docker swarm init; see $LOGS/swarm-init.log"
node=$(docker info -f '{{.Swarm.NodeID}}')
peer_image

# ---- the stack: every peer at this node's site, results under $RESULTS -------------------------------------------
peers=$(python3 -c "import yaml; print(len(yaml.safe_load(open('$CONFIG'))['peers']))")
sets=(--set "output.dir=$RESULTS")
for i in $(seq 0 $((peers - 1))); do sets+=(--set "peers.$i.site=$SITE"); done
python3 -m dlion compose "$CONFIG" --swarm -o "$STACK" "${sets[@]}" 2>"$LOGS/compose.log" \
  || fail "dlion compose --swarm; see $LOGS/compose.log"
sites=$(python3 -c "import yaml
services = yaml.safe_load(open('$STACK'))['services'].values()
print(' '.join(sorted({c.split('==')[1].strip() for s in services for c in s['deploy']['placement']['constraints']})))")
for site in $sites; do  # one node carries one value of a label: a second site could not be placed here
  [ "$site" = "$SITE" ] || fail "the stack places peers at site $site too; a single node can only be at one site"
  docker node update --label-add "dlion.site=$site" "$node" >/dev/null
done
say "node $node labelled dlion.site=$sites"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"  # a swarm does not make a bind mount's directory

deploy=(docker stack deploy --resolve-image never -c "$STACK")  # the image is local: no registry to ask
if docker stack deploy --help 2>&1 | grep -- '--detach' >/dev/null; then deploy+=(--detach=true); fi
t_up=$(date +%s.%N)
"${deploy[@]}" "$STACK_NAME" >"$LOGS/deploy.log" 2>&1 || fail "docker stack deploy; see $LOGS/deploy.log"

stack_errors() {  # the tasks that ended in an error (rejected, failed, killed as unhealthy): any is a failure here
  docker stack ps --no-trunc --format '{{.Name}} {{.CurrentState}}: {{.Error}}' "$STACK_NAME" | grep -v ': $' || true
}
wait_stack() {  # wait_stack SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds; fails at once on a task's error
  local limit=$1 what=$2 errors
  shift 2
  for _ in $(seq "$limit"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    errors=$(stack_errors)
    [ -z "$errors" ] || fail "$what: tasks failed: $errors"
    sleep 1
  done
  fail "$what: not within ${limit}s"
}

# Evidence from inside peer-0 while it trains: the service names resolve to overlay addresses, its CPU limit (cgroup
# v2 cpu.max, else v1 quota and period), its keys, and where the tasks run.
wait_stack "$STEP_TIMEOUT_S" "peer-0 training" grep -q '"ev":"iter"' "$RESULTS/peer-0.jsonl"
peer0=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK_NAME}_peer-0" | head -n 1)
[ -n "$peer0" ] || fail "no running container of ${STACK_NAME}_peer-0"
names=$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('$STACK'))['services']))")
# shellcheck disable=SC2086  # one service name per word
resolved=$(docker exec "$peer0" python3 -c 'import socket, sys
print(" ".join(f"{n}={socket.gethostbyname(n)}" for n in sys.argv[1:]))' $names) \
  || fail "service names do not resolve inside peer-0"
cpu=$(docker exec "$peer0" sh -c 'cat /sys/fs/cgroup/cpu.max 2>/dev/null ||
      echo "$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"')
keys=$(docker exec "$peer0" ls -ln /etc/dlion/keys)
tasks=$(docker stack ps --format '{{.Name}} {{.Node}} {{.CurrentState}}' "$STACK_NAME")
{
  echo "== service names resolved inside peer-0: $resolved"
  echo "== CPU limit inside peer-0 (quota period, us): $cpu"
  echo "== link keys (secrets) inside peer-0:"
  echo "$keys"
  echo "== tasks:"
  echo "$tasks"
} | tee "$LOGS/evidence.txt"

finished() {  # every peer has written its final event (service peer-<id> writes peer-<id>.jsonl)
  for name in $names; do grep -q '"ev":"final"' "$RESULTS/$name.jsonl" 2>/dev/null || return 1; done
}
wait_stack "$RUN_TIMEOUT_S" "every peer's final event" finished
wall_s=$(python3 -c "print(round($(date +%s.%N) - $t_up, 1))")
wait_stack "$STEP_TIMEOUT_S" "the peers' containers stopping" \
  sh -c "[ -z \"\$(docker ps -q --filter label=com.docker.stack.namespace=$STACK_NAME)\" ]"
exit_code='{{index .Config.Labels "com.docker.swarm.service.name"}}={{.State.ExitCode}}'
exit_codes=$(docker ps -aq --filter "label=com.docker.stack.namespace=$STACK_NAME" \
             | xargs -r docker inspect -f "$exit_code")
limits=$(for name in $names; do
  echo "$name=$(docker service inspect -f '{{.Spec.TaskTemplate.Resources.Limits.NanoCPUs}}' "${STACK_NAME}_$name")"
done)
echo "== CPU limit of each service (docker service inspect, nano-CPUs): $(echo "$limits" | xargs)" \
  | tee -a "$LOGS/evidence.txt"

# ---- the checks -------------------------------------------------------------------------------------------------
export RESULTS STACK STACK_NAME CPU="$cpu" LIMITS="$limits" EXIT_CODES="$exit_codes" RESOLVED="$resolved" \
  WALL_S="$wall_s" BUILD_S="$build_s" BASE="$base" MIN_ACCURACY LOGS
report=$(PYTHONPATH=. python3 - <<'EOF'
"""Check the run against the stack file; print the report (JSON) or exit 1 with the failures."""
import json, os, sys
from dlion.metrics import read_events
sys.path.insert(0, "scripts")
from e2e_checks import check_run

services, peer_ids, summary, finished, mean, failures = check_run(
    os.environ["STACK"], os.environ["RESULTS"], float(os.environ["WALL_S"]), float(os.environ["MIN_ACCURACY"]))
codes = sorted(tuple(line.split("=")) for line in os.environ["EXIT_CODES"].split())  # one container a service
if codes != sorted((f"{os.environ['STACK_NAME']}_{name}", "0") for name in services):
    failures.append(f"containers and exit codes {codes} (one each, 0 expected); see {os.environ['LOGS']}")
# the peers found one another by service name, the only addresses they had: every one heard from every other
heard = {}
for pid in peer_ids:
    final = next((e for e in read_events(os.path.join(os.environ["RESULTS"], f"peer-{pid}.jsonl"))
                  if e["ev"] == "final"), {})
    heard[pid] = sorted(int(p) for p, link in final.get("links", {}).items()
                        if p.isdigit() and link["msgs_received"] > 0)
    if heard[pid] != [p for p in peer_ids if p != pid]:
        failures.append(f"peer {pid} received messages from {heard[pid]} only")
resolved = dict(item.split("=") for item in os.environ["RESOLVED"].split())
if sorted(resolved) != sorted(services):
    failures.append(f"service names resolved inside peer-0: {resolved}")
limits = {name: int(nano) / 1e9 for name, nano in (line.split("=") for line in os.environ["LIMITS"].split())}
expected = {name: float(s["deploy"]["resources"]["limits"]["cpus"]) for name, s in services.items()}
if limits != expected:
    failures.append(f"services' CPU limits {limits}, expected {expected}")
quota, period = os.environ["CPU"].split()
if quota == "max" or abs(int(quota) / int(period) - expected["peer-0"]) > 0.01:
    failures.append(f"peer-0's CPU quota is {quota}/{period}, expected {expected['peer-0']} cores")
if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(json.dumps({"wall_s": float(os.environ["WALL_S"]), "peers_finished": finished, "mean_final_accuracy": mean,
                  "worst_final_accuracy": summary["worst_final_accuracy"], "cpu_limits": limits,
                  "cpu_quota_peer0": {"quota_us": int(quota), "period_us": int(period)},
                  "resolved_in_peer0": resolved, "heard_from": heard,
                  "stop_reasons": {p: s["stop_reason"] for p, s in summary["peers"].items()},
                  "iterations": {p: s["iterations"] for p, s in summary["peers"].items()},
                  "exit_codes": {k: int(v) for k, v in codes}, "base_image": os.environ["BASE"],
                  "image_build_s": float(os.environ["BUILD_S"]), "results": os.environ["RESULTS"]}))
EOF
) || fail "the run's checks"

trap - EXIT
teardown || fail "teardown"
say "passed in $(python3 -c "print(round($(date +%s.%N) - $t_start, 1))")s; results in $RESULTS, logs in $LOGS"
echo "$report"
