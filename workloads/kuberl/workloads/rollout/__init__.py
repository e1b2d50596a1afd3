"""The rollout agent process (`python -m kuberl.workloads.rollout`); its episodes are kuberl.workloads.episodes."""
