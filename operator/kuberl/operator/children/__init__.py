"""Child manifests of the three kinds, and the job's rendered config. Pure."""
