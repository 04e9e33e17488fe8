#!/usr/bin/env bash
# Makes (or reuses) a local Debian bookworm base image for the runtime stage of
# docker/Dockerfile, for machines that cannot pull from a registry: a
# `debootstrap --variant=minbase` of bookworm imported with `docker import`.
# Idempotent: if the tag exists, it is reused (cached by tag). Prints the tag.
#
#   scripts/docker-base.sh                       # -> tinkerdb-base:bookworm
#   BASE_TAG=mybase:1 scripts/docker-base.sh
#   REBUILD=1 scripts/docker-base.sh             # make it again
# Env: MIRROR (default http://deb.debian.org/debian), SUITE (default bookworm).
set -euo pipefail
tag=${BASE_TAG:-tinkerdb-base:bookworm}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
if [ -z "${REBUILD:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"; exit 0
fi
# One maker at a time (two test runs starting together share the result).
exec 9>/tmp/tinkerdb-docker-base.lock
flock 9
if [ -z "${REBUILD:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"; exit 0
fi
if ! command -v debootstrap >/dev/null; then
  (apt-get install -y -q debootstrap || (apt-get update -q && apt-get install -y -q debootstrap)) >&2
fi
[ "$(id -u)" = 0 ] || { echo "docker-base.sh: debootstrap needs root" >&2; exit 2; }
root=$(mktemp -d /tmp/tinkerdb-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "docker-base.sh: debootstrap --variant=minbase $suite from $mirror ..." >&2
debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
# Slim it like the official debian:*-slim images: no apt lists, caches, docs,
# man pages or translations, now or in packages installed later.
chroot "$root" apt-get clean
cat >"$root"/etc/dpkg/dpkg.cfg.d/docker-slim <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
find "$root"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
  "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/tmp/*
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["bash"]' - "$tag" >&2
echo "$tag"
