#!/usr/bin/env bash
# Create the kuberl kind cluster on a laptop (needs Docker and kind; CI uses the local
# control plane in e2e/cluster instead).
#
#   e2e/kind-up.sh                  create cluster, fake GPUs, load images, install chart
#   KUBERL_IMAGES="kuberl/operator:dev" e2e/kind-up.sh   images to `kind load` (default:
#                                   the ones e2e/kind-values.yaml uses, when built)
#   KUBERL_HELM_VALUES=my.yaml KUBERL_HELM_ARGS="--set x=y" e2e/kind-up.sh
#   e2e/kind-up.sh --delete         delete the cluster
#
# The cluster tests run against it when KUBECONFIG names its kubeconfig:
#   kind get kubeconfig --name kuberl > /tmp/kind-kuberl.yaml
#   KUBECONFIG=/tmp/kind-kuberl.yaml .venv/bin/pytest -m cluster tests/cluster
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${KUBERL_KIND_NAME:-kuberl}"
gpus_per_node="${KUBERL_FAKE_GPUS:-8}"
# The images e2e/kind-values.yaml points the chart at (built locally, pullPolicy Never).
images="${KUBERL_IMAGES-kuberl/operator:dev kuberl/workload-cpu:dev}"
chart="$repo/charts/kuberl"
values="${KUBERL_HELM_VALUES:-$repo/e2e/kind-values.yaml}"
ctx="kind-$name"

need() { command -v "$1" >/dev/null || { echo "kind-up.sh: $1 not found" >&2; exit 1; }; }
need docker
need kind

# Prefer the pinned kubectl/helm that e2e/cluster/build.sh builds; fall back to PATH.
bin="$("$repo/e2e/cluster/build.sh" --print-dir)"
kubectl="$bin/kubectl"; [[ -x "$kubectl" ]] || { need kubectl; kubectl=kubectl; }
helm="$bin/helm"; [[ -x "$helm" ]] || { need helm; helm=helm; }
k() { "$kubectl" --context "$ctx" "$@"; }

if [[ "${1:-}" == "--delete" ]]; then
  kind delete cluster --name "$name"
  exit 0
fi

if ! kind get clusters | grep -qx "$name"; then
  kind create cluster --name "$name" --config "$repo/e2e/kind-config.yaml" --wait 120s
fi

# A GPU node without the NVIDIA device plugin: advertise the extended resource on the
# node status (the documented way to advertise node-level extended resources). The
# kubelet keeps resources it does not manage, so this survives its status updates.
for node in $(k get nodes -l kuberl.io/pool=gpu -o name); do
  k patch "$node" --subresource=status --type=json -p "[
    {\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$gpus_per_node\"},
    {\"op\": \"add\", \"path\": \"/status/allocatable/nvidia.com~1gpu\", \"value\": \"$gpus_per_node\"}]"
done

for image in $images; do
  if docker image inspect "$image" >/dev/null 2>&1; then
    kind load docker-image --name "$name" "$image"
  else
    echo "kind-up.sh: image $image not built locally; not loaded" >&2
  fi
done

k apply --server-side -f "$repo/crds/"
k wait --for=condition=Established --timeout=60s crd --all

if [[ -f "$chart/Chart.yaml" ]]; then
  values_args=()
  [[ -f "$values" ]] && values_args=(--values "$values")
  # shellcheck disable=SC2086  # KUBERL_HELM_ARGS is a list of extra arguments
  "$helm" --kube-context "$ctx" upgrade --install kuberl "$chart" \
    --namespace kuberl-system --create-namespace --wait --timeout 5m \
    "${values_args[@]}" ${KUBERL_HELM_ARGS:-}
else
  echo "kind-up.sh: no chart at $chart yet; installed the CRDs only" >&2
fi

echo "cluster ready: kubectl --context $ctx get nodes"
