#!/usr/bin/env bash
# Everything the test suite needs beyond the project venv, into ${KUBERL_CACHE:-~/.cache/kuberl}:
#   * e2e/cluster/build.sh — the local Kubernetes control plane, built from the Go module proxy;
#   * e2e/sglang/setup.sh  — SGLang's HTTP server for CPU in its own pinned venv.
# Both are idempotent (a second run does no work), so this is too.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/cluster/build.sh"
"$here/sglang/setup.sh"
