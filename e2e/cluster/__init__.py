"""The local Kubernetes control plane (importable test support: `e2e.cluster.controlplane`)."""
