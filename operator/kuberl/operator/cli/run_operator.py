"""`kuberl operator`: run the kopf operator (what the operator image's entrypoint runs)."""

from __future__ import annotations

import argparse
import os
import random
import sys

import yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("operator", help="run the kuberl operator (reconciles RLJob, RolloutPool, AgentEnv)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable; globs allowed)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch every namespace (the default when no --namespace)")
    p.add_argument("--standalone", action="store_true",
                   help="no peering: for a single replica, or where the peering CRDs are absent")
    p.add_argument("--peering", default="kuberl",
                   help="peering object name replicas elect a leader in (default: kuberl)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority; the highest live replica is active, "
                        "others wait (default: random, so replicas never tie)")
    p.add_argument("--liveness", default=None,
                   help="liveness endpoint, e.g. http://0.0.0.0:8081/healthz "
                        "(default: that, on $KUBERL_HEALTH_PORT; 'off' disables)")
    p.add_argument("--print-peering-crds", action="store_true", help="print the peering CRDs as YAML and exit")
    p.set_defaults(func=cmd_operator)


def cmd_operator(args: argparse.Namespace) -> int:
    from kuberl.operator.adapters.peering import ensure_peering_object, peering_crds

    if args.print_peering_crds:
        sys.stdout.write(yaml.safe_dump_all(peering_crds(), sort_keys=False))
        return 0

    import kopf

    from kuberl.workloads.logs import configure_logging, get_logger

    configure_logging()
    log = get_logger("kuberl.operator")
    from kuberl.operator.controllers import (
        RT,  # importing the package registers the handlers with kopf
    )

    settings = RT.settings
    liveness = args.liveness
    if liveness is None and settings.health_port:
        liveness = f"http://0.0.0.0:{settings.health_port}/healthz"
    if liveness == "off":
        liveness = None
    namespaces = list(args.namespace)
    clusterwide = not namespaces
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    if not args.standalone:
        # kopf keeps a namespaced peering per served namespace and stays paused in any
        # namespace whose peering object is missing: create it in every one of them.
        for namespace in [None] if clusterwide else namespaces:
            ensure_peering_object(RT.kube, args.peering, namespace)
    log.info("starting operator", namespaces=namespaces or "*", peering=None if args.standalone else args.peering,
             priority=priority, liveness=liveness, pid=os.getpid())
    from kuberl.operator.adapters import kopf_gate, kopf_reactor

    kopf_gate.install()
    kopf_reactor.install()
    kopf.run(
        clusterwide=clusterwide,
        namespaces=namespaces,
        standalone=args.standalone,
        peering_name=None if args.standalone else args.peering,
        priority=priority,
        liveness_endpoint=liveness,
    )
    return 0
