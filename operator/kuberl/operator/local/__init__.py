"""`kuberl run`: an RLJob on one machine."""
