#!/usr/bin/env bash
# Copy the generated CRDs (crds/, produced by `kuberl crds`) into the chart. crds/ is the
# one source of truth; tests/test_chart.py fails when the two differ.
set -euo pipefail
chart="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$chart/../.." && pwd)"
rm -f "$chart"/crds/*.yaml
cp "$repo"/crds/*.yaml "$chart/crds/"
echo "sync-crds.sh: copied $(ls "$repo"/crds/*.yaml | wc -l) CRDs into charts/kuberl/crds/"
