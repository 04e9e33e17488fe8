#!/usr/bin/env bash
# Builds a release: the two binaries (tinkerdb, tinker) as a tarball with
# their SHA-256 sums, and the container image saved as a tarball, all in
# dist/. Called by .github/workflows/release.yml and by .ci/run.
#
#   scripts/release.sh                      # image from host-built binaries
#   IMAGE_FROM=source scripts/release.sh    # image compiled by the Dockerfile's
#                                           # build stage (needs a registry)
#   NO_IMAGE=1 scripts/release.sh           # binaries only
#
# The image is tagged tinkerdb:VERSION (VERSION from the workspace's
# Cargo.toml) and checked to run `tinkerdb --version` before it is saved.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
triple=$(rustc -vV | sed -n 's/^host: //p')
name=tinkerdb-$version-$triple
dist=dist
rm -rf "$dist" && mkdir -p "$dist/$name"

flock /tmp/cargo.lock cargo build --release --locked -p tinkerdb-core -p tinkerdb-client --bins
for bin in tinkerdb tinker; do
  cp "target/release/$bin" "$dist/$name/$bin"
  strip "$dist/$name/$bin" 2>/dev/null || true
done
"$dist/$name/tinkerdb" --version | grep -q "$version" \
  || { echo "release: tinkerdb --version does not say $version" >&2; exit 1; }
cp README.md docs/config.sample.toml "$dist/$name/"
tar -C "$dist" -czf "$dist/$name.tar.gz" "$name"
(cd "$dist/$name" && sha256sum tinkerdb tinker) > "$dist/$name.binaries.sha256"

if [ -z "${NO_IMAGE:-}" ]; then
  image=tinkerdb:$version
  if [ "${IMAGE_FROM:-prebuilt}" = source ]; then
    docker build -f docker/Dockerfile -t "$image" .
  else
    NO_CARGO=1 IMAGE=$image scripts/docker-image.sh >/dev/null
  fi
  docker run --rm --entrypoint tinkerdb "$image" --version | grep -q "$version" \
    || { echo "release: image $image does not run tinkerdb $version" >&2; exit 1; }
  docker save "$image" | gzip -1 > "$dist/$name.image.tar.gz"
  echo "release: image $image, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f MB", $1/1e6}')"
fi
rm -rf "${dist:?}/$name"
(cd "$dist" && sha256sum -- *.tar.gz > SHA256SUMS)
echo "release: $(cd "$dist" && ls)"
