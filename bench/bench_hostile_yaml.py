"""Hostile YAML against `kuberl validate`'s reader: time and peak memory per document.

Two measurements per case, each in fresh processes:

* ``reader``: a child reads the file with the bounded reader (`cli.manifest_files.load_documents`)
  and validates every document it yields, as `kuberl validate` does; it reports the seconds
  that took and its peak RSS growth over the imports (the per-document cost);
* ``command``: the whole `kuberl validate FILE` command (interpreter start and imports
  included), its wall time and peak RSS (`getrusage(RUSAGE_CHILDREN)` in a wrapper process
  that runs only it).

The baseline, in the same run, is a normal example (examples/tiny-cpu.yaml); results are
absolute and as ratios to it. The accepted document at the node bound is rendered too
(`kuberl render`), the slowest thing an accepted document can cost. For the billion-laughs
case the unbounded reader the command used before (yaml.safe_load_all, then validation) runs
too, under a 60 s and 4 GiB cap, to show what the bound saves. The bound to meet: <= 1 s and
<= 100 MB per document.

    .venv/bin/python bench/bench_hostile_yaml.py
"""

from __future__ import annotations

import argparse
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
peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak_mb, "outcome": outcome}))
"""


WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak_mb, "rc": proc.returncode,
                  "traceback": "Traceback" in proc.stderr}))
"""


def _free_form(levels: int, width: int) -> str:
    """Nested aliases in the trainer's affinity, which the schema keeps whole: a valid document."""
    blob = "&a0 {" + ", ".join(f"k{j}: x" for j in range(width)) + "}"
    for i in range(1, levels):
        blob = f"&a{i} {{" + ", ".join("k0: " + blob if j == 0 else f"k{j}: *a{i - 1}" for j in range(width)) + "}"
    return (ROOT / "examples/tiny-cpu.yaml").read_text().replace(
        "    gpusPerReplica: 0\n  rollout:",
        f"    gpusPerReplica: 0\n    placement:\n      affinity: {blob}\n  rollout:", 1)


