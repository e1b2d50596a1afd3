"""Start, health-check and stop an SGLang HTTP server process.

Used by the rollout pod's entrypoint when the agent runs its own engine (CPU pools,
laptops, `kuberl run`) and by the tests. On GPU pods the operator starts SGLang as its
own container with the same flags (`kuberl.operator.builders`), and the agent only talks
to it over HTTP (`kuberl.workloads.sglang_engine`).

On CPU the server needs three things SGLang does not do by itself:

* ``SGLANG_USE_CPU_ENGINE=1`` and ``--device cpu --attention-backend torch_native
  --sampling-backend pytorch``;
* the two `sgl_kernel` ops its CPU path imports, from kuberl's pure-torch stand-in
  (``cpu_kernels/sgl_kernel``), first on the server's PYTHONPATH — PyPI's sglang-kernel
  is CUDA-only;
* its own interpreter: SGLang's dependency set is installed into a separate venv by
  ``e2e/sglang/setup.sh`` (``$KUBERL_CACHE/sglang-0.5.23-venv``), so the project venv is
  never bound to SGLang's pins.

The server is started in its own process group (it forks a scheduler and a detokenizer)
and `stop` kills the whole group, so nothing outlives the launcher even when a test fails.

    python -m kuberl.workloads.sglang_server --model-path DIR [--port P] [--dtype float32]

runs a server in the foreground until SIGTERM/SIGINT (the rollout pod's engine process).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kuberl.workloads.engines.sglang.flags import CPU_BACKEND_FLAGS, IDLE_FLAGS
from kuberl.workloads.localproc import dies_with_parent, free_port, group_cpu_seconds, remove_orphaned_shm, stop_group
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

SGLANG_VERSION = "0.5.23"
#: The directory holding kuberl's `sgl_kernel` stand-in (a plain directory, not a subpackage).
CPU_KERNELS_DIR = Path(__file__).resolve().parent / "cpu_kernels"
PYTHON_ENV = "KUBERL_SGLANG_PYTHON"


def default_venv() -> Path:
    """Where e2e/sglang/setup.sh installs the server's interpreter."""
    cache = Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl")
    return cache / f"sglang-{SGLANG_VERSION}-venv"


def server_python() -> str:
    """The interpreter that runs SGLang: $KUBERL_SGLANG_PYTHON, the setup venv, else this one."""
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    venv_python = default_venv() / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


class ServerDiedError(RuntimeError):
    """The server process exited (during startup or later); carries its log's tail."""


