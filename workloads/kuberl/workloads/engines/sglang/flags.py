"""The SGLang server flags every engine kuberl starts is given, in one place: the local
launcher (`kuberl run`, colocated trainers, CPU rollout agents) and the operator's engine
containers both read them. Pure data: the operator imports it without SGLang's pins."""

from __future__ import annotations

#: SGLang's scheduler polls its request sockets without blocking, so an idle server keeps
#: one core at 100% (measured: bench/bench_engine_idle.py). An RL engine is idle for
#: long stretches: while the trainer steps beside it (colocated), while a weight version
#: loads, between rounds. `--sleep-on-idle` parks it in a zmq poll that wakes on the next
#: request, so it costs no latency.
IDLE_FLAGS = ("--sleep-on-idle",)

#: SGLang on CPU: its torch attention and sampling paths (the defaults need CUDA kernels).
CPU_BACKEND_FLAGS = ("--attention-backend", "torch_native", "--sampling-backend", "pytorch")
