#!/usr/bin/env bash
# Installs everything dlion needs on a fresh Debian 12 machine: Debian's Fashion-MNIST files, network tools and
# docker-compose (the tests validate the committed compose file with it), then dlion itself (editable) with TensorFlow
# and the test and benchmark tools into the current Python. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
DEBS="dataset-fashion-mnist iproute2 docker-compose"
missing=""
for pkg in $DEBS; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[tf,test,bench]'
# pyenv only sees new console scripts (the `dlion` command) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
echo "dlion installed: $("$PYTHON" -c 'import dlion, sys; print(sys.executable)')"
