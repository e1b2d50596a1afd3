"""pytest fixtures shared by tests/ and e2e/.

Here, at the repository root, so both suites share ONE session: one local control plane
(`kube`), one nats-server, one SeaweedFS, however many directories a run collects.
Each fixture family lives in its own module in tests/support/; import new ones here.
"""
import os
import shutil
import tempfile
from pathlib import Path

from e2e import sandbox
from tests.support.fixtures_cluster import *  # noqa: F401,F403
from tests.support.fixtures_servers import *  # noqa: F401,F403
from tests.support.fixtures_node import *  # noqa: F401,F403

IN_SANDBOX = Path(__file__).resolve().parent / "e2e" / "in_sandbox"


def pytest_ignore_collect(collection_path: Path, config):
    # The real-node tests run only inside a sandbox that e2e/test_real_node.py starts (a real
    # node refuses to start anywhere else); a plain `pytest` collects that one test instead.
    if collection_path == IN_SANDBOX and not sandbox.inside():
        return True
    return None


def pytest_configure(config):
    # One fresh base directory per session, removed when it ends (pytest's default,
    # /tmp/pytest-of-<user>/, keeps the last three sessions' files on the machine).
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="kuberl-pytest-")
        config._kuberl_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    basetemp = getattr(config, "_kuberl_basetemp", None)
    if basetemp and not os.environ.get("KUBERL_KEEP_TMP"):
        shutil.rmtree(basetemp, ignore_errors=True)
