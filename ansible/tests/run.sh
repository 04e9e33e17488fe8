#!/usr/bin/env bash
# Ansible tests: the tinkerdb role and its playbooks (site.yml,
# rolling-restart.yml, upgrade.yml) against three systemd containers standing
# in for VMs, reached with `docker exec` (inventories/test/hosts.yml).
#   ansible/tests/run.sh
# Env: TIMEOUT (whole test, default 600 s), BIN (directory holding tinkerdb and
# tinker, default target/release: the test copies and strips them first),
# KEEP=1 (leave the containers running after the test, for debugging).
# Makes the local base image once (scripts/docker-base.sh) and the systemd
# host image once (tagged by its Dockerfile's hash). Skips (exit 0, saying
# so) without a Docker engine. Cleans up its containers and network on exit,
# failure included. One test at a time per machine (a lock; fixed subnet).
# Needs: docker, ansible-core >= 2.15 with community.docker (the `ansible`
# package bundles it), python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
log() { echo "ansible tests: $*"; }
if ! docker info >/dev/null 2>&1; then
  log "SKIPPED: no Docker engine reachable"; exit 0
fi
for tool in ansible-playbook ansible-galaxy; do
  command -v "$tool" >/dev/null || { log "FAIL: $tool is not installed (pip install ansible)"; exit 1; }
done
if ! ansible-doc -t connection community.docker.docker >/dev/null 2>&1; then
  log "FAIL: the community.docker collection is missing (pip install ansible, or ansible-galaxy collection install community.docker)"; exit 1
fi
start=$(date +%s)
exec 8>/tmp/tinkerdb-ansible-test.lock
flock -w 900 8 || { log "FAIL: another Ansible test holds /tmp/tinkerdb-ansible-test.lock"; exit 1; }

export TINKERDB_ANSIBLE_PREFIX=${TINKERDB_ANSIBLE_PREFIX:-tdbans}
export SUBNET=${SUBNET:-172.31.237}
export PORT_PREFIX=${PORT_PREFIX:-3}
work=$(mktemp -d /tmp/tdbans-work.XXXXXX)
export WORK=$work
cleanup() {
  set +e
  if [ -z "${KEEP:-}" ]; then
    docker ps -aq --filter "label=tinkerdb-ansible-test=$TINKERDB_ANSIBLE_PREFIX" | xargs -r docker rm -f -v >/dev/null
    docker network rm "$TINKERDB_ANSIBLE_PREFIX-net" >/dev/null 2>&1
  else
    log "KEEP=1: containers ${TINKERDB_ANSIBLE_PREFIX}-node1..3 left running"
  fi
  [ -n "${KEEP:-}" ] && log "KEEP=1: playbook logs in $work" || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup_leftovers() {
  docker ps -aq --filter "label=tinkerdb-ansible-test=$TINKERDB_ANSIBLE_PREFIX" | xargs -r docker rm -f -v >/dev/null
  docker network rm "$TINKERDB_ANSIBLE_PREFIX-net" >/dev/null 2>&1 || true
}
cleanup_leftovers
log "engine $(docker version -f '{{.Server.Version}}'), cgroup fs $(stat -fc %T /sys/fs/cgroup), $(ansible --version | head -1)"

# The binaries: copied (the build directory may change under us) and stripped.
bin=${BIN:-$root/target/release}
for b in tinkerdb tinker; do
  [ -x "$bin/$b" ] || { log "FAIL: $bin/$b is missing (cargo build --release)"; exit 1; }
  cp "$bin/$b" "$work/$b"
  if command -v strip >/dev/null; then strip "$work/$b"; fi
done
export TINKERDB_ANSIBLE_BIN=$work

t=$(date +%s)
base=$(scripts/docker-base.sh)
tag="tinkerdb-ansible-host:$( (cat ansible/tests/Dockerfile.systemd; docker image inspect -f '{{.Id}}' "$base") | sha256sum | cut -c1-12)"
if ! docker image inspect "$tag" >/dev/null 2>&1; then
  log "building $tag from $base ..."
  DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$base" -t "$tag" - <ansible/tests/Dockerfile.systemd >/dev/null
fi
export HOST_IMAGE=$tag
log "host image $tag ready in $(( $(date +%s) - t )) s"

# In the background, so that a signal to this script stops the test at once
# (then the EXIT trap cleans up).
timeout -k 10 "${TIMEOUT:-600}" python3 ansible/tests/ansible_test.py &
test_pid=$!
trap 'kill -TERM "$test_pid" 2>/dev/null; wait "$test_pid" 2>/dev/null || true; exit 130' INT TERM
rc=0
wait "$test_pid" || rc=$?
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && log "FAIL: timed out after ${TIMEOUT:-600} s"
  log "FAILED (exit $rc) after $(( $(date +%s) - start )) s"
  exit "$rc"
fi
log "passed in $(( $(date +%s) - start )) s"
