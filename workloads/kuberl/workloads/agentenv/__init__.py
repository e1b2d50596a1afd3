"""The AgentEnv reference server (`python -m kuberl.workloads.agentenv`)."""
