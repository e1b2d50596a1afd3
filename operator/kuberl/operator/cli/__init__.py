"""The `kuberl` command line."""
