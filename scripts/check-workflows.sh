#!/usr/bin/env bash
# Validates the GitHub Actions workflow files offline: each against the
# published workflow schema that check-jsonschema vendors
# (--builtin-schema vendor.github-workflows), then checks that every action
# is pinned to a full commit hash and that every job has a timeout and
# explicit permissions (least privilege). Called by .ci/run and by ci.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts_dir:$PATH"
if ! command -v check-jsonschema >/dev/null; then
  echo "check-workflows: installing check-jsonschema (pip)"
  python3 -m pip install --quiet "check-jsonschema>=0.29"
fi
if ! command -v zizmor >/dev/null; then
  echo "check-workflows: installing zizmor (pip)"
  python3 -m pip install --quiet "zizmor>=1.20"
fi
files=(.github/workflows/*.yml)
check-jsonschema --builtin-schema vendor.github-workflows "${files[@]}"
python3 - "${files[@]}" <<'PY'
import re, sys, yaml
bad = []
for path in sys.argv[1:]:
    doc = yaml.safe_load(open(path))
    if "permissions" not in doc:
        bad.append(f"{path}: no top-level permissions")
    for name, job in doc["jobs"].items():
        if "timeout-minutes" not in job:
            bad.append(f"{path}: job {name} has no timeout-minutes")
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses and not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", uses):
                bad.append(f"{path}: job {name}: '{uses}' is not pinned to a commit hash")
            run = step.get("run")
            if run and len([l for l in run.splitlines() if l.strip()]) > 3:
                bad.append(f"{path}: job {name}: a run step of more than 3 lines belongs in a script .ci/run also runs")
for b in bad:
    print("check-workflows:", b)
sys.exit(1 if bad else 0)
PY
zizmor --offline --no-progress "${files[@]}"
echo "check-workflows: ${#files[@]} workflow files valid"
