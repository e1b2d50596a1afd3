"""Shared pytest fixtures. Each fixture family lives in its own module beside this file
(tests/ is on sys.path because it has no __init__.py); import it here so every test sees it."""
from fixtures_servers import *  # noqa: F401,F403
from fixtures_cluster import *  # noqa: F401,F403
