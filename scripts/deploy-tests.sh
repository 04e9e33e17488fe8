#!/usr/bin/env bash
# Deployment tests on real containers and an emulated cloud: the Ansible
# role deploying a 3-node cluster into systemd containers (site.yml, a
# second run with no change, rolling restart under a writer, upgrade), then
# the AWS playbook against moto on loopback (provision, idempotent rerun,
# teardown). Installs what it needs with pip (ansible 12, ansible-lint,
# moto, boto3). Called by .ci/run and by the GitHub workflow's deploy job.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts_dir:$PATH"
if ! python3 -c 'import ansible, moto, boto3' 2>/dev/null || ! command -v ansible-lint >/dev/null; then
  echo "deploy tests: installing ansible, ansible-lint, moto[server], boto3 (pip)"
  python3 -m pip install --quiet -r ansible/requirements.txt
fi
echo "deploy tests: ansible-lint (offline, profile production)"
(cd ansible && ansible-lint --offline)
TIMEOUT=${TIMEOUT:-900} ansible/tests/run.sh
# The emulator test takes 1-2 minutes; its own default bound (170 s) is for
# a quiet machine.
CLOUD_TEST_LIMIT=${CLOUD_TEST_LIMIT:-400} ansible/cloud/tests/run.sh
