"""`kuberl run <rljob.yaml>`: one RLJob on this machine, with the processes a cluster would run.

Validates the manifest as the API server would, starts nats-server and SeaweedFS
(`weed mini`) from the installed packages unless endpoints are given, renders the
workload config, launches the environment, trainer and rollout processes, supervises them
(a crashed rollout agent or environment is restarted; a crashed trainer is restarted up
to ``runPolicy.backoffLimit`` times and resumes from its checkpoint), shows progress, and
writes ``metrics.jsonl``, ``reward_curve.png`` and ``summary.json`` to the output dir.

No torch here: the heavy work happens in the processes this module spawns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kuberl.workloads import localproc
from kuberl.workloads.localproc import free_port, http_ok, seaweed_port_pair

NAMESPACE = "default"
S3_ACCESS_KEY, S3_SECRET_KEY = "kuberl", "kuberl-local-secret"


class RunError(Exception):
    """Something the user must fix or look at; the message says what and where."""


# ---------------------------------------------------------------------------------------
# Pure helpers


def find_binary(name: str) -> str:
    try:
        return localproc.find_binary(name)
    except FileNotFoundError as e:
        raise RunError(str(e)) from None


def env_args(name: str, spec: dict) -> list[str]:
    """Command-line flags of the reference AgentEnv server for an inline AgentEnv spec."""
    latency = spec.get("latency") or {}
    return [
        "--task", spec.get("task", "arithmetic"),
        "--concurrency", str(spec.get("concurrencyPerReplica", 32)),
        "--episode-timeout", str(spec.get("episodeTimeoutSeconds", 300)),
        "--latency", latency.get("distribution", "none"),
        "--latency-median", str(latency.get("medianSeconds", 0.0)),
        "--latency-tail", str(latency.get("tail", 1.0)),
    ]


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return rows


def reward_window(n_steps: int) -> int:
    """Steps averaged for the start/end reward: 5% of the run, at least 5.

    One batch of 128 samples is noisy (±0.1 around the trend on the tiny job); a few
    percent of the run is enough to read the trend without hiding it.
    """
    return max(5, n_steps // 20)


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def summarise(rows: list[dict], window: int | None = None) -> dict:
    """Start/end reward (means over the first/last `window` steps) and throughput."""
    steps = [r for r in rows if "step" in r]
    if not steps:
        return {"steps": 0}
    window = window or reward_window(len(steps))

    def mean(rs):
        return round(sum(r["reward_mean"] for r in rs) / len(rs), 4)

    return {
        "steps": steps[-1]["step"],
        "reward_start": mean(steps[:window]),
        "reward_end": mean(steps[-window:]),
        "reward_window_steps": window,
        "reward_max": max(r["reward_mean"] for r in steps),
        "samples_trained": steps[-1]["samples_trained"],
        "samples_per_s": steps[-1]["samples_per_s"],
        "rl_seconds": steps[-1]["elapsed_s"],
        "mode": steps[-1].get("mode"),
        "resumes": sorted({r["resumed_from"] for r in steps if r.get("resumed_from") is not None}),
    }


def plot_rewards(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if "step" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs, ys = [r["step"] for r in steps], [r["reward_mean"] for r in steps]
    window = reward_window(len(steps))
    ax.plot(xs, ys, alpha=0.35, linewidth=1, label="mean reward (trained batch)")
    ax.plot(xs, moving_average(ys, window), linewidth=2, label=f"moving average ({window} steps)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Processes


@dataclass
class Managed:
    """A child process we started, with how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: str = "always"  # always | on-failure-limited | never
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _wait(check, timeout: float, what: str, proc: Managed) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RunError(f"{what} exited with code {proc.poll()} while starting; its log ({proc.log_path}):\n{proc.tail()}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RunError(f"{what} did not become ready within {timeout:.0f}s; its log ({proc.log_path}):\n{proc.tail()}")


@dataclass
class LocalRun:
    manifest: Path
    output: Path | None = None
    nats_url: str | None = None
    s3_endpoint: str | None = None
    quiet: bool = False
    children: list[Managed] = field(default_factory=list)

    # ---- setup ------------------------------------------------------------------------

    def load(self) -> dict:
        from kuberl.operator.validation import ManifestInvalid, validate

        try:
            doc = yaml.safe_load(self.manifest.read_text())
        except OSError as e:
            raise RunError(f"cannot read {self.manifest}: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind") != "RLJob":
            raise RunError(f"{self.manifest} is not an RLJob manifest")
        try:
            return validate(doc)
        except ManifestInvalid as e:
            raise RunError(str(e)) from None

    def _child(self, name: str, argv: list[str], env: dict[str, str], restart: str = "always") -> Managed:
        m = Managed(name, argv, env, self.output / "logs" / f"{name}.log", restart)
        self.children.append(m)
        m.start()
        return m

    def start_nats(self, env: dict[str, str]) -> str:
        root = self.output / "servers" / "nats"
        root.mkdir(parents=True, exist_ok=True)
        port, http = free_port(), free_port()
        conf = root / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{port}"\nhttp: "127.0.0.1:{http}"\nmax_payload: 8388608\n'
                        f'jetstream {{ store_dir: "{root / "jetstream"}" }}\n')
        m = self._child("nats-server", [find_binary("nats-server"), "-c", str(conf)], env)
        _wait(lambda: http_ok(f"http://127.0.0.1:{http}/healthz"), 30, "nats-server", m)
        return f"nats://127.0.0.1:{port}"

    def start_s3(self, env: dict[str, str]) -> str:
        data = self.output / "servers" / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        ports = {}
        for comp in ("master", "volume", "filer", "s3", "admin"):
            ports[f"{comp}.port"], ports[f"{comp}.port.grpc"] = seaweed_port_pair()
        argv = [find_binary("weed"), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{k}={v}" for k, v in ports.items()), "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-debug.port={free_port()}", f"-metricsPort={free_port()}",
                "-master.volumeSizeLimitMB=256"]
        m = self._child("seaweedfs", argv, env)
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        _wait(lambda: self._s3_roundtrip(endpoint), 90, "SeaweedFS (weed mini)", m)
        return endpoint

    @staticmethod
    def _s3_roundtrip(endpoint: str) -> bool:
        import boto3

        c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1")
        name = f"ready-{uuid.uuid4().hex[:8]}"
        c.create_bucket(Bucket=name)
        c.delete_bucket(Bucket=name)
        return True

    def ensure_bucket(self, endpoint: str, bucket: str) -> None:
        import boto3

        c = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        try:
            c.head_bucket(Bucket=bucket)
        except Exception:
            c.create_bucket(Bucket=bucket)

    # ---- run --------------------------------------------------------------------------

    def run(self) -> int:
        from kuberl.workloads.config import config_from_rljob

        doc = self.load()
        name, spec = doc["metadata"]["name"], doc["spec"]
        self.output = (self.output or Path("runs") / name).resolve()
        if self.output.exists() and any(self.output.iterdir()):
            # A run starts clean (restarts *within* a run resume), but only a previous run's
            # directory is ever deleted: never a directory the user pointed at by mistake.
            if not (self.output / "config.yaml").exists() and not (self.output / "logs").exists():
                raise RunError(f"output directory {self.output} is not empty and holds no previous kuberl run; choose another with -o")
            shutil.rmtree(self.output)
        (self.output / "logs").mkdir(parents=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", KUBERL_TORCH_THREADS=os.environ.get("KUBERL_TORCH_THREADS", "1"))
        env.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        env.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        self._say(f"kuberl run: job {name} ({spec.get('mode')}), output {self.output}")
        nats_url = self.nats_url or self.start_nats(env)
        s3 = self.s3_endpoint or spec["weightStore"].get("endpoint") or self.start_s3(env)
        self.ensure_bucket(s3, spec["weightStore"]["bucket"])

        env_urls = {}
        for entry in spec.get("agentEnvs") or []:
            if not entry.get("spec"):
                raise RunError(f"agentEnvs[{entry['name']}] refers to an existing AgentEnv; kuberl run needs it inline (spec)")
            port = free_port()
            m = self._child(f"agentenv-{entry['name']}", [sys.executable, "-m", "kuberl.workloads.agentenv", "--host", "127.0.0.1",
                                                          "--port", str(port), *env_args(entry["name"], entry["spec"])], env)
            env_urls[entry["name"]] = f"http://127.0.0.1:{port}"
            _wait(lambda u=env_urls[entry["name"]]: http_ok(f"{u}/healthz"), 30, f"agentenv {entry['name']}", m)

        cfg = config_from_rljob(NAMESPACE, name, spec, nats_url=nats_url, s3_endpoint=s3, agent_env_urls=env_urls,
                                output_dir=str(self.output))
        cfg_path = self.output / "config.yaml"
        cfg_path.write_text(cfg.dump())
        env["KUBERL_CONFIG"] = str(cfg_path)
        trainer = self._child("trainer", [sys.executable, "-m", "kuberl.workloads.trainer"], env, restart="on-failure-limited")
        agents = []
        if cfg.mode == "decoupled":
            replicas = ((spec.get("rollout") or {}).get("template") or {}).get("replicas", 1)
            for i in range(max(1, replicas)):
                agents.append(self._child(f"rollout-{i}", [sys.executable, "-m", "kuberl.workloads.rollout"],
                                          dict(env, KUBERL_AGENT_ID=f"rollout-{i}")))
        self._write_pids()
        return self.supervise(trainer, cfg.run_policy.max_steps, cfg.run_policy.backoff_limit, name,
                              cfg.run_policy.active_deadline_seconds)

    def _write_pids(self) -> None:
        (self.output / "pids.json").write_text(json.dumps({m.name: m.proc.pid for m in self.children if m.proc}))

    def supervise(self, trainer: Managed, max_steps: int, backoff_limit: int, name: str, deadline_s: int | None) -> int:
        metrics = self.output / "metrics.jsonl"
        bar = None
        if not self.quiet:
            from tqdm import tqdm

            bar = tqdm(total=max_steps, desc=name, unit="step", dynamic_ncols=True)
        t0 = time.monotonic()
        last_step = 0
        try:
            while True:
                rows = read_metrics(metrics)
                steps = [r for r in rows if "step" in r]
                if steps and bar is not None:
                    last = steps[-1]
                    bar.update(last["step"] - bar.n)
                    bar.set_postfix(reward=f"{last['reward_mean']:.3f}", samples_s=f"{last['samples_per_s']:.1f}",
                                    version=last["policy_version"], stage=last.get("stage_name"))
                if steps:
                    last_step = steps[-1]["step"]
                code = trainer.poll()
                if code == 0:
                    break
                if code is not None:
                    if trainer.restarts >= backoff_limit:
                        raise RunError(f"trainer failed with code {code} after {trainer.restarts} restarts (backoffLimit {backoff_limit}); "
                                       f"log {trainer.log_path}:\n{trainer.tail()}")
                    trainer.restarts += 1
                    self._say(f"trainer exited with code {code} at step {last_step}; restart {trainer.restarts}/{backoff_limit} (resumes from checkpoint)")
                    trainer.start()
                    self._write_pids()
                for m in self.children:
                    if m is trainer or m.poll() is None:
                        continue
                    if m.name in ("nats-server", "seaweedfs"):
                        raise RunError(f"{m.name} exited with code {m.poll()}; log {m.log_path}:\n{m.tail()}")
                    m.restarts += 1
                    self._say(f"{m.name} exited with code {m.poll()}; restarting ({m.restarts})")
                    m.start()
                    self._write_pids()
                if deadline_s and time.monotonic() - t0 > deadline_s:
                    raise RunError(f"job ran past activeDeadlineSeconds={deadline_s}")
                time.sleep(0.5)
        finally:
            if bar is not None:
                bar.close()
        rows = read_metrics(metrics)
        summary = {**summarise(rows), "wall_seconds": round(time.monotonic() - t0, 1),
                   "restarts": {m.name: m.restarts for m in self.children if m.restarts}}
        (self.output / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_rewards(rows, self.output / "reward_curve.png", f"{name} ({summary.get('mode')})")
        self._say(f"done: {json.dumps(summary)}\nmetrics {metrics}\nplot {self.output / 'reward_curve.png'}")
        return 0

    def shutdown(self) -> None:
        # Workloads first (they flush to the servers), servers last.
        for m in sorted(self.children, key=lambda m: m.name in ("nats-server", "seaweedfs")):
            m.stop()

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    run = LocalRun(Path(args.manifest), Path(args.output) if args.output else None, args.nats_url, args.s3_endpoint, args.quiet)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run.run()
    except RunError as e:
        print(f"kuberl run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kuberl run: interrupted; stopping processes", file=sys.stderr)
        return 130
    finally:
        run.shutdown()


def add_run_command(sub) -> None:
    """Register `kuberl run` on the CLI's subparsers."""
    p = sub.add_parser("run", help="run an RLJob on this machine (starts NATS, S3, trainer, rollout and env processes)")
    p.add_argument("manifest", help="RLJob manifest (YAML)")
    p.add_argument("-o", "--output", help="output directory (default: runs/<job>/)")
    p.add_argument("--nats-url", help="use this NATS server instead of starting one")
    p.add_argument("--s3-endpoint", help="use this S3 endpoint instead of starting SeaweedFS")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
