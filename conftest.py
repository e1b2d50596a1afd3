"""pytest fixtures shared by tests/ and e2e/.

Here, at the repository root, so both suites share ONE session: one local control plane
(`kube`), one nats-server, one SeaweedFS, however many directories a run collects.
Each fixture family lives in its own module in tests/; import new ones here.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from fixtures_servers import *  # noqa: E402,F401,F403
from fixtures_cluster import *  # noqa: E402,F401,F403
