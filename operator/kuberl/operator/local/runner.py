"""`kuberl run <rljob.yaml>`: one RLJob on this machine, with the processes a cluster would run."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kuberl.operator.local.report import plot_rewards, read_metrics, summarise
from kuberl.operator.local.supervisor import Managed, RunError, _wait, find_binary
from kuberl.workloads.localproc import free_port, http_ok, seaweed_port_pair

NAMESPACE = "default"


S3_ACCESS_KEY, S3_SECRET_KEY = "kuberl", "kuberl-local-secret"


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
        from kuberl.operator.schema.validation import ManifestInvalid, validate

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
