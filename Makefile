# Conveniences; the README's two commands remain the way to set up, run and test.
.PHONY: test e2e e2e-kind images chart-crds chart-lint

test:
	.venv/bin/pytest

# The e2e suite on the local control plane (what CI runs as part of `pytest`).
e2e:
	.venv/bin/pytest -m e2e e2e

# The e2e suite on kind, on a laptop with Docker.
e2e-kind:
	e2e/kind-e2e.sh

images:
	docker build -f operator/Dockerfile -t kuberl/operator:dev .
	docker build -f workloads/Dockerfile -t kuberl/workload-cpu:dev .

# Regenerate crds/ and copy them (plus kopf's peering CRDs) into the chart.
chart-crds:
	.venv/bin/kuberl crds
	charts/kuberl/sync-crds.sh

chart-lint:
	"$$(e2e/cluster/build.sh --print-dir)/helm" lint --strict charts/kuberl
	"$$(e2e/cluster/build.sh --print-dir)/helm" lint --strict charts/kuberl -f charts/kuberl/ci/stack-values.yaml
