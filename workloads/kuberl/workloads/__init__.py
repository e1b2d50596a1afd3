"""kuberl workloads: what runs inside trainer, rollout and agent-env pods."""
