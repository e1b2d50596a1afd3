"""The per-job data plane on NATS JetStream: prompts, trajectories and job state."""
