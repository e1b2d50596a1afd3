"""pytest fixtures shared by tests/ and e2e/.

Here, at the repository root, so both suites share ONE session: one local control plane
(`kube`), one nats-server, one SeaweedFS, however many directories a run collects.
Each fixture family lives in its own module in tests/support/; import new ones here.
"""
from tests.support.fixtures_cluster import *  # noqa: F401,F403
from tests.support.fixtures_servers import *  # noqa: F401,F403
from tests.support.fixtures_node import *  # noqa: F401,F403
