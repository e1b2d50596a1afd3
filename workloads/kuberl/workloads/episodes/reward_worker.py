"""The child process a custom reward function runs in: `python -m kuberl.workloads.episodes.reward_worker ENTRY_POINT`.

One JSON line in per call (``[prompt, response, sample]``), one JSON line out
(``{"value": float}`` or ``{"error": "..."}``). The protocol owns the process's real stdout;
whatever the user's code prints goes to stderr, so it cannot corrupt an answer. Imports
nothing heavy: a fresh one starts in a fraction of a second after a hang killed the last.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys

# Long enough for any real message, short enough that a reward raising with a huge
# argument in its message cannot flood the agent's logs.
ERROR_CHARS = 500


def load_entry_point(entry_point: str):
    module, _, func = entry_point.partition(":")
    fn = getattr(importlib.import_module(module), func)
    if not callable(fn):
        raise TypeError(f"{entry_point} is not callable")
    return fn


def _answer(fn, line: str) -> dict:
    try:
        prompt, response, sample = json.loads(line)
        value = float(fn(prompt, response, sample))
        if not math.isfinite(value):
            raise ValueError(f"returned {value}, not a finite number")
        return {"value": value}
    except Exception as e:  # noqa: BLE001 - anything the user's code raises is that sample's failure
        return {"error": f"{type(e).__name__}: {e}"[:ERROR_CHARS]}


def main() -> None:
    from kuberl.workloads.localproc import die_with_parent_now

    die_with_parent_now()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        fn = load_entry_point(sys.argv[1])
    except Exception as e:  # noqa: BLE001 - reported to the agent, which refuses to start
        protocol.write(json.dumps({"fatal": f"{type(e).__name__}: {e}"[:ERROR_CHARS]}) + "\n")
        return
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        protocol.write(json.dumps(_answer(fn, line)) + "\n")


if __name__ == "__main__":
    main()
