"""The megatron trainer as a gang of ranks: torchrun starts them, rank 0 drives, the rest follow.

Rank 0 runs the trainer process as it is in one rank (buffer, prompts, publishing,
evaluation, checkpoints). Every call it makes on its backend is announced first on a
control group, and every other rank makes the same call on its own shard: the model's
collectives (tensor/pipeline/data parallel) then meet. Nothing but the backend runs on
the other ranks, so the job's I/O stays in one place.

The entrypoint re-executes itself under ``torch.distributed.run`` when the gang has more
than one rank (the operator renders NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and
MASTER_PORT into every trainer pod; `kuberl run` sets them for one node).
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterator, Mapping

import torch.distributed as dist

from kuberl.workloads.logs import get_logger

log = get_logger(__name__)

STOP = "stop"
# Followers wait on the control group while rank 0 waits for rollouts, which may take
# longer than the default 30 min collective timeout; a dead rank is torchrun's to notice.
CONTROL_TIMEOUT = datetime.timedelta(days=7)


def gang_size(env: Mapping[str, str]) -> int:
    """The ranks the operator (or `kuberl run`) gave the gang: NNODES x NPROC_PER_NODE."""
    return int(env.get("NNODES", "1")) * int(env.get("NPROC_PER_NODE", "1"))


def is_rank(env: Mapping[str, str]) -> bool:
    """Whether this process was started by torchrun (or is a one-rank trainer)."""
    return "LOCAL_RANK" in env


def launch_argv(backend: str, env: Mapping[str, str]) -> list[str] | None:
    """The torchrun command that starts this node's ranks, or None when this process is the trainer itself."""
    if backend != "megatron" or is_rank(env) or gang_size(env) == 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nnodes={env.get('NNODES', '1')}", f"--node-rank={env.get('NODE_RANK', '0')}",
            f"--nproc-per-node={env.get('NPROC_PER_NODE', '1')}",
            f"--master-addr={env.get('MASTER_ADDR', '127.0.0.1')}", f"--master-port={env.get('MASTER_PORT', '29500')}",
            "-m", "kuberl.workloads.trainer"]


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def control_group():
    """A gloo group over every rank for the driver's announcements (objects travel on CPU even beside NCCL)."""
    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


class GangDriver:
    """Rank 0's backend: each call is announced to the other ranks, then made here.

    A call that returns an iterator (the update) runs lazily here and to the end on the
    followers; rank 0 always consumes it to the end too. There is one gang per process:
    the newest driver is the one `release_followers` stops.
    """

    current: GangDriver | None = None

    def __init__(self, backend):
        self.local = backend
        self.hf_config = backend.hf_config
        GangDriver.current = self

    @property
    def policy(self):
        return self.local.policy

    @property
    def reference(self):
        return self.local.reference

    def _call(self, name: str, *args):
        dist.broadcast_object_list([(name, args)], src=0, group=self.local.control)
        return getattr(self.local, name)(*args)

    def hf_state(self):
        return self._call("hf_state")

    def publish(self, request):
        return self._call("publish", request)

    def warm_start(self, batches, learning_rate):
        return self._call("warm_start", batches, learning_rate)

    def fresh_start(self, keep_reference):
        return self._call("fresh_start", keep_reference)

    def checkpoint_state(self):
        return self._call("checkpoint_state")

    def load_checkpoint_state(self, state, keep_reference):
        return self._call("load_checkpoint_state", state, keep_reference)

    def ppo_update(self, batch, algo, max_steps):
        return self._call("ppo_update", batch, algo, max_steps)


def release_followers() -> None:
    """After the trainer finished: the follower ranks return from `follow`, and the gang ends.

    Only on success: after a failure rank 0 exits and torchrun stops the gang (a follower
    may be inside a collective that an announcement would never meet).
    """
    driver, GangDriver.current = GangDriver.current, None
    if driver is not None and dist.get_world_size() > 1:
        dist.broadcast_object_list([(STOP, ())], src=0, group=driver.local.control)
    _leave(driver.local.control if driver is not None else None)


def follow(backend) -> int:
    """A follower rank: make each call rank 0 announces, until it says stop; the calls made."""
    calls = 0
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=backend.control)
        name, args = box[0]
        if name == STOP:
            _leave(backend.control)
            return calls
        result = getattr(backend, name)(*args)
        if isinstance(result, Iterator):
            for _ in result:
                pass
        calls += 1


def _leave(control) -> None:
    """Every rank waits for the others, then closes its process groups.

    A rank that exits while a peer still holds its gloo connections can abort at
    interpreter exit ("terminate called without an active exception", SIGABRT: seen in CI
    when the follower left while rank 0 was still writing its results), failing a job
    that had finished.
    """
    if not dist.is_initialized():
        return
    if control is not None and dist.get_world_size() > 1:
        dist.barrier(group=control)
    dist.destroy_process_group()
