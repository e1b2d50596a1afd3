"""What people watch a run through: run loggers (TensorBoard, W&B), Prometheus metrics, run-file uploads."""
