"""The trainer's ledger: what it issued, trained, dropped, published and committed, and its audit.

Decoupled mode writes one JSON line per event. Each trainer process (an *incarnation*)
writes a segment of its own, ``<output_dir>/ledger/<start ms>-<incarnation>-<part>.jsonl``
(parts of `EVENTS_PER_PART` events); the ledger is the segments in order. In a cluster the
output directory is the pod's emptyDir, so the trainer copies its segment to the run-files
location (`observe.uploads.RunFiles`, ``<checkpoint uri>/run/ledger/``) right after its
start, before every checkpoint and at the end: what a killed pod's segment lacks is what
came after its last checkpoint, which a restart rolls back anyway. A checkpoint commits
everything since the previous one; a restart rolls back what came after the checkpoint it
resumed from (the prompt counter, the optimizer steps, the answered prompts are all
restored from it). `audit` replays the ledger with that
rule and says whether the committed history holds the guarantees the job promises:

* every optimizer step 1..N exactly once (none lost, none repeated);
* every prompt slot issued was trained, dropped for a reason (no signal, too stale), or is
  still in flight at the end: none lost; none trained twice;
* every weight version a rollout agent loaded is one the trainer published whole.

A prompt *slot* is the position in the prompt source's shuffled cycle (`prompt_slot`): a
restarted trainer issues the same slots again under new ids, and a re-issued prompt keeps
its id with a higher attempt, so slots are what must be accounted for.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kuberl.workloads.observe.uploads import RunFiles

LEDGER_DIR = "ledger"
# One object per version published, copied out before the version is announced: agents may
# load a version published after the segment's last copy, by a trainer killed before the next.
PUBLISHED_DIR = f"{LEDGER_DIR}/published"


def prompt_slot(prompt_id: str) -> int:
    """The issue counter a prompt id carries (`PromptSource.take`: ``<problem>@<incarnation>.<n>``)."""
    return int(prompt_id.rsplit(".", 1)[1])


EVENTS_PER_PART = 1000  # a segment is kept in parts of this many events: a copy rewrites only the newest


def segment_name(incarnation: str, started: float) -> str:
    """A segment's name: sorting the names puts the incarnations in the order they started
    (and a segment's parts, ``<name>-<part>.jsonl``, in the order they were written)."""
    return f"{int(started * 1000):013d}-{incarnation}"


class Ledger:
    """Appends this incarnation's events to its segment; `mirror` copies the segment out.

    The segment is written in parts of `EVENTS_PER_PART` events, so a copy sends the part
    being written (and any part not yet copied since its last event), never the whole run's
    history again: a long run's copies add up to its ledger's size, not its square."""

    def __init__(self, directory: str | Path, incarnation: str, mirror: RunFiles | None = None):
        self.incarnation = incarnation
        self.segment = segment_name(incarnation, time.time())
        self.directory = Path(directory) / LEDGER_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self._mirror = mirror
        self._events = 0
        self._uncopied: set[int] = set()  # parts with events the location does not have yet

    def part_name(self, part: int) -> str:
        return f"{self.segment}-{part:05d}.jsonl"

    @property
    def path(self) -> Path:
        """The part being written."""
        return self.directory / self.part_name(self._events // EVENTS_PER_PART)

    def record(self, event: str, **fields) -> dict:
        entry = {"event": event, "incarnation": self.incarnation, **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self._uncopied.add(self._events // EVENTS_PER_PART)
        self._events += 1
        return entry

    def mirror_published(self, entry: dict) -> None:
        """Copy one "published" event out on its own (raises on failure: callers retry)."""
        if self._mirror is not None:
            name = f"{PUBLISHED_DIR}/{self.segment}-{entry['version']:010d}.json"
            self._mirror.put_bytes(name, json.dumps(entry).encode())

    def mirror(self) -> None:
        """Copy the segment's parts with new events to the run-files location (raises on
        failure: callers retry, and the parts not copied stay due)."""
        if self._mirror is None:
            return
        for part in sorted(self._uncopied):
            self._mirror.put_file(self.directory / self.part_name(part), f"{LEDGER_DIR}/{self.part_name(part)}")
            self._uncopied.discard(part)


def parse_segment(text: str) -> list[dict]:
    """The events of one segment; a torn last line (the writer was killed mid-write) is skipped."""
    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def read_ledger(location: RunFiles | str | Path) -> list[dict]:
    """Every segment's events, in the order the incarnations started; then the "published"
    events copied out on their own that their segment's copy lacks (the audit reads those
    only as the set of versions published whole, so where they stand does not matter)."""
    files = location if isinstance(location, RunFiles) else RunFiles(str(location))
    events = [e for name in files.list(LEDGER_DIR) if name.endswith(".jsonl")
              for e in parse_segment(files.read(name).decode(errors="replace"))]
    seen = {(e["incarnation"], e["version"]) for e in events if e["event"] == "published"}
    for name in files.list(PUBLISHED_DIR):
        extra = parse_segment(files.read(name).decode(errors="replace"))
        events += [e for e in extra if (e.get("incarnation"), e.get("version")) not in seen]
    return events


@dataclass
class Audit:
    steps: int = 0  # committed optimizer steps
    steps_lost: int = 0  # numbers missing from 1..N, or committed and later rolled back
    steps_repeated: int = 0  # committed more than once
    steps_redone: int = 0  # trained after the last checkpoint and rolled back by a restart (expected)
    restarts: int = 0
    slots_issued: int = 0
    slots_trained: int = 0
    slots_dropped: dict[str, int] = field(default_factory=dict)
    slots_in_flight_at_end: int = 0
    slots_lost: int = 0
    slots_trained_twice: int = 0
    reissued: int = 0  # prompts published again (overdue, restored after a restart, broker rollback)
    broker_rollbacks: int = 0
    orphans_ignored: int = 0  # trajectories of prompts this trainer never issued or already answered
    versions_published: int = 0
    versions_loaded: int = 0
    partial_versions_loaded: int = 0
    finished: bool = False

    def zeros(self) -> dict[str, int]:
        """The counts that must be zero."""
        return {"steps_lost": self.steps_lost, "steps_repeated": self.steps_repeated, "slots_lost": self.slots_lost,
                "slots_trained_twice": self.slots_trained_twice,
                "partial_versions_loaded": self.partial_versions_loaded}

    def to_dict(self) -> dict:
        return asdict(self)


def committed_events(events: list[dict], audit: Audit) -> list[dict]:
    """The events a checkpoint committed (and, after a clean end, those since the last one)."""
    committed: list[dict] = []
    pending: list[dict] = []
    committed_step = 0
    for e in events:
        kind = e["event"]
        if kind == "start":
            restored = e.get("restored_step", 0)
            if restored > committed_step:
                # Killed between writing a checkpoint and recording it: what led up to that
                # step is committed (the events after it, up to the next issue or step, too).
                at = max((i for i, p in enumerate(pending) if p["event"] == "step" and p["step"] <= restored),
                         default=-1)
                end = next((i for i in range(at + 1, len(pending)) if pending[i]["event"] in ("issued", "step")),
                           len(pending))
                committed += pending[:end]
                pending = pending[end:]
                committed_step = restored
            audit.steps_redone += sum(1 for p in pending if p["event"] == "step")
            if restored < committed_step:  # a committed checkpoint was rolled back
                audit.steps_lost += committed_step - restored
                committed = [c for c in committed if c["event"] != "step" or c["step"] <= restored]
                committed_step = restored
            pending = []
        elif kind == "checkpoint":
            committed += pending
            pending = []
            committed_step = e["step"]
        elif kind == "end":
            committed += pending + [e]
            pending = []
            audit.finished = True
        else:
            pending.append(e)
    return committed


def audit(events: list[dict], loads: list[tuple[int, str]] = ()) -> Audit:
    """Replay ``events`` (`Ledger`); ``loads``: (version, manifest digest) of every weight load an agent logged."""
    a = Audit()
    a.restarts = max(0, sum(1 for e in events if e["event"] == "start") - 1)
    a.reissued = sum(len(e["prompts"]) for e in events if e["event"] == "issued" and e.get("reissue"))
    a.broker_rollbacks = sum(1 for e in events if e["event"] == "broker_rollback")
    a.orphans_ignored = sum(e.get("count", 0) for e in events if e["event"] == "orphans")
    published = {(e["version"], e["digest"]) for e in events if e["event"] == "published"}
    a.versions_published = len(published)
    a.versions_loaded = len(set(loads))
    a.partial_versions_loaded = sum(1 for load in set(loads) if tuple(load) not in published)

    committed = committed_events(events, a)
    steps = Counter(e["step"] for e in committed if e["event"] == "step")
    a.steps = len(steps)
    a.steps_repeated = sum(n - 1 for n in steps.values())
    top = max(steps, default=0)
    a.steps_lost += sum(1 for s in range(1, top + 1) if s not in steps)

    issued = {prompt_slot(p) for e in committed if e["event"] == "issued" for p in e["prompts"]}
    trained = Counter(prompt_slot(p) for e in committed if e["event"] == "step" for p in e["prompts"])
    dropped: dict[int, str] = {prompt_slot(e["prompt"]): e["why"] for e in committed if e["event"] == "dropped"}
    end = next((e for e in reversed(committed) if e["event"] == "end"), None)
    in_flight = {prompt_slot(p) for p in end["in_flight"]} if end else set()
    a.slots_issued = len(issued)
    a.slots_trained = len(trained)
    a.slots_trained_twice = sum(1 for n in trained.values() if n > 1)
    a.slots_dropped = dict(Counter(dropped.values()))
    a.slots_in_flight_at_end = len(in_flight)
    a.slots_lost = len(issued - set(trained) - set(dropped) - in_flight)
    return a


def committed_rewards(events: list[dict]) -> list[float]:
    """The mean reward of each committed step, in step order (what a chaos run's final reward is read from)."""
    steps = {
        e["step"]: e["reward_mean"]
        for e in committed_events(events, Audit())
        if e["event"] == "step" and "reward_mean" in e
    }
    return [steps[s] for s in sorted(steps)]
