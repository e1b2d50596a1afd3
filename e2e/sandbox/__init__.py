"""A throwaway sandbox for the real node: PID, mount, network, UTS and IPC namespaces tied
to the process that starts them, so whatever ends a test, the kernel ends every process
of the node and drops every mount, link, rule and per-namespace setting with it.

* `launch.py` (outside): the per-run cgroup root and /tmp, `unshare`, clean-up after, a
  reaper for the case the launcher itself is SIGKILLed, the sweep of dead runs.
* `init.py` (PID 1 inside): private /sys, /run, /tmp and system directories, the kubelet's
  kernel settings on regular files, `lo` up; runs the command, forwards signals, reaps.
* `layout.py`: what is mounted where and which cgroups a run owns (pure, shared by both).

Stdlib only: it runs before the project's virtualenv exists. See e2e/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

# Written by init.py on the sandbox's private /run; never present on the host.
MARKER = Path("/run/kuberl-sandbox")
ENV_RUN = "KUBERL_SANDBOX"
ENV_CGROUP = "KUBERL_SANDBOX_CGROUP"


def inside() -> bool:
    """True in a process of a kuberl sandbox (its init wrote the marker on a private /run)."""
    return bool(os.environ.get(ENV_RUN)) and MARKER.is_file() and MARKER.read_text().strip() == os.environ[ENV_RUN]


def cgroup_root() -> str | None:
    """The run's top-level cgroup (e.g. /kuberl/<run>), where the kubelet puts its pods."""
    return os.environ.get(ENV_CGROUP) if inside() else None
