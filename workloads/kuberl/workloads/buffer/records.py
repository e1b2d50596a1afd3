"""What travels through the buffer: trajectories and prompts, and their compact codecs."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class BufferError(Exception):
    """Base class for buffer errors."""


class PayloadTooLargeError(BufferError):
    def __init__(self, what: str, size: int, limit: int):
        super().__init__(
            f"{what} encodes to {size} bytes, above the NATS max_payload of {limit} bytes; "
            f"raise max_payload in the nats-server config (up to 64 MiB) or shorten the episode"
        )
        self.size, self.limit = size, limit


class CodecError(BufferError):
    """A message that is not a valid kuberl trajectory/prompt."""


INFRA_FAILED = "infra_failed"
"""`Trajectory.meta` key: why the sample is an infrastructure failure (see `Trajectory.failure`)."""


@dataclass
class Trajectory:
    """One sampled episode, as the trainer needs it.

    ``tokens`` are prompt + response ids; ``logprobs`` are the behaviour policy's logprobs of
    each token (0 where not generated); ``loss_mask`` marks tokens that are trained on
    (generated tokens, not tool outputs or the prompt). ``timing`` carries seconds spent per
    phase (generate, env, …) and ``created_at`` the wall-clock time it was finished.
    """

    sample_id: str
    prompt_id: str
    group_id: str
    policy_version: int
    tokens: np.ndarray
    logprobs: np.ndarray
    loss_mask: np.ndarray
    reward: float
    timing: dict[str, float] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, dtype="<i4")
        self.logprobs = np.asarray(self.logprobs, dtype="<f4")
        self.loss_mask = np.asarray(self.loss_mask, dtype=np.uint8)
        n = self.tokens.shape
        if self.tokens.ndim != 1 or self.logprobs.shape != n or self.loss_mask.shape != n:
            raise ValueError(
                f"trajectory {self.sample_id}: tokens, logprobs and loss_mask must be 1-D of one length, "
                f"got {self.tokens.shape}, {self.logprobs.shape}, {self.loss_mask.shape}"
            )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def failure(self) -> str | None:
        """Why the sample could not be scored (its reward raised or timed out, its environment
        was unreachable or answered 5xx), else None. Such a sample is an infrastructure
        failure: masked out of the loss and out of its group's statistics, and counted —
        never trained as a reward of 0."""
        return self.meta.get(INFRA_FAILED)


_TRAJ_MAGIC = b"KRT1"
_HEADER = struct.Struct("<4sI")  # magic, JSON header length


def encode_trajectory(t: Trajectory) -> bytes:
    """``KRT1 | u32 len | JSON header (ids, scalars) | pad to 4 | int32 tokens | float32 logprobs | u8 mask``.

    Arrays travel as raw little-endian bytes (9 bytes/token); only the few scalars are JSON.
    """
    header = json.dumps(
        {
            "sample_id": t.sample_id, "prompt_id": t.prompt_id, "group_id": t.group_id,
            "policy_version": int(t.policy_version), "reward": float(t.reward), "n": len(t),
            "timing": t.timing, "created_at": t.created_at, "meta": t.meta,
        },
        separators=(",", ":"),
    ).encode()
    header += b" " * (-(len(header) + _HEADER.size) % 4)  # keeps the int32/float32 arrays aligned
    # The arrays' own buffers go into the join: each byte is copied once, into the payload.
    arrays = (memoryview(np.ascontiguousarray(a)).cast("B") for a in (t.tokens, t.logprobs, t.loss_mask))
    return b"".join((_HEADER.pack(_TRAJ_MAGIC, len(header)), header, *arrays))


def decode_trajectory(data: bytes) -> Trajectory:
    if len(data) < _HEADER.size:
        raise CodecError("message shorter than the trajectory header")
    magic, hlen = _HEADER.unpack_from(data)
    if magic != _TRAJ_MAGIC:
        raise CodecError(f"bad magic {magic!r}, expected {_TRAJ_MAGIC!r}")
    start = _HEADER.size
    try:
        h = json.loads(data[start : start + hlen])
    except ValueError as e:
        raise CodecError(f"bad trajectory header: {e}") from e
    n, off = int(h["n"]), start + hlen
    if len(data) != off + 9 * n:
        raise CodecError(f"trajectory {h.get('sample_id')}: {len(data)} bytes, expected {off + 9 * n} for {n} tokens")
    buf = memoryview(data)
    # frombuffer views the message bytes without copying; the arrays are read-only.
    tokens = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
    logprobs = np.frombuffer(buf, dtype="<f4", count=n, offset=off + 4 * n)
    mask = np.frombuffer(buf, dtype=np.uint8, count=n, offset=off + 8 * n)
    return Trajectory(
        sample_id=h["sample_id"], prompt_id=h["prompt_id"], group_id=h["group_id"],
        policy_version=h["policy_version"], tokens=tokens, logprobs=logprobs, loss_mask=mask,
        reward=h["reward"], timing=h["timing"], created_at=h["created_at"], meta=h["meta"],
    )


@dataclass
class Prompt:
    """A unit of rollout work: one prompt, sampled ``n_samples`` times (one GRPO group).

    ``attempt`` increases when the feeder re-issues a prompt whose trajectories never came.
    Prompts are small (text or a few hundred ids), so they travel as JSON.
    """

    prompt_id: str
    data: dict[str, Any]
    n_samples: int = 1
    stage: int = 0
    attempt: int = 0

    @property
    def msg_id(self) -> str:
        return f"{self.prompt_id}#{self.attempt}"

    @property
    def group_id(self) -> str:
        return self.msg_id


def encode_prompt(p: Prompt) -> bytes:
    return json.dumps(asdict(p), separators=(",", ":")).encode()


def decode_prompt(data: bytes) -> Prompt:
    try:
        return Prompt(**json.loads(data))
    except (ValueError, TypeError) as e:
        raise CodecError(f"bad prompt message: {e}") from e
