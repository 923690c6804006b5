#!/bin/sh
# Entry point of a peer container: the same `dlion peer` the launcher runs, identity and config from the
# environment (PEER_ID, DLION_CONFIG, DLION_OUT); the arguments are `--set KEY=VALUE` overrides of the config.
# Started as root (the image's default user), it first shapes the container's egress device named by DLION_SHAPE
# per destination peer (`dlion emulate shape`: tc needs root and NET_ADMIN), hands the results directory to the user
# `dlion` and drops to it with no capabilities left: the peer itself never runs as root. Started as another user, it
# runs the peer as that user (no shaping). Like `dlion run`, a run drops this peer's events of an earlier run.
# exec all the way, so SIGTERM reaches the peer, which stops cleanly.
set -eu
: "${PEER_ID:?set PEER_ID to this peer's id in the config}"
config="${DLION_CONFIG:-/etc/dlion/config.yaml}"
out="${DLION_OUT:-/results}"
drop=""
if [ "$(id -u)" = 0 ]; then
  if [ -n "${DLION_SHAPE:-}" ]; then
    dlion emulate shape "$config" --id "$PEER_ID" --dev "$DLION_SHAPE" "$@" >/dev/null
  fi
  mkdir -p "$out"
  chown dlion:dlion "$out"
  drop="setpriv --reuid=dlion --regid=dlion --init-groups --inh-caps=-all --bounding-set=-all --no-new-privs"
fi
rm -f "$out/peer-$PEER_ID.jsonl"
# shellcheck disable=SC2086  # $drop is a command with its options, or nothing
exec $drop dlion peer --config "$config" --id "$PEER_ID" --out "$out" "$@"
