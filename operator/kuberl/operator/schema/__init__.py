"""CRDs and API docs generated from the API models, and offline validation."""
