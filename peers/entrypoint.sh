#!/bin/sh
# Entry point of a peer container: the same `dlion peer` the launcher runs, identity and config from the
# environment (PEER_ID, DLION_CONFIG, DLION_OUT). exec, so SIGTERM reaches the peer, which stops cleanly.
set -eu
: "${PEER_ID:?set PEER_ID to this peer's id in the config}"
exec dlion peer --config "${DLION_CONFIG:-/etc/dlion/config.yaml}" --id "$PEER_ID" --out "${DLION_OUT:-/results}" "$@"
