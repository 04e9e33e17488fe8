#!/usr/bin/env bash
# Tests the one-command AWS deployment (scripts/deploy-aws -> ansible/cloud/aws.yml) against moto's
# EC2 emulator on 127.0.0.1, never real AWS: refusals without a safe admin CIDR, up, checks with
# boto3, up again (changed=0, same ids), down, down again (nothing tagged left). 1-1.5 minutes.
#
#   ansible/cloud/tests/run.sh
#
# Needs ansible-playbook (ansible 12: amazon.aws bundled). moto[server] and boto3 are pip-installed
# if missing (for $PYTHON, default python3), saying so. Bounded: the install by 300 s, the test by
# CLOUD_TEST_LIMIT seconds (170), each ansible run by 120.
set -euo pipefail
py=${PYTHON:-python3}
start=$SECONDS
say() { echo "== [$((SECONDS - start))s] $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
if [ -z "${_CLOUD_TEST_BOUNDED:-}" ]; then
  command -v ansible-playbook >/dev/null || fail "ansible-playbook not found (pip install 'ansible>=12,<13')"
  if ! "$py" -c 'import boto3, moto.server, flask_cors' 2>/dev/null; then
    say "moto[server] or boto3 missing for $py: installing: pip install 'moto[server]>=5' boto3"
    timeout 300 "$py" -m pip install -q 'moto[server]>=5' boto3
  fi
  export _CLOUD_TEST_BOUNDED=1
  exec timeout -k 10 "${CLOUD_TEST_LIMIT:-170}" "$0" "$@"
fi
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
deploy=$repo/scripts/deploy-aws
step_start=$SECONDS

tmp=$(mktemp -d)
moto_pid=
cleanup() {
  rc=$?
  trap - EXIT INT TERM
  [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    echo "--- logs kept in $tmp ($((SECONDS - start))s, exit $rc)" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# moto on a free loopback port; fake credentials; no AWS configuration of the machine is read.
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$py" -m moto.server -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_DEFAULT_PROFILE
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export ANSIBLE_NOCOLOR=1 ANSIBLE_STDOUT_CALLBACK=default ANSIBLE_RETRY_FILES_ENABLED=0
for _ in $(seq 100); do
  "$py" -c "import urllib.request; urllib.request.urlopen('$AWS_ENDPOINT_URL/moto-api/', timeout=1)" 2>/dev/null && break
  kill -0 "$moto_pid" 2>/dev/null || { cat "$tmp/moto.log"; fail "moto server exited"; }
  sleep 0.2
done
say "moto server on $AWS_ENDPOINT_URL (pid $moto_pid)"

export CLUSTER=tinkerdb-ci ADMIN_CIDR=198.51.100.0/24 KEY=tinkerdb-ci INSTANCE_TYPE=t3.small
AMI=$("$py" - <<'EOF'
import os, boto3
ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
ec2.create_key_pair(KeyName=os.environ["KEY"])
images = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}])["Images"]
print(sorted(i["ImageId"] for i in images if "ubuntu" in i.get("Name", "").lower())[0])
EOF
)
export AMI
say "key pair $KEY, AMI $AMI (moto's)"

# Runs deploy-aws; output to $tmp/NAME.log; returns its status.
run() {
  local name=$1
  shift
  step_start=$SECONDS
  set +e
  (cd "$tmp" && timeout 120 "$deploy" "$@" --region "$AWS_REGION" --cluster "$CLUSTER") >"$tmp/$name.log" 2>&1
  local rc=$?
  set -e
  say "$name: exit $rc in $((SECONDS - step_start))s; $(grep -E '^localhost +:' "$tmp/$name.log" | tr -s ' ' || echo 'no recap')"
  return "$rc"
}
up_args=(--ami "$AMI" --key "$KEY" --instance-type "$INSTANCE_TYPE" --no-deploy)
recap_changed0() { grep -Eq '^localhost +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0 ' "$tmp/$1.log"; }
recap_ok() { grep -Eq '^localhost +: ok=[0-9]+ +changed=[0-9]+ +unreachable=0 +failed=0 ' "$tmp/$1.log"; }
show() { tail -40 "$tmp/$1.log" >&2; }
# Whether the log says it (whitespace normalised: the yaml result format wraps long lines).
says() { tr -s '[:space:]' ' ' <"$tmp/$1.log" | grep -q "$2"; }

# 1. Refusals: no admin CIDR, and a world-open one; nothing is made.
if run no-cidr up "${up_args[@]}"; then show no-cidr; fail "up without --admin-cidr succeeded"; fi
says no-cidr 'tinkerdb_admin_cidr is required' || { show no-cidr; fail "no clear message without --admin-cidr"; }
if run open-cidr up "${up_args[@]}" --admin-cidr 0.0.0.0/0; then show open-cidr; fail "up with 0.0.0.0/0 succeeded"; fi
says open-cidr 'such as 0.0.0.0/0) is refused' || { show open-cidr; fail "no clear message for 0.0.0.0/0"; }
"$py" "$here/check.py" gone || fail "resources were made by a refused run"
say "refusals: ok: $(tr -s '[:space:]' ' ' <"$tmp/no-cidr.log" | grep -o 'tinkerdb_admin_cidr is required: [^(]*' | head -1)"

# 2. Up: everything exactly as intended.
run up1 up "${up_args[@]}" --admin-cidr "$ADMIN_CIDR" || { show up1; fail "up failed"; }
recap_ok up1 || { show up1; fail "up: unexpected recap"; }
"$py" "$here/check.py" up "$tmp/state.json" "$tmp/up1.log" || { show up1; fail "up: resources not as intended"; }

# 3. Up again: nothing changes.
run up2 up "${up_args[@]}" --admin-cidr "$ADMIN_CIDR" || { show up2; fail "second up failed"; }
recap_changed0 up2 || { grep -E '^(changed|TASK)' "$tmp/up2.log" | grep -B1 '^changed' >&2; fail "second up changed something"; }
"$py" "$here/check.py" same "$tmp/state.json" || fail "second up: resources differ"

# 4. Down: nothing tagged left; down again changes nothing.
run down1 down || { show down1; fail "down failed"; }
"$py" "$here/check.py" gone || { show down1; fail "down left resources"; }
run down2 down || { show down2; fail "second down failed"; }
recap_changed0 down2 || { show down2; fail "second down changed something"; }

say "PASS: ansible/cloud (moto) in $((SECONDS - start))s"
