"""`bench/chaos.py --cluster`: the chaos drill on the real node, in a sandbox (e2e/sandbox).

Outside the sandbox the images are built (it has no network); inside, the plane with the
real node starts, the chart is installed with the laptop stack, and the node's tiny job
(scored by an inline AgentEnv) runs undisturbed, then again with a workload container
SIGKILLed every ``--kill-every`` seconds at most for ``--minutes`` (e2e/in_sandbox/node_chaos.py:
trainer, rollout agent, env server). Each run is audited from the store once it succeeded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import HERE

from e2e.sandbox import launch

ROOT = HERE.parent
FINAL_WINDOW = 50  # steps whose mean reward is the run's final reward


def run_job(kube, ns: str, args, chaos: bool) -> dict:
    from e2e.in_sandbox.node_chaos import GROUP, VERSION, Chaos, audit_job, chaos_job_on_the_node
    from e2e.in_sandbox.node_support import _ns, copy_stack_credentials

    _ns(kube, ns)
    copy_stack_credentials(kube, ns)
    job = chaos_job_on_the_node(ns, steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "rljobs", job)
    killer = Chaos(kube, ns, job["metadata"]["name"], every=args.kill_every, seed=args.seed)
    t0, chaos_from = time.monotonic(), None
    while True:
        st = killer.status()
        if st.get("phase") in ("Succeeded", "Failed"):
            break
        if chaos and st.get("step"):
            chaos_from = chaos_from or time.monotonic()
            if time.monotonic() - chaos_from <= args.minutes * 60:
                killer.tick()
        time.sleep(1)
    wall = time.monotonic() - t0
    if st["phase"] != "Succeeded":
        raise SystemExit(f"{ns}: the RLJob failed: {st}")
    report, rewards = audit_job(kube, ns, job)
    kube.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=300s", check=False)
    kills = killer.kills
    return {"wall_s": round(wall, 1), "chaos_s": round(kills[-1].t - kills[0].t, 1) if kills else 0,
            "final_reward": round(sum(rewards[-FINAL_WINDOW:]) / max(len(rewards[-FINAL_WINDOW:]), 1), 4),
            "restarts": st.get("restarts", 0), "kills": len(kills), "kills_by_kind": killer.by_kind(),
            "kill_log": [vars(k) for k in kills], "audit": report.to_dict(), "zeros": report.zeros()}


def in_sandbox(args) -> dict:
    from e2e.in_sandbox.node_support import install_release
    from tests.support.fixtures_node import real_node_plane

    with real_node_plane() as kube:
        install_release(kube)
        baseline = None if args.no_baseline else run_job(kube, "chaos-undisturbed", args, chaos=False)
        return {"chaos": run_job(kube, "chaos", args, chaos=True), "undisturbed": baseline}


def relaunch_in_sandbox(argv: list[str]) -> int:
    """Build what the node runs here, then run this same command inside a sandbox."""
    from e2e.cluster import controlplane
    from e2e.images.build import Catalog

    Catalog(controlplane.ensure_built()).build_all(Path(sys.executable).parent)
    return launch.run([sys.executable, str(HERE / "chaos.py"), *argv])

