"""The AgentEnv reference server process: `python -m kuberl.workloads.agentenv`."""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from kuberl.workloads.agentenv.faults import Faults
from kuberl.workloads.agentenv.protocol import MAX_BODY_BYTES, advertised_endpoint
from kuberl.workloads.agentenv.server import EnvServer, EnvSettings, serving_options
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)
POD_IP_ENV = "POD_IP"  # the operator sets it from the downward API (status.podIP)


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
    p.add_argument("--advertise-url", default=None,
                   help=f"base URL of this replica, given to clients in reset answers (default: http://${POD_IP_ENV}:<port>)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies get 413")
    p.add_argument("--body-timeout", type=float, default=10.0,
                   help="seconds a request body may take to arrive (then 408)")
    p.add_argument("--idle-timeout", type=float, default=75.0,
                   help="seconds a connection may stay without a complete request (idle, or headers still arriving)")
    p.add_argument("--fault-drop", type=float, default=0.0,
                   help="fraction of episode requests whose connection is "
                        "dropped without an answer (rehearsing failures)")
    p.add_argument("--fault-error", type=float, default=0.0,
                   help="fraction of episode requests answered 500 (rehearsing failures)")
    return p.parse_args(argv)


def settings_from(a: argparse.Namespace, env: dict[str, str]) -> EnvSettings:
    return EnvSettings(a.task, a.concurrency, a.episode_timeout, a.latency, a.latency_median, a.latency_tail, a.seed,
                       endpoint=advertised_endpoint(a.advertise_url, env.get(POD_IP_ENV), a.port),
                       max_body_bytes=a.max_body_bytes, body_timeout_s=a.body_timeout, idle_timeout_s=a.idle_timeout,
                       faults=Faults(a.fault_drop, a.fault_error))


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    settings = settings_from(a, dict(os.environ))
    log.info("agentenv starting", port=a.port, **settings.__dict__)
    web.run_app(EnvServer(settings).app(), host=a.host, port=a.port, print=None, **serving_options(settings))


if __name__ == "__main__":
    main()
