"""Episodes, shared by the colocated trainer, its evaluation and the rollout agents: a prompt's
group generated (single- or multi-turn against an AgentEnv) and scored (verifier, Python
reward in a child process, or the environment)."""
