"""Hostile YAML against `kuberl validate`'s reader: time and peak memory per document.

Each case runs in a fresh child process that reads the file with the bounded reader
(`cli.manifest_files.load_documents`) and validates every document it yields, as
`kuberl validate` does; the child reports the seconds that took and its peak RSS growth
over the imports. The baseline, in the same run, is a normal example (examples/tiny-cpu.yaml);
results are absolute and as ratios to it. For the billion-laughs case the unbounded reader
the command used before (yaml.safe_load_all, then validation) runs too, under a 60 s and
4 GiB cap, to show what the bound saves. The bound to meet: ≤ 1 s and ≤ 100 MB per document.

    .venv/bin/python bench/bench_hostile_yaml.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import HERE, write_result

ROOT = HERE.parent
CHILD = r"""
import json, resource, sys, time
from kuberl.operator.cli.manifest_files import ManifestFileError, load_documents
from kuberl.operator.schema.validation import validation_errors
import yaml
validation_errors(load_documents("examples/tiny-cpu.yaml")[0].body)  # imports and compiled CEL rules: once per process
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
outcome = "valid"
try:
    if sys.argv[2] == "bounded":
        docs = [d.body for d in load_documents(sys.argv[1])]
    else:
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1]).read()) if d is not None]
    for doc in docs:
        if validation_errors(doc):
            outcome = "invalid"
except ManifestFileError as e:
    outcome = "refused (" + " ".join(str(e).split("): ", 1)[-1].split())[:90] + ")"
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
                  "outcome": outcome}))
"""


def cases(tmp: Path) -> dict[str, Path]:
    # Anchors defined inside a list the schema lets hold any number of items: every later
    # walk (null pruning, defaults, validation) visits each of the 10^9 expanded leaves.
    laughs = ["apiVersion: kuberl.io/v1alpha1", "kind: RLJob", "metadata: {name: laughs}", "spec:",
              "  datasets: [&a0 [x, x, x, x, x, x, x, x, x, x],"]
    laughs += [f"    &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]," for i in range(1, 9)]
    laughs += ["    " + ", ".join(["*a8"] * 10) + "]"]
    files = {
        "billion-laughs (9 levels of 10 aliases, 1 KiB)": "\n".join(laughs) + "\n",
        "nesting 100,000 deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "document over 3 MiB": "apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: big}\nspec: {x: \"" + "a" * (3 * 2**20) + "\"}\n",
        "1 MiB string in a field": (ROOT / "examples/tiny-cpu.yaml").read_text().replace("name: tiny-arithmetic", "name: " + "a" * 2**20),
        "list of 200,000 items": "apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: wide}\nspec:\n  datasets: [" + ", ".join(["1"] * 200_000) + "]\n",
        "alias cycle": "a: &a [*a]\n",
    }
    out = {"baseline: examples/tiny-cpu.yaml": ROOT / "examples/tiny-cpu.yaml"}
    for i, (name, text) in enumerate(files.items()):
        path = tmp / f"case{i}.yaml"
        path.write_text(text)
        out[name] = path
    return out


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def measure(path: Path, reader: str, timeout: float = 60) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), reader], capture_output=True, text=True, timeout=timeout,
                              cwd=ROOT, preexec_fn=_cap)
    except subprocess.TimeoutExpired:
        return {"seconds": f">{timeout:g} (killed)", "peak_mb": None, "outcome": "did not finish"}
    if proc.returncode != 0:
        return {"seconds": None, "peak_mb": None, "outcome": f"crashed: {proc.stderr.strip().splitlines()[-1][:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = cases(Path(tmp))
        bounded = {name: measure(path, "bounded") for name, path in paths.items()}
        laughs = next(p for n, p in paths.items() if n.startswith("billion"))
        before = measure(laughs, "unbounded")
    base = next(iter(bounded.values()))
    for name, r in bounded.items():
        r["time_ratio"] = round(r["seconds"] / base["seconds"], 2)
        r["seconds"] = round(r["seconds"], 4)
        r["peak_mb"] = round(r["peak_mb"], 1)
        print(f"{name:50s} {r['seconds']:8.4f} s ({r['time_ratio']:6.2f}x) {r['peak_mb']:7.1f} MB  {r['outcome']}")
    print(f"billion-laughs with the unbounded reader (before): {before}")
    worst_s = max(r["seconds"] for r in bounded.values())
    worst_mb = max(r["peak_mb"] for r in bounded.values())
    out = write_result("bench_hostile_yaml", {
        "bound": {"seconds_per_document": 1.0, "peak_mb_per_document": 100},
        "cases": bounded, "unbounded_billion_laughs": before,
        "worst": {"seconds": worst_s, "peak_mb": worst_mb, "within_bound": worst_s <= 1.0 and worst_mb <= 100},
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
