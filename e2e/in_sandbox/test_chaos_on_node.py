"""Chaos on the real node, short: the trainer's, a rollout agent's and the env server's
containers SIGKILLed mid-run (node_chaos.py), the job runs to Succeeded, and its audit,
read from the store after the pods that wrote it are gone, has every zero it promises.

The job is the node's tiny job with its reward from an inline AgentEnv (so an env server is
one of the processes killed). What survives a kill is what the audit reads: the trainer's
ledger segments (copied to the store before each checkpoint and at the end; a killed
trainer's pod, emptyDir and all, is deleted by the gang restart) and each agent process's
weight-load records. The long run of the same thing is `bench/chaos.py --cluster`, whose
smoke run is here too (the other benches' are in tests/bench/test_bench_smoke.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e.in_sandbox.node_chaos import GROUP, VERSION, Chaos, audit_job, chaos_job_on_the_node
from e2e.in_sandbox.node_support import RELEASE_NS, _ns, copy_stack_credentials, diagnostics
from tests.support.fixtures_cluster import Kube, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

BENCH = Path(__file__).resolve().parents[2] / "bench"

STEPS = 150
KILL_ORDER = ("env server", "rollout agent", "trainer")
KILL_STEPS = (20, 40, 60)  # each kill once the job's status has passed this step


def test_sigkilled_trainer_agent_and_env_server_lose_nothing_and_train_nothing_twice(release: Kube):
    kube = release
    ns = _ns(kube, "node-chaos")
    copy_stack_credentials(kube, ns)
    job = chaos_job_on_the_node(ns, steps=STEPS)
    name = job["metadata"]["name"]
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "rljobs", job)
    chaos = Chaos(kube, ns, name, every=0)

    def status() -> dict:
        st = chaos.status()
        if st.get("phase") == "Failed":
            raise AssertionError(f"RLJob failed: {json.dumps(st, indent=1)}")
        return st

    try:
        for kind, step in zip(KILL_ORDER, KILL_STEPS, strict=True):
            wait_until(f"step {step}", lambda s=step: (status().get("step") or 0) >= s, timeout=900, interval=1)
            wait_until(f"a {kind} killed", lambda k=kind: chaos.kill(k), timeout=120, interval=1)
        final = wait_until("RLJob Succeeded", lambda: (st := status()).get("phase") == "Succeeded" and st,
                           timeout=1500, interval=3)
        audit, rewards = audit_job(kube, ns, job)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(kube, (ns, RELEASE_NS))}") from None

    assert [k.kind for k in chaos.kills] == list(KILL_ORDER), chaos.kills
    assert final["step"] >= STEPS and (final.get("restarts") or 0) >= 1, final
    # What the audit replays: every incarnation's ledger, from the store.
    assert audit.finished and audit.steps == STEPS and audit.restarts >= 1, audit
    assert audit.zeros() == dict.fromkeys(audit.zeros(), 0), audit
    assert audit.slots_issued > 0 and audit.slots_trained > 0
    # The killed trainer's prompts in flight were re-issued by the one that resumed; loads
    # from before and after the agent's kill are there (the killed process's file stays).
    assert audit.reissued > 0 and audit.versions_loaded >= 2, audit
    assert len(rewards) == STEPS


def test_the_cluster_chaos_bench_runs_at_toy_size_and_writes_its_result(release: Kube, tmp_path, monkeypatch):
    """`bench/chaos.py --cluster` at toy size: its job on the node, a random workload container
    SIGKILLed every few seconds, the audit from the store, its result file. It runs on this
    suite's node and release, which are what the bench starts for itself inside its sandbox
    (`chaos_cluster.in_sandbox`: `real_node_plane`, `install_release`); a second node could
    not start beside this one. The bench exits non-zero when its audit finds a loss."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("KUBERL_BENCH_RESULTS", str(tmp_path))
    import chaos
    import chaos_cluster

    args = chaos.parse_args(["--cluster", "--no-baseline", "--minutes", "0.5", "--kill-every", "8",
                             "--max-steps", "40"])
    run = chaos_cluster.run_job(release, "chaos-bench", args, chaos=True)
    chaos.report(args, None, run)
    result = json.loads((tmp_path / "chaos_cluster.json").read_text())
    assert result["benchmark"] == "chaos_cluster" and result["chaos"]["kills"] >= 1, result
    assert result["chaos"]["audit"]["finished"], result["chaos"]["audit"]
