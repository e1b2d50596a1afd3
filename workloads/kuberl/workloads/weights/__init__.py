"""Weight sync: the versioned S3 store, FP8 quantisation, publish and fetch."""
