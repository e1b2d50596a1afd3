"""The AgentEnv reference server process: `python -m kuberl.workloads.agentenv`."""

from __future__ import annotations

import argparse

from aiohttp import web

from kuberl.workloads.agentenv.server import EnvServer, EnvSettings
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kuberl.workloads.agentenv", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--task", default="arithmetic", choices=["arithmetic", "calculator-tool"])
    p.add_argument("--concurrency", type=int, default=32, help="open episodes before new ones get 429")
    p.add_argument("--episode-timeout", type=float, default=300.0, help="seconds an episode may run")
    p.add_argument("--latency", default="none", choices=["none", "lognormal", "pareto"])
    p.add_argument("--latency-median", type=float, default=0.0, help="median injected delay per step (s)")
    p.add_argument("--latency-tail", type=float, default=1.0, help="lognormal sigma, or 1/Pareto shape")
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    settings = EnvSettings(a.task, a.concurrency, a.episode_timeout, a.latency, a.latency_median, a.latency_tail, a.seed)
    log.info("agentenv starting", port=a.port, **settings.__dict__)
    web.run_app(EnvServer(settings).app(), host=a.host, port=a.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
