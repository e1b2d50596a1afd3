"""kuberl operator: kopf handlers, pure builders and policies, the CLI."""
