#!/usr/bin/env bash
# Formatting and lints: `cargo fmt --check` and `cargo clippy -D warnings` on
# the whole workspace (every target). Called by .ci/run and by the GitHub
# workflow's lint job. A toolchain without rustfmt or clippy cannot fetch
# them here: each missing tool is reported as SKIPPED, not failed.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy 2>/dev/null || true
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "lint: SKIPPED cargo fmt: rustfmt is not installed in this toolchain"
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -- -D warnings
else
  echo "lint: SKIPPED cargo clippy: clippy is not installed in this toolchain"
fi
