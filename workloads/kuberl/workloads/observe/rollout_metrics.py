"""Prometheus series of a rollout agent: engine traffic, groups, weight swaps, engine health."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from kuberl.workloads.weights.stages import LOAD_STAGES

REQUESTS_IN_FLIGHT = Gauge("kuberl_rollout_requests_in_flight", "Generation requests queued or running on the engine.")
GROUPS_IN_FLIGHT = Gauge("kuberl_rollout_groups_in_flight", "Prompt groups being generated.")
REQUEST_SECONDS = Histogram("kuberl_rollout_generation_seconds",
                            "Latency of one generation request (queue + engine batch).",
                            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
TOKENS = Counter("kuberl_rollout_tokens", "Tokens generated.")
GROUPS = Counter("kuberl_rollout_groups",
                 "Prompt groups finished, by outcome (published, abandoned: too stale; failed).", ["outcome"])
SWAPS = Counter("kuberl_rollout_weight_swaps", "Policy versions loaded into the engine.")
SWAP_SECONDS = Histogram("kuberl_rollout_weight_swap_seconds", "Fetch + load time of one policy version.",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
SWAP_STAGE_SECONDS = Histogram("kuberl_rollout_weight_swap_stage_seconds",
                               f"Seconds one policy version spent in each load stage (weights.stages: "
                               f"{', '.join(LOAD_STAGES)}; "
                               "per-file stages summed over file threads).", ["stage"],
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
for _stage in LOAD_STAGES:  # every stage's series from the start (see trainer_metrics)
    SWAP_STAGE_SECONDS.labels(_stage)
FETCHES = Counter("kuberl_rollout_weight_fetches",
                  "Policy versions fetched, by where from: store (downloaded), store-claimed "
                  "(downloaded for the agents of this node), relay (copied from the node's download).", ["source"])
FETCH_SOURCES = ("store", "store-claimed", "relay")
ENGINE_VERSION = Gauge("kuberl_rollout_policy_version", "Policy version the engine serves.")
TRAINER_VERSION = Gauge("kuberl_rollout_trainer_version", "Newest policy version the trainer announced.")
ENGINE_HEALTHY = Gauge("kuberl_rollout_engine_healthy", "1 when the engine's last call succeeded, 0 when it failed.")

OUTCOMES = ("published", "abandoned", "failed")


class RolloutMetrics:
    """The agent's series; also the `BatchingEngine` observer of its engine's traffic."""

    def __init__(self) -> None:
        for outcome in OUTCOMES:
            GROUPS.labels(outcome)
        for source in FETCH_SOURCES:
            FETCHES.labels(source)
        ENGINE_HEALTHY.set(1)

    # ---- BatchingEngine observer --------------------------------------------------------

    def request_started(self) -> float:
        REQUESTS_IN_FLIGHT.inc()
        return time.perf_counter()

    def request_finished(self, started: float, tokens: int) -> None:
        REQUESTS_IN_FLIGHT.dec()
        REQUEST_SECONDS.observe(time.perf_counter() - started)
        TOKENS.inc(tokens)

    def request_failed(self) -> None:
        REQUESTS_IN_FLIGHT.dec()

    def engine_call(self, ok: bool) -> None:
        ENGINE_HEALTHY.set(1 if ok else 0)

    # ---- agent ------------------------------------------------------------------------

    @staticmethod
    def group(outcome: str) -> None:
        GROUPS.labels(outcome).inc()

    @staticmethod
    def groups_in_flight(n: int) -> None:
        GROUPS_IN_FLIGHT.set(n)

    @staticmethod
    def swapped(version: int, seconds: float, stages: dict[str, float] | None = None) -> None:
        SWAPS.inc()
        SWAP_SECONDS.observe(seconds)
        for stage, stage_seconds in (stages or {}).items():
            SWAP_STAGE_SECONDS.labels(stage).observe(stage_seconds)
        ENGINE_VERSION.set(version)

    @staticmethod
    def fetched(source: str) -> None:
        FETCHES.labels(source).inc()

    @staticmethod
    def trainer_version(version: int) -> None:
        TRAINER_VERSION.set(version)
