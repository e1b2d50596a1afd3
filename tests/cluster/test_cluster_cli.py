"""`python -m e2e.cluster.controlplane up|down`: a plane that outlives the command, found
again and stopped by `down` — including the real node's teardown path (which raised
TypeError before). Run inside a sandbox: `up` leaves processes on purpose, and the node
teardown touches iptables, so both stay in namespaces that end with the test."""

from __future__ import annotations

import sys

import pytest

from e2e.sandbox import launch
from tests.support.fixtures_cluster import REPO, controlplane

pytestmark = pytest.mark.cluster

UP_THEN_DOWN = """
set -e
d=/tmp/plane
{py} -m e2e.cluster.controlplane up --dir $d --cpu-nodes 1 --gpu-nodes 0 > /tmp/kubeconfig-path
test "$(cat /tmp/kubeconfig-path)" = "$d/kubeconfig"
"{kubectl}" --kubeconfig $d/kubeconfig get node kwok-cpu-0
pids=$({py} -c "import json; print(' '.join(map(str, json.load(open('$d/state.json'))['pids'])))")
mkdir -p $d/node   # what a real node's plane has: down tears it down too
{py} -m e2e.cluster.controlplane down --dir $d
test ! -e $d
for p in $pids; do if kill -0 $p 2>/dev/null; then echo "component $p still alive"; exit 1; fi; done
echo down-ok
"""


def test_up_then_down_stops_the_plane_and_removes_its_directory():
    bin_dir = controlplane.ensure_built()
    script = UP_THEN_DOWN.format(py=sys.executable, kubectl=bin_dir / "kubectl")
    assert launch.run(["sh", "-c", script], cwd=str(REPO)) == 0
