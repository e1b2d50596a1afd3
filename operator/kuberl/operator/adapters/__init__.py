"""The operator's I/O: the Kubernetes API, NATS, metrics, peering."""
