"""`python -m e2e.cluster.controlplane up|down`: a plane that outlives the command (for a
laptop or a debugging session), found again by its state file. Stdlib only."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
from pathlib import Path

from e2e.cluster.controlplane import ControlPlane, _alive, bin_dir, ensure_built, kill_group


def _default_dir() -> Path:
    return Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl") / "cluster"


def cli_up(dir: Path, cpu_nodes: int, gpu_nodes: int, real_node: bool = False) -> None:
    state = dir / "state.json"
    if state.exists() and _alive(json.loads(state.read_text())["pids"]):
        print(json.loads(state.read_text())["kubeconfig"])  # already up: idempotent
        return
    cli_down(dir)
    ensure_built()
    cp = ControlPlane(workdir=dir, cpu_nodes=cpu_nodes, gpu_nodes=gpu_nodes, real_node=real_node,
                      die_with_parent=False)
    cp.start()
    atexit.unregister(cp.stop)  # the plane outlives this command; `down` stops it
    cp.components.clear()
    if cp.real_node:
        cp.node.components.clear()
    print(cp.kubeconfig)


def cli_down(dir: Path) -> None:
    state = dir / "state.json"
    if state.exists():
        for pid in reversed(json.loads(state.read_text())["pids"]):
            kill_group(pid)
    if (dir / "node").is_dir():
        from e2e.cluster import node

        node.teardown_dir(dir / "node", bin_dir())
    shutil.rmtree(dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Start or stop the local control plane (e2e/cluster/controlplane.py).")
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--dir", type=Path, default=_default_dir(), help="work directory (default: %(default)s)")
    ap.add_argument("--cpu-nodes", type=int, default=2)
    ap.add_argument("--gpu-nodes", type=int, default=2)
    ap.add_argument("--real-node", action="store_true",
                    help="join a real kubelet node (root, inside `python -m e2e.sandbox.launch -- bash`; see node.py)")
    args = ap.parse_args(argv)
    if args.action == "up":
        cli_up(args.dir, args.cpu_nodes, args.gpu_nodes, args.real_node)
    else:
        cli_down(args.dir)
