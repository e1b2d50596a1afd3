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


# What a killed server leaves in /dev/shm (SGLang's weight-loader segments, Python
# multiprocessing semaphores); /dev/shm has no TMPDIR to point elsewhere.
SHM = Path("/dev/shm")
SHM_LEFTOVERS = ("sglang_", "sem.mp-", "torch_")


def pytest_configure(config):
    # One temporary directory per session for everything the tests and the servers they
    # start write there (pytest's tmp_path, tempfile, nats/SeaweedFS logs and sockets,
    # torchelastic, kwok planes' work dirs), removed when the session ends: pytest's
    # default keeps the last three sessions' files, and a killed server's never go.
    if hasattr(config, "workerinput") or os.environ.get("KUBERL_SESSION_TMP"):
        return
    session = tempfile.mkdtemp(prefix="kuberl-session-")
    config._kuberl_session_tmp = session
    config._kuberl_shm_before = set(os.listdir(SHM)) if SHM.is_dir() else set()
    config._kuberl_tmp_before = set(os.listdir("/tmp"))
    os.environ["TMPDIR"] = session
    os.environ["KUBERL_SESSION_TMP"] = session  # a nested pytest (the sandbox's) keeps its own
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    if config.option.basetemp is None:
        config.option.basetemp = os.path.join(session, "pytest")


def pytest_unconfigure(config):
    session = getattr(config, "_kuberl_session_tmp", None)
    if not session:
        return
    if SHM.is_dir():
        for name in set(os.listdir(SHM)) - config._kuberl_shm_before:
            if name.startswith(SHM_LEFTOVERS):
                (SHM / name).unlink(missing_ok=True)
    # Sockets of SeaweedFS servers killed mid-session (weed puts them in /tmp, whatever
    # TMPDIR says); those of servers stopped normally went with them.
    for sock in Path("/tmp").glob("seaweedfs-*.sock"):
        if sock.name not in config._kuberl_tmp_before:
            sock.unlink(missing_ok=True)
    if not os.environ.get("KUBERL_KEEP_TMP"):
        shutil.rmtree(session, ignore_errors=True)