def cases(tmp: Path) -> dict[str, Path]:
    # Anchors defined inside a list the schema lets hold any number of items: every later
    # walk (null pruning, defaults, validation) visits each of the 10^9 expanded leaves.
    laughs = ["apiVersion: kuberl.io/v1alpha1", "kind: RLJob", "metadata: {name: laughs}", "spec:",
              "  datasets: [&a0 [x, x, x, x, x, x, x, x, x, x],"]
    laughs += [f"    &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]," for i in range(1, 9)]
    laughs += ["    " + ", ".join(["*a8"] * 10) + "]"]
    mib = "a" * 2**20
    files = {
        "billion-laughs (9 levels of 10 aliases, 1 KiB)": "\n".join(laughs) + "\n",
        "nesting 100,000 deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "document over 3 MiB": 'apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: big}\nspec: {x: "'
        + "a" * (3 * 2**20)
        + '"}\n',
        "1 MiB string in a field": (ROOT / "examples/tiny-cpu.yaml")
        .read_text()
        .replace("name: tiny-arithmetic", "name: " + mib),
        "1,000 aliases of a 1 MiB string (1 MiB file)": _free_form(1, 1).replace(
            "{k0: x}", f'[&l2 [&l1 [&s "{mib}"' + ", *s" * 9 + "]" + ", *l1" * 9 + "]" + ", *l2" * 9 + "]"
        ),
        "list of 200,000 items": "apiVersion: kuberl.io/v1alpha1\nkind: RLJob\nmetadata: {name: wide}\nspec:\n  "
        "datasets: [" + ", ".join(["1"] * 200_000) + "]\n",
        "alias cycle": "a: &a [*a]\n",
        "valid, at the node bound (45,241-node affinity)": _free_form(4, 12),
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
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), reader], capture_output=True, text=True,
                              timeout=timeout,
                              cwd=ROOT, preexec_fn=_cap)
    except subprocess.TimeoutExpired:
        return {"seconds": f">{timeout:g} (killed)", "peak_mb": None, "outcome": "did not finish"}
    if proc.returncode != 0:
        return {"seconds": None, "peak_mb": None, "outcome": f"crashed: {proc.stderr.strip().splitlines()[-1][:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command(*argv: str, runs: int = 3) -> dict:
    """Wall time and peak RSS of one `kuberl` command in a process of its own (minimum of ``runs`` runs)."""
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", WRAPPER, str(ROOT / ".venv/bin/kuberl"), *argv],
                              capture_output=True,
                              text=True, timeout=120, cwd=ROOT)
        results.append(json.loads(proc.stdout))
    best = min(results, key=lambda r: r["seconds"])
    return {"seconds": round(best["seconds"], 3), "peak_mb": round(max(r["peak_mb"] for r in results), 1),
            "rc": best["rc"],
            "traceback": any(r["traceback"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each kuberl command; its fastest is reported")
    ap.add_argument("--unbounded-timeout", type=float, default=60,
                    help="seconds the unbounded reader gets on the billion "
                         "laughs before it is killed (it never finishes)")
    args = ap.parse_args()
    runs = args.runs
    with tempfile.TemporaryDirectory() as tmp:
        paths = cases(Path(tmp))
        reader = {name: measure(path, "bounded") for name, path in paths.items()}
        commands = {name: command("validate", str(path), runs=runs) for name, path in paths.items()}
        at_bound = next(p for n, p in paths.items() if n.startswith("valid, at the node bound"))
        renders = {"baseline: examples/tiny-cpu.yaml": command("render", str(paths["baseline: examples/tiny-cpu.yaml"]),
                                                               runs=runs),
                   "valid, at the node bound (45,241-node affinity)": command("render", str(at_bound), runs=runs)}
        laughs = next(p for n, p in paths.items() if n.startswith("billion"))
        before = measure(laughs, "unbounded", timeout=args.unbounded_timeout)
    base, base_cmd = next(iter(reader.values())), next(iter(commands.values()))
    cases_out = {}
    print(f"{'case':50s} {'reader s':>9s} {'ratio':>7s} {'MB':>6s} | {'command s':>9s} {'ratio':>6s} {'peak MB':>8s} "
          f"{'ratio':>6s}  outcome")
    for name, r in reader.items():
        c = commands[name]
        row = {"reader": {"seconds": round(r["seconds"], 4), "time_ratio": round(r["seconds"] / base["seconds"], 2),
                          "peak_mb_growth": round(r["peak_mb"], 1)},
               "command": {**c, "time_ratio": round(c["seconds"] / base_cmd["seconds"], 2),
                           "peak_ratio": round(c["peak_mb"] / base_cmd["peak_mb"], 2)},
               "outcome": r["outcome"]}
        cases_out[name] = row
        print(f"{name:50s} {row['reader']['seconds']:9.4f} {row['reader']['time_ratio']:6.2f}x "
              f"{row['reader']['peak_mb_growth']:6.1f} | "
              f"{c['seconds']:9.3f} {row['command']['time_ratio']:5.2f}x {c['peak_mb']:8.1f} "
              f"{row['command']['peak_ratio']:5.2f}x  {r['outcome']}")
    for name, c in renders.items():
        print(f"kuberl render, {name}: {c}")
    print(f"billion-laughs with the unbounded reader (before): {before}")
    worst_s = max(r["reader"]["seconds"] for r in cases_out.values())
    worst_mb = max(r["reader"]["peak_mb_growth"] for r in cases_out.values())
    render_extra_s = round(renders["valid, at the node bound (45,241-node affinity)"]["seconds"]
                           - renders["baseline: examples/tiny-cpu.yaml"]["seconds"], 3)
    out = write_result("bench_hostile_yaml", {
        "bound": {"seconds_per_document": 1.0, "peak_mb_per_document": 100},
        "cases": cases_out, "render": renders, "unbounded_billion_laughs": before,
        "worst": {"reader_seconds": worst_s, "reader_peak_mb_growth": worst_mb,
                  "command_peak_mb": max(r["command"]["peak_mb"] for r in cases_out.values()),
                  "render_at_bound_extra_seconds": render_extra_s,
                  "any_traceback": any(r["command"]["traceback"] for r in cases_out.values()),
                  "within_bound": worst_s <= 1.0 and worst_mb <= 100 and render_extra_s <= 1.0},
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
