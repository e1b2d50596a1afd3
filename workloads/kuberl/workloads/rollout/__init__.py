"""The rollout agent process and its episodes (`python -m kuberl.workloads.rollout`)."""
