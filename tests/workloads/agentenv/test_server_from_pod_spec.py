"""The AgentEnv server a pod runs is the one its spec asks for.

The container is taken from what `kuberl render` prints for examples/agentenv-calculator.yaml
(the builders the controller uses) and started as a local process with its own command,
args and env: only the interpreter and the port are swapped for this machine's. It must
serve the manifest's task (calculator-tool, multi-turn tool use) with its concurrency,
not the reference server's defaults (arithmetic, 32) that it served when the settings
travelled as environment variables nobody read.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from kuberl.workloads.localproc import free_port

ROOT = Path(__file__).resolve().parents[3]


def _rendered_env_container() -> dict:
    out = subprocess.run([sys.executable, "-m", "kuberl.operator.cli", "render",
                          str(ROOT / "examples/agentenv-calculator.yaml")],
                         capture_output=True, text=True, check=True)
    (deployment,) = [d for d in yaml.safe_load_all(out.stdout) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_agent_env_pod_serves_the_task_of_its_manifest():
    c = _rendered_env_container()
    assert c["command"][0] == "python" and c["args"]
    args = list(c["args"])
    port = free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    proc = subprocess.Popen([sys.executable, *c["command"][1:], *args], env={"PATH": "/usr/bin:/bin", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                    health = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the env server never answered"
                time.sleep(0.2)
        assert health["task"] == "calculator-tool"
        episode = _post(f"{base}/episodes", {"prompt": "what is 2+3?", "answer": "5"})
        tool = _post(f"{base}/episodes/{episode['episode_id']}/step", {"action": "c:2+3"})
        assert (
            tool["observation"].strip("=\n") == "5" and not tool["done"]
        )  # a tool call: the episode goes on (arithmetic would end it)
        final = _post(f"{base}/episodes/{episode['episode_id']}/step", {"action": "5"})
        assert final["done"] and final["reward"] == 1.0
        with urllib.request.urlopen(f"{base}/stats", timeout=2) as resp:
            assert json.loads(resp.read())["concurrency"] == 64  # concurrencyPerReplica of the manifest
    finally:
        proc.terminate()
        proc.wait(timeout=10)
