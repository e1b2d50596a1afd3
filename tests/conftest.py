"""The shared fixtures are imported by the root conftest.py (one session-wide control plane
and servers for tests/ and e2e/ alike); importing them here again would start a second."""
