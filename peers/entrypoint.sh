#!/bin/sh
# Entry point of a peer container: the same `dlion peer` the launcher runs, identity and config from the
# environment (PEER_ID, DLION_CONFIG, DLION_OUT); the arguments are `--set KEY=VALUE` overrides of the config.
# Started as root (the image's default user), it first shapes the container's egress device named by DLION_SHAPE
# per destination peer (`dlion emulate shape`: tc needs root and NET_ADMIN), hands the results directory to the user
# `dlion` and drops to it with no capabilities left: the peer itself never runs as root. Started as another user, it
# runs the peer as that user (no shaping). Like `dlion run`, a run drops this peer's events of an earlier run, unless
# that run did not end (no `final` event): then this is a restart (restart policy) of a peer that crashed, which keeps
# its events and continues from its latest checkpoint, if any, then rejoins the others at their round.
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
log="$out/peer-$PEER_ID.jsonl"
resume=""
if [ -s "$log" ] && ! tail -n 1 "$log" | grep -q '"ev":"final"'; then
  resume="--resume-at latest"
else
  rm -f "$log"
fi
# shellcheck disable=SC2086  # $drop and $resume are options, or nothing
exec $drop dlion peer --config "$config" --id "$PEER_ID" --out "$out" $resume "$@"
