#!/usr/bin/env bash
# Builds the TinkerDB image from binaries built on this host, for machines
# without registry access: the runtime stage of docker/Dockerfile on the
# local base image of scripts/docker-base.sh, target `prebuilt`, with the
# legacy builder (no BuildKit needed). With registry access, the one command
# is instead: docker build -f docker/Dockerfile -t tinkerdb .
#
#   scripts/docker-image.sh                 # -> tinkerdb:local
#   IMAGE=tinkerdb:dev scripts/docker-image.sh
#   NO_CARGO=1 scripts/docker-image.sh      # use target/release as it is
set -euo pipefail
cd "$(dirname "$0")/.."
image=${IMAGE:-tinkerdb:local}
if [ -z "${NO_CARGO:-}" ]; then
  flock /tmp/cargo.lock cargo build --release -q -p tinkerdb-core -p tinkerdb-client --bins
fi
for bin in tinkerdb tinker; do
  [ -x "target/release/$bin" ] || { echo "docker-image.sh: target/release/$bin missing" >&2; exit 1; }
done
# Stripped copies (the release profile keeps line tables: debug = 1).
mkdir -p target/docker-bin
for bin in tinkerdb tinker; do
  cp "target/release/$bin" "target/docker-bin/$bin.tmp"
  strip "target/docker-bin/$bin.tmp" 2>/dev/null || true
  mv "target/docker-bin/$bin.tmp" "target/docker-bin/$bin"
done
base=$(scripts/docker-base.sh)
DOCKER_BUILDKIT=0 docker build -q -f docker/Dockerfile --target prebuilt \
  --build-arg BASE_IMAGE="$base" -t "$image" . >/dev/null
docker run --rm --entrypoint tinkerdb "$image" --version >/dev/null \
  || { echo "docker-image.sh: $image has no working tinkerdb" >&2; exit 1; }
echo "$image"
