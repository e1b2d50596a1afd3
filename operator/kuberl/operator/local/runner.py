"""`kuberl run <rljob.yaml>`: one RLJob on this machine, with the processes a cluster would run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kuberl.operator.api import RLJob
from kuberl.operator.api.conditions import SUCCEEDED
from kuberl.operator.children.agentenv import REFERENCE_SERVER, agent_env_server_args
from kuberl.operator.children.common import ENGINE_SCRATCH_ENV
from kuberl.operator.children.workload_config import workload_config
from kuberl.operator.decisions.job_shape import generating_pool, trainer_ranks
from kuberl.operator.decisions.lifecycle import JobView, PodView, decide
from kuberl.operator.decisions.references import describe
from kuberl.operator.decisions.support import unsupported
from kuberl.operator.local.progress import ProgressReport
from kuberl.operator.local.report import plot_rewards, read_metrics, summarise
from kuberl.operator.local.servers import (
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    nats_config,
    s3_roundtrip,
    weed_mini_argv,
    weed_ports,
)
from kuberl.operator.local.supervisor import Managed, RunError, _wait, find_binary
from kuberl.operator.naming import trainer_pod_name
from kuberl.workloads.buffer.admin import BufferConfig, create_job_streams
from kuberl.workloads.config import CONFIG_ENV, ENGINE_URL_ENV, METRICS_ADDR_ENV, METRICS_PORT_ENV
from kuberl.workloads.localproc import free_port, http_ok, remove_weed_sockets

NAMESPACE = "default"


def _s3_client(endpoint: str, **credentials):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)




def trainer_as_gang(job: RLJob, restarts: int, exit_code: int | None, started: float, now: float) -> JobView:
    """The local trainer process as the lifecycle sees a gang: one pod, generation = restarts."""
    phase = "Running" if exit_code is None else "Succeeded" if exit_code == 0 else "Failed"
    pod = PodView(name=trainer_pod_name(job.metadata["name"], 0), index=0, generation=restarts, phase=phase,
                  ready=exit_code is None)
    policy = job.spec.run_policy
    return JobView(name=job.metadata["name"], replicas=1, backoff_limit=policy.backoff_limit, restarts=restarts,
                   suspend=False,
                   finished=False, completion_time=None, start_time=started,
                   active_deadline_s=policy.active_deadline_seconds,
                   ttl_after_finished_s=None, pods=(pod,), now=now)


@dataclass
class LocalRun:
    manifest: Path
    output: Path | None = None
    nats_url: str | None = None
    s3_endpoint: str | None = None
    quiet: bool = False
    children: list[Managed] = field(default_factory=list)
    metrics_urls: dict[str, str] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)

    # ---- setup ------------------------------------------------------------------------

    def port(self) -> int:
        """A free loopback port no process of this run was given yet: a server binds its port
        only once it is up (SGLang after a minute), and `free_port` would hand it out again."""
        while (port := free_port()) in self.ports:
            pass
        self.ports.add(port)
        return port

    def load(self) -> dict:
        from kuberl.operator.cli.manifest_files import ManifestFileError, load_documents
        from kuberl.operator.schema.validation import ManifestInvalid, validate

        try:
            docs = load_documents(self.manifest)
        except ManifestFileError as e:
            raise RunError(str(e)) from None
        doc = docs[0].body if len(docs) == 1 else None
        if not isinstance(doc, dict) or doc.get("kind") != "RLJob":
            raise RunError(f"{self.manifest} is not an RLJob manifest (one document, kind RLJob)")
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
        port, http = self.port(), self.port()
        conf = root / "nats.conf"
        conf.write_text(nats_config(port, http, root / "jetstream"))
        m = self._child("nats-server", [find_binary("nats-server"), "-c", str(conf)], env)
        _wait(lambda: http_ok(f"http://127.0.0.1:{http}/healthz"), 30, "nats-server", m)
        return f"nats://127.0.0.1:{port}"

    def start_s3(self, env: dict[str, str]) -> str:
        data = self.output / "servers" / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        ports = weed_ports()
        self.ports.update(ports.values())
        m = self._child("seaweedfs", weed_mini_argv(data, ports, debug_port=self.port(), metrics_port=self.port()), env)
        self._weed_ports = list(ports.values())
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        client = _s3_client(endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY)
        _wait(lambda: s3_roundtrip(client), 90, "SeaweedFS (weed mini)", m)
        return endpoint

    def ensure_bucket(self, endpoint: str, bucket: str) -> None:
        c = _s3_client(endpoint)  # credentials from the environment: the endpoint may be the user's
        try:
            c.head_bucket(Bucket=bucket)
        except Exception:
            c.create_bucket(Bucket=bucket)

    # ---- run --------------------------------------------------------------------------

    def run(self) -> int:
        job = RLJob.model_validate(self.load())
        job.metadata.setdefault("namespace", NAMESPACE)
        name, spec = job.metadata["name"], job.spec
        refused = unsupported(job, generating_pool(job))
        if refused:
            raise RunError("the job cannot run as written: " + describe(refused))
        self.output = (self.output or Path("runs") / name).resolve()
        if self.output.exists() and any(self.output.iterdir()):
            # A run starts clean (restarts *within* a run resume), but only a previous run's
            # directory is ever deleted: never a directory the user pointed at by mistake.
            if not (self.output / "config.yaml").exists() and not (self.output / "logs").exists():
                raise RunError(f"output directory {self.output} is not empty and holds no previous kuberl run; choose "
                               f"another with -o")
            shutil.rmtree(self.output)
        (self.output / "logs").mkdir(parents=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", KUBERL_TORCH_THREADS=os.environ.get("KUBERL_TORCH_THREADS", "1"))
        env.setdefault("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
        env.setdefault("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
        env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        self._say(f"kuberl run: job {name} ({spec.mode}), output {self.output}")
        nats_url = self.nats_url or self.start_nats(env)
        s3 = self.s3_endpoint or spec.weight_store.endpoint or self.start_s3(env)
        self.ensure_bucket(s3, spec.weight_store.bucket)
        wandb = spec.observability.wandb
        if wandb is not None and wandb.mode == "online" and not env.get("WANDB_API_KEY"):
            raise RunError("observability.wandb.mode is online: kuberl run reads the W&B key from WANDB_API_KEY (not "
                           "from "
                           "apiKeySecret, which is for the cluster); export it, or set mode: offline")
        if spec.rollout is not None and spec.rollout.pool_ref:
            raise RunError(f"spec.rollout.poolRef {spec.rollout.pool_ref!r} names a RolloutPool in a cluster; kuberl "
                           f"run needs spec.rollout.template")

        env_urls = {}
        for entry in spec.agent_envs or []:
            if entry.spec is None:
                raise RunError(f"agentEnvs[{entry.name}] refers to an existing AgentEnv; kuberl run needs it inline "
                               f"(spec)")
            port = self.port()
            args = agent_env_server_args(entry.spec, host="127.0.0.1", port=port)
            if not args:
                raise RunError(f"agentEnvs[{entry.name}] runs its own image (task custom or command); kuberl run "
                               f"starts only the reference server")
            m = self._child(f"agentenv-{entry.name}",
                            [sys.executable, *REFERENCE_SERVER[1:], *args, *(entry.spec.args or [])], env)
            env_urls[entry.name] = f"http://127.0.0.1:{port}"
            _wait(lambda u=env_urls[entry.name]: http_ok(f"{u}/healthz"), 30, f"agentenv {entry.name}", m)

        pool = generating_pool(job)
        cfg = workload_config(job, pool=pool, agent_env_urls=env_urls, nats_url=nats_url, s3_endpoint=s3,
                              output_dir=str(self.output))
        # What the operator does before any pod starts: the job's streams, from spec.buffer.
        asyncio.run(create_job_streams(cfg.buffer.url, cfg.job.namespace, name, BufferConfig.from_spec(spec.buffer)))
        cfg_path = self.output / "config.yaml"
        cfg_path.write_text(cfg.dump())
        env[CONFIG_ENV] = str(cfg_path)
        # Each process serves its Prometheus /metrics on a loopback port of its own.
        env[METRICS_ADDR_ENV] = "127.0.0.1"
        replicas = max(1, pool.replicas) if pool is not None else 0
        engines = self.start_engines(job, cfg, pool, replicas,
                                     env) if pool is not None and pool.engine.type == "sglang" else []
        trainer = self._child("trainer", [sys.executable, "-m", "kuberl.workloads.trainer"],
                              self._with_metrics_port("trainer", dict(env, **self.gang_env(job))),
                              restart="on-failure-limited")
        for i in range(replicas):
            # Fetched weight versions in the run's directory (a pod's emptyDir): an agent
            # SIGKILLed cannot clean up after itself, the run's shutdown does.
            scratch = self.output / "scratch" / f"rollout-{i}"
            scratch.mkdir(parents=True, exist_ok=True)
            agent_env = dict(env, KUBERL_AGENT_ID=f"rollout-{i}", **{ENGINE_SCRATCH_ENV: str(scratch)})
            if engines:
                url, server = engines[i]
                _wait(lambda u=url: http_ok(f"{u}/health"), 900, f"SGLang server sglang-{i}", server)
                agent_env[ENGINE_URL_ENV] = url
            self._child(f"rollout-{i}", [sys.executable, "-m", "kuberl.workloads.rollout"],
                        self._with_metrics_port(f"rollout-{i}", agent_env))
        (self.output / "endpoints.json").write_text(json.dumps(self.metrics_urls, indent=1))
        self._say("metrics: " + ", ".join(f"{k} {v}" for k, v in self.metrics_urls.items()))
        self._write_pids()
        return self.supervise(trainer, job)

    def gang_env(self, job: RLJob) -> dict[str, str]:
        """The rendezvous env the operator renders into trainer pods, for one node: the
        megatron trainer starts its ranks under torchrun from it (`policy.megatron.gang`)."""
        _, world = trainer_ranks(job)
        return {"NNODES": "1", "NODE_RANK": "0", "NPROC_PER_NODE": str(world), "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(self.port())}

    def start_engines(self, job: RLJob, cfg, pool, replicas: int, env: dict[str, str]) -> list[tuple[str, Managed]]:
        """One SGLang server per rollout agent (what each rollout pod runs beside its agent),
        from SGLang's own venv (`e2e/sglang/setup.sh`), serving the job's model in ``model.dtype``."""
        engine = pool.engine
        servers = []
        for i in range(replicas):
            port = self.port()
            argv = [sys.executable, "-m", "kuberl.workloads.engines.sglang.launcher", "--model-path",
                    job.spec.model.source,
                    "--port", str(port), "--dtype", job.spec.model.dtype, "--weight-version", "-1"]
            if engine.max_running_requests:
                argv += ["--max-running-requests", str(engine.max_running_requests)]
            if engine.context_length:
                argv += ["--context-length", str(engine.context_length)]
            server_env = dict(env, KUBERL_MODEL_S3_ENDPOINT=cfg.weight_store.endpoint or "")
            servers.append((f"http://127.0.0.1:{port}",
                            self._child(f"sglang-{i}", [*argv, *(engine.args or [])], server_env)))
        self._say(f"starting {replicas} SGLang server(s) (CPU: ~1 min)")
        return servers

    def _with_metrics_port(self, name: str, env: dict[str, str]) -> dict[str, str]:
        port = self.port()
        self.metrics_urls[name] = f"http://127.0.0.1:{port}/metrics"
        return dict(env, **{METRICS_PORT_ENV: str(port)})

    def _write_pids(self) -> None:
        (self.output / "pids.json").write_text(json.dumps({m.name: m.proc.pid for m in self.children if m.proc}))

    def supervise(self, trainer: Managed, job: RLJob) -> int:
        """Watch the processes until the trainer finishes. What happens to the trainer is
        decided by the operator's own gang lifecycle (`decisions.lifecycle`), with the
        trainer process as a one-pod gang: restarts up to backoffLimit, activeDeadlineSeconds."""
        name, policy = job.metadata["name"], job.spec.run_policy
        metrics = self.output / "metrics.jsonl"
        progress = None if self.quiet else ProgressReport(name, policy.max_steps, interactive=sys.stderr.isatty())
        t0, started = time.monotonic(), time.time()
        last_step = 0
        try:
            while True:
                steps = read_metrics(metrics)
                if steps and progress is not None:
                    progress.show(steps[-1])
                if steps:
                    last_step = steps[-1].step
                code = trainer.poll()
                plan = decide(trainer_as_gang(job, trainer.restarts, code, started, time.time()))
                if plan.terminal is not None:
                    kind, _, message = plan.terminal
                    if kind == SUCCEEDED:
                        break
                    raise RunError(f"{message}; trainer log {trainer.log_path}:\n{trainer.tail()}")
                if plan.restarted:
                    trainer.restarts = plan.restarts
                    self._say(f"trainer exited with code {code} at step {last_step}; {plan.restarted}")
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
                time.sleep(0.5)
        finally:
            if progress is not None:
                progress.close()
        rows = read_metrics(metrics)
        summary = {**summarise(rows), "wall_seconds": round(time.monotonic() - t0, 1),
                   "restarts": {m.name: m.restarts for m in self.children if m.restarts}}
        (self.output / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_rewards(rows, self.output / "reward_curve.png", f"{name} ({summary.get('mode')})")
        tensorboard = (
            f"\ntensorboard: tensorboard --logdir {self.output / 'tensorboard'}"
            if (self.output / "tensorboard").is_dir()
            else ""
        )
        self._say(f"done: {json.dumps(summary)}\nmetrics {metrics}\nplot "
                  f"{self.output / 'reward_curve.png'}{tensorboard}")
        return 0

    def shutdown(self) -> None:
        # Workloads first (they flush to the servers), servers last.
        for m in sorted(self.children, key=lambda m: m.name in ("nats-server", "seaweedfs")):
            m.stop()
        remove_weed_sockets(getattr(self, "_weed_ports", ()))
        if self.output is not None:
            shutil.rmtree(self.output / "scratch", ignore_errors=True)

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
