#!/usr/bin/env bash
# Builds the peer image (peers/Dockerfile, tag dlion-peer) so that the build itself needs no network: the wheelhouse
# (dlion and its dependencies as wheels for the image's Python 3.11) and the Debian packages for `tc` that the base
# image lacks are fetched here on the host, which needs Python 3.11 with pip, apt and a running Docker engine.
# Usage: bash scripts/peer_image.sh [BASE_IMAGE]   (default python:3.11-slim-bookworm, present locally or pullable)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE="${1:-python:3.11-slim-bookworm}"
IMAGE="${DLION_IMAGE:-dlion-peer}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "peer_image.sh: $PYTHON is not Python 3.11, the image's: its wheels would not fit" >&2; exit 1; }
# pip's cache keeps reruns quick. dlion's own wheel goes apart (the image installs the dependencies in a layer of
# their own), built with a fixed SOURCE_DATE_EPOCH so that it, hence Docker's layer cache, depends on the source only.
rm -rf wheelhouse
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --disable-pip-version-check --prefer-binary -w wheelhouse \
  '.[tf]'
mkdir wheelhouse/dlion
mv wheelhouse/dlion-*.whl wheelhouse/dlion/

# tc: iproute2 and those of its dependencies that the base image lacks, as apt would install them there.
mkdir -p wheelhouse/debs
docker run --rm --entrypoint cat "$BASE_IMAGE" /var/lib/dpkg/status > wheelhouse/debs/status
needed=$(apt-get -s -o Dir::State::status="$PWD/wheelhouse/debs/status" install --no-install-recommends iproute2 \
         | awk '/^Inst /{print $2}')
rm wheelhouse/debs/status
if [ -n "$needed" ]; then
  # shellcheck disable=SC2086  # one package name per word; stale package lists get one update
  download() { (cd wheelhouse/debs && apt-get download -qq -o APT::Sandbox::User=root $needed); }
  download || { apt-get update -qq && download; }
fi

docker build -f peers/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$IMAGE" .
