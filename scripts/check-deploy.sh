#!/usr/bin/env bash
# Static checks of deploy/ (no daemons, no cluster, no Docker engine):
# kustomize renders of both overlays + offline schema/reference validation +
# yamllint, promtool (rules, config, rule unit tests), the Dockerfile linter,
# and the PrometheusRule being in sync with the alert rules. The same checks,
# plus the image build script and a live Prometheus against real daemons, run
# in ctest as deploy_test (tests/integration/deploy).
set -euo pipefail
cd "$(dirname "$0")/.."
py=/usr/bin/python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
step() { echo "== $*"; }
run() { if ! "$@"; then echo "FAILED: $*" >&2; fail=1; fi; }

step "yamllint deploy/"
run yamllint -c deploy/yamllint.yml deploy/

# The gpu overlay reads secrets/ files: render a copy with throwaway ones.
cp -r deploy/k8s "$tmp/k8s"
rm -rf "$tmp/k8s/overlays/gpu/secrets"
"$tmp/k8s/overlays/gpu/make-secrets.sh" >/dev/null
for overlay in cpu-dev gpu; do
  step "kubectl kustomize overlays/$overlay | validate_k8s | yamllint"
  if kubectl kustomize "$tmp/k8s/overlays/$overlay" >"$tmp/$overlay.yaml" 2>"$tmp/$overlay.err"; then
    run $py deploy/tools/validate_k8s.py "$tmp/$overlay.yaml"
    run yamllint -c deploy/yamllint.yml "$tmp/$overlay.yaml"
  else
    cat "$tmp/$overlay.err" >&2
    fail=1
  fi
done

step "PrometheusRule in sync with deploy/prometheus/rules"
run $py deploy/tools/sync_rules.py --check
step "promtool"
run promtool check rules deploy/prometheus/rules/llmt-alerts.yml
run promtool check config deploy/prometheus/prometheus.yml
run promtool test rules deploy/prometheus/rules/llmt-alerts.test.yml
step "Dockerfiles"
run $py deploy/tools/lint_dockerfiles.py
bd="${LLMT_BUILD_DIR:-build}"
if [[ -x "$bd/coordinator/llmt-coordinator" && -x "$bd/worker/daemon/llmt-worker" ]]; then
  step "daemon flags accepted by the binaries in $bd"
  run $py deploy/tools/check_flags.py --binary "coordinator=$bd/coordinator/llmt-coordinator" \
    --binary "worker=$bd/worker/daemon/llmt-worker" \
    --manifests "$tmp/cpu-dev.yaml" --manifests "$tmp/gpu.yaml" \
    --dockerfile coordinator=deploy/docker/coordinator.Dockerfile \
    --dockerfile worker=deploy/docker/worker.Dockerfile
else
  echo "(daemon flag check skipped: no llmt-coordinator/llmt-worker in $bd; set LLMT_BUILD_DIR)"
fi
step "Grafana dashboard JSON"
run $py -c 'import json,sys; d=json.load(open("deploy/grafana/dashboards/llmt.json")); sys.exit(0 if d["panels"] else 1)'

if [[ $fail -ne 0 ]]; then
  echo "check-deploy: FAILED" >&2
  exit 1
fi
echo "check-deploy: all deploy checks passed"
