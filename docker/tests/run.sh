#!/usr/bin/env bash
# Container tests: the image (docker/Dockerfile) and the 3-node compose
# cluster (docker/compose.yaml), on real containers. Called by .ci/run.
#   docker/tests/run.sh              # build the image from host binaries, run all
#   ONLY=image docker/tests/run.sh   # or ONLY=compose
#   NO_CARGO=1 ...                   # reuse target/release as it is
# Makes the local base image once (scripts/docker-base.sh, cached by tag).
# Bounded (TIMEOUT, default 900 s); cleans up its containers, network and
# volumes on exit, failure included. Skips (exit 0, saying so) without Docker.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! docker info >/dev/null 2>&1; then
  echo "docker tests: SKIPPED: no Docker engine reachable"; exit 0
fi
if docker compose version >/dev/null 2>&1; then
  compose="docker compose"
elif command -v docker-compose >/dev/null; then
  compose="docker-compose"
else
  echo "docker tests: FAIL: neither 'docker compose' nor 'docker-compose' is installed"; exit 1
fi
python3 -c 'import redis' 2>/dev/null || pip install -q redis
export PROJECT=${PROJECT:-tdbtest$$}
export IMAGE=${IMAGE:-tinkerdb:test}
export SUBNET=${SUBNET:-172.31.239}
export PORT_PREFIX=${PORT_PREFIX:-4}
export TINKER=${TINKER:-$PWD/target/release/tinker}
export COMPOSE=$compose
cleanup() {
  set +e
  docker ps -aq --filter "name=^${PROJECT}-" | xargs -r docker rm -f -v >/dev/null
  TINKERDB_IMAGE=$IMAGE TINKERDB_SUBNET=$SUBNET TINKERDB_PORT_PREFIX=$PORT_PREFIX \
    sh -c "cd docker && $compose -p '$PROJECT' -f compose.yaml down -v --remove-orphans -t 5" >/dev/null 2>&1
  docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker rm -f -v >/dev/null
  docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker network rm >/dev/null
  docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm >/dev/null
  rm -f "${TMPDIR:-/tmp}/${PROJECT}-seccomp-default.json"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start=$(date +%s)
echo "docker tests: engine $(docker version -f '{{.Server.Version}}'), compose: $compose, project $PROJECT"
base=$(scripts/docker-base.sh)
# memlock: unlimited as docker/compose.yaml asks, unless this engine may not
# raise it (a daemon without CAP_SYS_RESOURCE): then its own hard limit.
if docker run --rm --ulimit memlock=-1:-1 "$base" true >/dev/null 2>&1; then
  export MEMLOCK=-1
else
  MEMLOCK=$(( $(docker run --rm "$base" sh -c 'ulimit -Hl') * 1024 ))
  export MEMLOCK
  echo "docker tests: this engine cannot set memlock=-1 (no CAP_SYS_RESOURCE); using its limit, $MEMLOCK bytes"
fi
export TINKERDB_MEMLOCK=$MEMLOCK
IMAGE=$IMAGE scripts/docker-image.sh >/dev/null
echo "docker tests: image $IMAGE built in $(( $(date +%s) - start )) s, size $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
timeout -k 10 "${TIMEOUT:-900}" python3 docker/tests/docker_test.py
echo "docker tests: passed in $(( $(date +%s) - start )) s"
