"""A real SGLang 0.5.23 server on CPU, from the venv e2e/sglang/setup.sh installs.

ONE server per test session (three processes of ~1.4 GB): the first test that asks for
`sglang_server` starts it, the session's end stops its whole process group, also when
tests fail (and `kuberl.workloads.engines.sglang.launcher` kills it at interpreter exit as a
backstop). The server runs the tiny Qwen2 model in float32 (`--dtype float32`), so its
logprobs can be held to the trainer backends' within 1e-3; it loads the checkpoint's own
tokenizer, and clients send token ids.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["SGLANG_SEED", "sglang_model_dir", "sglang_server", "sglang_venv"]

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "e2e" / "sglang" / "setup.sh"
SGLANG_SEED = 11  # the tiny model's seed for the server's initial weights (version 0)


@pytest.fixture(scope="session")
def sglang_venv() -> Path:
    """The server's venv: installed by e2e/sglang/setup.sh on first use (a no-op once done)."""
    t0 = time.monotonic()
    run = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=3600, check=False)
    assert run.returncode == 0, f"e2e/sglang/setup.sh failed:\n{run.stderr[-4000:]}"
    venv = Path(run.stdout.strip().splitlines()[-1])
    assert (venv / "bin" / "python").exists(), venv
    print(f"sglang venv {venv} ready in {time.monotonic() - t0:.1f}s")
    return venv


@pytest.fixture(scope="session")
def sglang_model_dir(tmp_path_factory) -> Path:
    from kuberl.workloads.policy.tiny.checkpoint import write_builtin_tiny

    # A real HF checkpoint (weights, config, tokenizer): the server loads the tokenizer.
    return write_builtin_tiny(tmp_path_factory.mktemp("sglang-model") / "v0", seed=SGLANG_SEED)


@pytest.fixture(scope="session")
def sglang_server(sglang_venv, sglang_model_dir, tmp_path_factory):
    from kuberl.workloads.engines.sglang.launcher import ServerConfig, SGLangServer

    cfg = ServerConfig(model_path=str(sglang_model_dir), dtype="float32", random_seed=0, weight_version="0",
                       max_total_tokens=8192)
    server = SGLangServer(cfg, python=str(sglang_venv / "bin" / "python"),
                          log_path=tmp_path_factory.mktemp("sglang-log") / "server.log")
    try:
        server.start(timeout=600)
        print(f"sglang server {server.url} up in {server.startup_seconds:.1f}s")
        yield server
    finally:
        server.stop()
