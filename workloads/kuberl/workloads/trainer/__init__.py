"""The trainer process and its parts (`python -m kuberl.workloads.trainer`)."""
