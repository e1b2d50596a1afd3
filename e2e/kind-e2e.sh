#!/usr/bin/env bash
# End to end on a laptop with Docker: kind cluster, images built and loaded, chart
# installed with the laptop stack, the e2e suite run against it, a report at the end.
#
#   e2e/kind-e2e.sh            (also: make e2e-kind)
#   KUBERL_KEEP_CLUSTER=0 e2e/kind-e2e.sh   delete the cluster afterwards
#
# Needs: docker, kind, the venv (pip install -e '.[dev]') and e2e/cluster/build.sh (pinned
# kubectl and helm; falls back to those on PATH).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
name="${KUBERL_KIND_NAME:-kuberl}"
kubeconfig="${TMPDIR:-/tmp}/kind-$name.kubeconfig"
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "building images"
docker build -f operator/Dockerfile -t kuberl/operator:dev .
docker build -f workloads/Dockerfile -t kuberl/workload-cpu:dev .

step "creating the kind cluster, loading images, installing the chart"
# kind-up.sh loads kuberl/operator:dev and kuberl/workload-cpu:dev and installs the
# chart with e2e/kind-values.yaml, the values the e2e suite upgrades with on kind.
"$repo/e2e/kind-up.sh"
kind get kubeconfig --name "$name" > "$kubeconfig"

step "running the e2e suite against kind"
status=0
KUBECONFIG="$kubeconfig" "$repo/.venv/bin/pytest" -m e2e e2e -v -rA --timeout=1800 || status=$?

step "report"
kubectl_bin="$("$repo/e2e/cluster/build.sh" --print-dir)/kubectl"
[[ -x "$kubectl_bin" ]] || kubectl_bin=kubectl
"$kubectl_bin" --kubeconfig "$kubeconfig" -n kuberl-system get deploy,sts,pods -o wide || true
"$kubectl_bin" --kubeconfig "$kubeconfig" get rljobs,rolloutpools,agentenvs -A || true
if (( status != 0 )); then
  "$kubectl_bin" --kubeconfig "$kubeconfig" -n kuberl-system logs deploy/kuberl-operator --tail=200 || true
fi
echo "e2e on kind: $([[ $status == 0 ]] && echo PASSED || echo FAILED) in $(( $(date +%s) - start ))s"
echo "cluster kept: KUBECONFIG=$kubeconfig  (delete: e2e/kind-up.sh --delete)"
if [[ "${KUBERL_KEEP_CLUSTER:-1}" == 0 ]]; then "$repo/e2e/kind-up.sh" --delete; fi
exit $status