@dataclass
class ServerConfig:
    """The flags kuberl launches SGLang with. ``device="cpu"`` adds the CPU-only pieces."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free loopback port
    device: str = "cpu"
    dtype: str = "bfloat16"
    tp_size: int = 1
    mem_fraction_static: float = 0.05
    max_total_tokens: int | None = 4096
    max_running_requests: int | None = None
    context_length: int | None = None
    random_seed: int | None = None
    weight_version: str | None = None
    # False only to measure what it saves (bench/bench_engine_idle.py): see flags.IDLE_FLAGS.
    sleep_on_idle: bool = True
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    def args(self) -> list[str]:
        a = ["--model-path", self.model_path, "--host", self.host, "--port", str(self.port),
             "--device", self.device, "--dtype", self.dtype, "--tp-size", str(self.tp_size),
             "--mem-fraction-static", str(self.mem_fraction_static)]
        if self.sleep_on_idle:
            a += IDLE_FLAGS
        if self.device == "cpu":
            a += CPU_BACKEND_FLAGS
        if self.max_total_tokens:
            a += ["--max-total-tokens", str(self.max_total_tokens)]
        if self.max_running_requests:
            a += ["--max-running-requests", str(self.max_running_requests)]
        if self.context_length:
            a += ["--context-length", str(self.context_length)]
        if self.random_seed is not None:
            a += ["--random-seed", str(self.random_seed)]
        if self.weight_version is not None:
            a += ["--weight-version", self.weight_version]
        return a + list(self.extra_args)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        if self.device == "cpu":
            env["SGLANG_USE_CPU_ENGINE"] = "1"
            # The stand-in first, so `import sgl_kernel` never finds a CUDA build.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CPU_KERNELS_DIR), env.get("PYTHONPATH", "")) if p)
            env.setdefault("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        return env


_LIVE: set[SGLangServer] = set()


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


atexit.register(_stop_all)


class SGLangServer:
    """One SGLang server process group. Use as a context manager, or `start`/`stop`."""

    def __init__(self, config: ServerConfig, *, python: str | None = None, log_path: str | os.PathLike | None = None):
        if not config.port:
            config.port = free_port()
        self.config = config
        self.python = python or server_python()
        # None: a temporary file, removed by `stop`; "-": this process's own stdout (the
        # launcher in a pod or under `kuberl run`, whose output is already collected).
        self._owns_log = log_path is None
        self.log_path: Path | None = None if log_path == "-" else Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix=f"kuberl-sglang-{config.port}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        # The server's own TMPDIR, removed by `stop`: SGLang names its zmq sockets with
        # NamedTemporaryFile(delete=False) and leaves them (five files a start) behind.
        self.tmp_dir: Path | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::") else self.config.host
        return f"http://{host}:{self.config.port}"

    def command(self) -> list[str]:
        return [self.python, "-m", "sglang.launch_server", *self.config.args()]

    def start(self, *, timeout: float = 300.0) -> SGLangServer:
        """Launch and block until ``/health_generate`` answers 200 (or raise, having stopped it)."""
        t0 = time.monotonic()
        logf = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            logf = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        log.info("sglang starting", cmd=" ".join(self.command()), log=str(self.log_path or "stdout"))
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=f"kuberl-sglang-{self.config.port}-tmp-"))
        env = {**self.config.env(), "TMPDIR": str(self.tmp_dir)}
        self.proc = subprocess.Popen(self.command(), env=env, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=dies_with_parent())  # noqa: PLW1509
        if logf is not None:
            logf.close()
        _LIVE.add(self)
        try:
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        log.info("sglang ready", url=self.url, seconds=round(self.startup_seconds, 1), pid=self.proc.pid)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the server and the processes it forked have used (0 when not running)."""
        return group_cpu_seconds(self.proc.pid) if self.alive() else 0.0

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path is None:
            return "(the server wrote to the launcher's stdout)"
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise `ServerDiedError` (exit code and log tail) when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerDiedError(f"SGLang server at {self.url} exited with code {self.proc.returncode}; "
                                  f"log {self.log_path}:\n{self.log_tail()}")

    def wait_healthy(self, *, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10.0) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if client.get(f"{self.url}/health_generate").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"SGLang server at {self.url} not healthy after {timeout:.0f}s; "
                           f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, *, grace: float = 10.0) -> None:
        """Terminate the process group (server, scheduler, detokenizer); kill it after ``grace``."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None:
            stop_group(proc, signal.SIGTERM, grace)
            remove_orphaned_shm()
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
        if self._owns_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SGLangServer:  # noqa: PYI034
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a server in the foreground until it exits or we are told to stop."""
    from kuberl.workloads.logs import configure_logging

    configure_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", required=True,
                   help="an HF directory, or a model.source URI (resolved into the model cache)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--mem-fraction-static", type=float, default=0.05)
    p.add_argument("--max-total-tokens", type=int, default=4096)
    p.add_argument("--weight-version", default=None)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--log-file", default="-", help="the server's output; - (default): this process's stdout")
    args, extra = p.parse_known_args(argv)
    model_path = args.model_path
    if "://" in model_path:  # a model.source: builtin://, file://, s3:// ($KUBERL_MODEL_S3_ENDPOINT), hf://
        from kuberl.workloads.policy.sources import local_model_dir

        model_path = str(local_model_dir(model_path))
    server = SGLangServer(ServerConfig(
        model_path=model_path, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
        tp_size=args.tp_size, mem_fraction_static=args.mem_fraction_static, max_total_tokens=args.max_total_tokens,
        weight_version=args.weight_version, extra_args=extra), log_path=args.log_file)

    def _term(signum, _frame):
        server.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    server.start(timeout=args.startup_timeout)
    while server.alive():
        time.sleep(1.0)
    server.check_alive()  # raises with the log tail
    return 0


if __name__ == "__main__":
    sys.exit(main())
