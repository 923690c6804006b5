# Shared by the end-to-end scripts with a real Docker engine (scripts/compose_e2e.sh, scripts/swarm_e2e.sh); sourced,
# not run. The sourcing script sets E2E (its name in messages) and LOGS (its log directory) first, and defines
# remove_run, which removes what the run made on the engine and prints what it could not. This provides:
# say/fail, need_debs (install missing Debian packages), preflight (root, Python, the log directory, Debian packages),
# wait_for (poll a command), start_engine/stop_engine (a dockerd of our own when none answers; DOCKERD_PID is set
# while it runs), peer_image (the base image, pulled or made with debootstrap when no registry answers, then the peer
# image built by scripts/peer_image.sh; sets `base` and `build_s`) and teardown (remove_run, then the engine we
# started; fails if anything is left), which runs on exit. The base image's root file system is cached in
# $DLION_CACHE (default ~/.cache/dlion).

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
LOCAL_BASE="dlion-base:bookworm"
CACHE="${DLION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dlion}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKERD_PID=""

say() { echo "$E2E: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

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

preflight() {  # preflight DEBIAN_PACKAGE...
  [ "$(id -u)" = 0 ] || fail "run as root: it installs packages and may start dockerd"
  python3 -c 'import yaml, psutil' 2>/dev/null || fail "python3 lacks PyYAML or psutil: run scripts/install.sh first"
  mkdir -p "$LOGS"
  need_debs "$@"
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

start_engine() {  # a dockerd of our own if none answers (iptables and the default bridge are not available here)
  if ! docker info >/dev/null 2>&1; then
    need_debs docker.io
    say "starting dockerd (log: $LOGS/dockerd.log)"
    dockerd --iptables=false --bridge=none >"$LOGS/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_for 60 "dockerd answering" docker info
  fi
}

stop_engine() {  # the dockerd we started, if any; stopping it stops the containerd it started
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
    DOCKERD_PID=""
    rmdir /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker 2>/dev/null || true  # its cgroups are left empty
  fi
}

teardown() {
  local left=""
  if docker info >/dev/null 2>&1; then left=$(remove_run | xargs); fi
  stop_engine
  [ -z "$left" ] || { say "left behind: $left"; return 1; }
}
trap 'status=$?; teardown; exit $status' EXIT

peer_image() {  # the base image (pulled, or made here), then the peer image on it
  base="$BASE_IMAGE"
  if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 120 docker pull -q "$base" >/dev/null 2>&1; then
    base="$LOCAL_BASE"
    say "$BASE_IMAGE cannot be pulled: using $base, made with debootstrap"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
      local tarball="$CACHE/base-bookworm.tar" rootfs
      mkdir -p "$CACHE"
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
  local t_build
  t_build=$(date +%s.%N)
  bash scripts/peer_image.sh "$base" >"$LOGS/build.log" 2>&1 || fail "building the peer image; see $LOGS/build.log"
  build_s=$(python3 -c "import sys; print(round($(date +%s.%N) - $t_build, 1))")
  say "peer image built on $base in ${build_s}s"
}
