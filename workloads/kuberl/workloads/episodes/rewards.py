"""Scoring a single-turn response: built-in verifiers in process, custom functions in a child.

A custom reward (`reward.python.entryPoint`) is the user's code, called with the model's
output. It runs in child processes of the agent (`reward_worker`), each serving one call at
a time: a call that raises, returns a non-number, hangs past `reward.python.timeoutSeconds` or kills
its interpreter costs only the sample it was scoring, which comes back as a failure (an
infrastructure failure: masked and counted by the trainer), never the agent or the group.
After a timeout the child is killed and the next call starts a fresh one. An entry point
that cannot be imported at all is a wrong spec, not a sample's failure: it raises.
"""

from __future__ import annotations

import asyncio
import json
import sys
import weakref
from dataclasses import dataclass

from kuberl.workloads.localproc import dies_with_parent
from kuberl.workloads.logs import get_logger
from kuberl.workloads.spec import PythonReward, RewardSpec, python_entry_point_problem
from kuberl.workloads.tasks.verifiers import verifier_reward

log = get_logger(__name__)

START_TIMEOUT_S = 60.0  # importing the user's module (it may pull torch or a big table)
LINE_LIMIT = 1 << 20  # one answer line; far above any real one


@dataclass(frozen=True)
class Scored:
    """A reward, or why there is none."""

    value: float = 0.0
    failure: str | None = None


class RewardLoadError(RuntimeError):
    """The entry point cannot be loaded: the job's reward.python is wrong."""


class PythonRewardRunner:
    """Up to ``CHILDREN`` child processes running ``spec.entry_point``, started on demand,
    each serving one call at a time (one line in, one line out). Calls in parallel overlap,
    so a call that hangs until its timeout holds one child, not every group's scoring."""

    CHILDREN = 4

    def __init__(self, spec: PythonReward):
        problem = python_entry_point_problem(spec.entry_point)
        if problem:
            raise RewardLoadError(f"reward.python.entryPoint: {problem}")
        self.spec = spec
        self._idle: list[asyncio.subprocess.Process] = []
        self._slots = asyncio.Semaphore(self.CHILDREN)
        self._busy: set[asyncio.subprocess.Process] = set()
        self.restarts = 0

    async def _start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kuberl.workloads.episodes.reward_worker", self.spec.entry_point,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            preexec_fn=dies_with_parent())
        try:
            hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S) or b"{}")
        except (asyncio.TimeoutError, ValueError):
            hello = {}
        if not hello.get("ready"):
            await _kill(proc)
            reason = hello.get("fatal") or f"its process did not start within {START_TIMEOUT_S:.0f} s"
            raise RewardLoadError(f"reward.python.entryPoint {self.spec.entry_point!r} cannot be loaded: {reason}")
        return proc

    async def _take(self) -> asyncio.subprocess.Process:
        while self._idle:
            proc = self._idle.pop()
            if proc.returncode is None:
                return proc
        return await self._start()

    async def ready(self) -> None:
        """Start a child now, so an entry point that cannot load stops its process at start."""
        async with self._slots:
            self._idle.append(await self._take())

    async def score(self, prompt: str, response: str, sample: dict) -> Scored:
        async with self._slots:
            proc = await self._take()
            self._busy.add(proc)
            try:
                scored, healthy = await self._call(proc, prompt, response, sample)
            finally:
                self._busy.discard(proc)
            if healthy:
                self._idle.append(proc)
            else:
                self.restarts += 1
                await _kill(proc)
            return scored

    async def _call(self, proc: asyncio.subprocess.Process, prompt: str, response: str, sample: dict) -> tuple[Scored,
                                                                                                               bool]:
        """The child's answer, and whether the child can take another call."""
        try:
            proc.stdin.write((json.dumps([prompt, response, sample]) + "\n").encode())
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), self.spec.timeout_seconds)
        except asyncio.TimeoutError:
            return Scored(failure=f"reward timed out after {self.spec.timeout_seconds:g} s"), False
        except (ConnectionError, ValueError) as e:  # a pipe the child broke, or an answer line over the limit
            return Scored(failure=f"reward process failed: {type(e).__name__}: {e}"), False
        if not line:
            await proc.wait()  # its stdout closed: the exit code follows
            return Scored(failure=f"reward process exited (code {proc.returncode})"), False
        answer = json.loads(line)
        if "error" in answer:
            return Scored(failure=f"reward raised {answer['error']}"), True
        return Scored(float(answer["value"])), True

    @property
    def children(self) -> int:
        return len(self._idle) + len(self._busy)

    async def close(self) -> None:
        for proc in [*self._idle, *self._busy]:
            await _kill(proc)
        self._idle.clear()


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


# One runner per event loop and reward: the trainer and the agent score from whichever loop
# runs their groups, and a subprocess's pipes belong to the loop that started it. When a
# loop is gone its runners go too; their child sees its stdin close and exits.
_RUNNERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float], PythonRewardRunner]] = (
    weakref.WeakKeyDictionary())


def python_runner(spec: PythonReward) -> PythonRewardRunner:
    runners = _RUNNERS.setdefault(asyncio.get_running_loop(), {})
    key = (spec.entry_point, spec.timeout_seconds)
    if key not in runners:
        runners[key] = PythonRewardRunner(spec)
    return runners[key]


async def score(reward: RewardSpec, prompt: dict, response: str) -> Scored:
    """Reward of a single-turn response (verifier or python entry point)."""
    if reward.type == "verifier":
        return Scored(verifier_reward(reward.verifier.name, response, str(prompt["answer"])))
    if reward.type == "python":
        scored = await python_runner(reward.python).score(prompt["prompt"], response, prompt)
        if scored.failure:
            log.warning("reward failed; the sample is masked", entry_point=reward.python.entry_point,
                        error=scored.failure)
        return scored
    raise ValueError(f"reward type {reward.type!r} is scored by its environment, not locally")
