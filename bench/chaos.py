"""Chaos drill: a tiny decoupled job under `kuberl run` while workload processes are SIGKILLed.

Every ``--kill-every`` seconds at most (uniform in [half of it, it]) one process is picked at
random, with ``--seed``, among the job's workload processes `kuberl run` supervises: the
trainer, the rollout agents, the AgentEnv server (the job's reward comes from one), and the
SGLang servers when the job has them. Kills stop after ``--minutes``; the job then runs to
its end. The audit (`kuberl.operator.local.audit`) replays the trainer's ledger and the
agents' weight loads: prompts issued / trained / dropped / re-issued / lost, groups trained
twice, optimizer steps lost or repeated, weight versions loaded that were never published
whole. The same job runs undisturbed first (``--baseline``), for the final reward and wall
time it is compared with.

    .venv/bin/python bench/chaos.py --minutes 10 --kill-every 20 --seed 1 --max-steps 1000

``--cluster`` runs the same drill on the real node, the job's containers SIGKILLed in
place, and audits from the store (bench/chaos_cluster.py; root, as the real-node suite).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import chaos_cluster
import yaml
from _common import HERE, write_result

from e2e.sandbox import inside
from kuberl.workloads.observe.step_row import StepRow
from kuberl.operator.local.audit import audit_run
from kuberl.workloads.trainer.ledger import committed_rewards, read_ledger
from kuberl.workloads.localproc import dies_with_parent

ROOT = HERE.parent
FINAL_WINDOW = 50  # steps whose mean reward is the run's final reward


def manifest(tmp: Path, max_steps: int, checkpoint_every: int) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    spec = doc["spec"]
    spec["runPolicy"].update(maxSteps=max_steps, backoffLimit=1000)
    spec["checkpoint"]["intervalSteps"] = checkpoint_every
    spec["evaluation"]["intervalSteps"] = max_steps
    # The reward comes from an AgentEnv server, so the env server is one of the processes killed.
    spec["reward"] = {"type": "agentEnv", "agentEnv": "sums"}
    spec["agentEnvs"] = [{"name": "sums", "spec": {"task": "arithmetic", "replicas": 1, "concurrencyPerReplica": 256,
                                                   "episodeTimeoutSeconds": 60}}]
    path = tmp / "chaos.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(path: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, WANDB_SILENT="true", KUBERL_PROMPT_REISSUE_S="20")
    log = open(out.parent / f"{out.name}.log", "w")  # noqa: SIM115 (the child keeps the fd)
    return subprocess.Popen([sys.executable, "-m", "kuberl.operator.cli", "run", str(path), "-o", str(out), "-q"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=dies_with_parent())


def victims(out: Path) -> dict[str, int]:
    try:
        pids = json.loads((out / "pids.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: pid for name, pid in pids.items() if name not in ("nats-server", "seaweedfs")}


def kind_of(name: str) -> str:
    return {"rollout": "rollout agent", "agentenv": "env server", "sglang": "SGLang server"}.get(name.split("-")[0],
                                                                                                 name)


def current_step(out: Path) -> int:
    """The step of metrics.jsonl's last row (the trainer's step now, before a restart rolls it back)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return StepRow.from_json(json.loads(line)).step
        except (ValueError, TypeError):
            continue  # a line being written, or a record that is not a step's
    return 0


def final_reward(out: Path) -> float:
    """The mean reward of the last committed steps (steps redone after a restart count once)."""
    rewards = committed_rewards(read_ledger(out))[-FINAL_WINDOW:]
    return round(sum(rewards) / max(len(rewards), 1), 4)


def run(path: Path, out: Path, minutes: float, kill_every: float, rng: random.Random | None) -> dict:
    t0 = time.monotonic()
    proc = start(path, out)
    kills: list[dict] = []
    try:
        chaos_from = None  # the first step: start-up (servers, warm start) is over, every process is up
        while proc.poll() is None:
            time.sleep(0.2)
            now = time.monotonic()
            if rng is None:
                continue
            if chaos_from is None:
                if not (out / "metrics.jsonl").exists():
                    continue
                chaos_from = next_kill = now
            if now < next_kill or now - chaos_from > minutes * 60:
                continue
            next_kill = now + rng.uniform(kill_every / 2, kill_every)
            pids = victims(out)
            if not pids:
                continue
            name = rng.choice(sorted(pids))
            try:
                os.kill(pids[name], signal.SIGKILL)
            except ProcessLookupError:
                continue  # exited meanwhile (being restarted): not a kill
            step = current_step(out)
            kills.append({"t": round(now - t0, 1), "process": name, "kind": kind_of(name), "step": step})
            print(f"[{now - t0:6.0f}s] SIGKILL {name} at step {step}", flush=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
    if proc.returncode != 0:
        tail = (out.parent / f"{out.name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"kuberl run exited {proc.returncode}:\n{tail}")
    report = audit_run(out)
    by_kind: dict[str, int] = {}
    for k in kills:
        by_kind[k["kind"]] = by_kind.get(k["kind"], 0) + 1
    return {"wall_s": round(time.monotonic() - t0, 1),
            "chaos_s": round(kills[-1]["t"] - kills[0]["t"], 1) if kills else 0, "final_reward": final_reward(out),
            "kills": len(kills),
            "kills_by_kind": by_kind, "kill_log": kills, "audit": report.to_dict(), "zeros": report.zeros()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long processes are killed")
    ap.add_argument("--kill-every", type=float, default=20.0, help="at most this many seconds between kills")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--no-baseline", action="store_true", help="skip the undisturbed run")
    ap.add_argument("--cluster", action="store_true", help="on the real node, in a sandbox (root)")
    ap.add_argument("--result", default=None, help="name of the result file in bench/results/ (chaos, chaos_cluster)")
    args = ap.parse_args(argv)
    args.result = args.result or ("chaos_cluster" if args.cluster else "chaos")
    return args


def main() -> None:
    args = parse_args()
    if args.cluster and not inside():
        sys.exit(chaos_cluster.relaunch_in_sandbox(sys.argv[1:]))
    if args.cluster:
        runs = chaos_cluster.in_sandbox(args)
        baseline, chaos = runs["undisturbed"], runs["chaos"]
    else:
        baseline, chaos = local_runs(args)
    report(args, baseline, chaos)


def local_runs(args) -> tuple[dict | None, dict]:
    with tempfile.TemporaryDirectory(prefix="kuberl-chaos-") as tmp:
        path = manifest(Path(tmp), args.max_steps, args.checkpoint_every)
        baseline = None if args.no_baseline else run(path, Path(tmp) / "undisturbed", 0, args.kill_every, None)
        chaos = run(path, Path(tmp) / "chaos", args.minutes, args.kill_every, random.Random(args.seed))
    return baseline, chaos


def report(args, baseline: dict | None, chaos: dict) -> None:
    result = {"settings": vars(args), "chaos": chaos, "undisturbed": baseline}
    if baseline is not None:
        result["final_reward_ratio"] = round(chaos["final_reward"] / max(baseline["final_reward"], 1e-9), 3)
        result["wall_ratio"] = round(chaos["wall_s"] / baseline["wall_s"], 3)
    path = write_result(args.result, result)
    print(json.dumps({k: v for k,
                      v in result.items() if k != "chaos"} | {"chaos": {k: v for k,
                                                                        v in chaos.items() if k != "kill_log"}},
                     indent=1))
    print(f"wrote {path}")
    bad = {k: v for k, v in chaos["zeros"].items() if v}
    if bad:
        raise SystemExit(f"the audit found {bad}")


if __name__ == "__main__":
    main()
