"""What a test run leaves on the machine: a snapshot before, a snapshot after, the
difference as one table, a non-zero exit on any leak or when the disk added exceeds the
budget. `.ci/run` wraps the README's test command in it.

    python3 -m e2e.audit snapshot FILE
    python3 -m e2e.audit compare BEFORE AFTER [--root-pid PID] [--max-disk-gb N]

Compared: processes that appeared outside the audited tree (orphans, or anything in a
kubepods/kuberl cgroup), cgroup directories in every hierarchy, mounts, network links,
addresses and routes, iptables/ip6tables rules and chains in every table (nft too where
installed), kernel settings (`sysctl -a`, less the counters), entries in /tmp, /dev/shm,
/run and the system directories a node writes to, disk available and each cache's size.
Stdlib only: it runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    from kuberl.workloads.procstat import processes
except ImportError:  # CI's audit runs on the system python, before the venv: the stdlib-only reader from source
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workloads"))
    from kuberl.workloads.procstat import processes

CGROUP_FS = Path("/sys/fs/cgroup")
# Directories whose entries a run must not change (names only, one level).
WATCHED_DIRS = ("/tmp", "/dev/shm", "/run", "/var/lib", "/var/log", "/etc", "/opt", "/etc/cni",
                "/var/lib/cni", "/var/log/containers", "/var/log/pods", "/var/lib/kubelet",
                "/var/lib/containers", "/run/containers")
# Kernel counters that move on their own.
VOLATILE_SYSCTLS = re.compile(
    r"^(fs\.(dentry-state|file-nr|inode-nr|inode-state|quota\..*)|kernel\.(ns_last_pid|random\..*"
    r"|pty\.nr)|net\.netfilter\.nf_conntrack_count|.*\.stable_secret)$"
)
NODE_NAMES = re.compile(r"containerd|kubelet|kube-|etcd|kwok|coredns|nats-server|weed|sglang|kuberl|pause|runc")


def _cache_root() -> Path:
    return Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl")


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    return subprocess.run(list(argv), capture_output=True, text=True).stdout


def _processes() -> dict[str, dict]:
    out = {}
    for stat in processes():
        if stat.ppid == 2 or stat.pid == 2:
            continue  # kernel threads
        proc = Path("/proc", str(stat.pid))
        try:
            cmd = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            cgroup = proc.joinpath("cgroup").read_text()
        except OSError:
            continue
        memcg = next((line.split(":", 2)[2] for line in cgroup.splitlines() if ":memory:" in line), "")
        out[f"{stat.pid}:{stat.start_ticks}"] = {"pid": stat.pid, "ppid": stat.ppid, "comm": stat.comm,
                                                 "cmd": cmd[:300], "memcg": memcg, "state": stat.state}
    return out


def _own_cgroup_parents() -> set[str]:
    # The machine makes a cgroup per command it runs (e.g. memory:/process_api/<id>); the
    # siblings of ours come and go with other commands and are none of the run's doing.
    parents = set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if path not in ("/", ""):
            parents.add(str(Path(path).parent))
    return parents


def _cgroups() -> list[str]:
    skip = _own_cgroup_parents()
    out = []
    for hierarchy in sorted(CGROUP_FS.iterdir()) if CGROUP_FS.is_dir() else ():
        for d in hierarchy.rglob("*"):
            if not d.is_dir():
                continue
            rel = "/" + str(d.relative_to(hierarchy))
            if any(rel == s or rel.startswith(s + "/") for s in skip if s != "/"):
                continue
            out.append(f"{hierarchy.name}:{rel}")
    return sorted(out)


def _mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        f, t = pre.split(), post.split()
        out.append(f"{f[4]} {t[0]} {t[1]}")
    return sorted(out)


def _rules(save: str) -> list[str]:
    # Counters and the save header/footer change on their own.
    lines = []
    for line in _run(save).splitlines():
        if line.startswith("#") or not line.strip():
            continue
        lines.append(re.sub(r"\[\d+:\d+\]", "", line).strip())
    return lines


def _sysctls() -> dict[str, str]:
    out = {}
    for line in _run("sysctl", "-a").splitlines():
        key, _, value = line.partition(" = ")
        if key and not VOLATILE_SYSCTLS.match(key):
            out[key] = value
    return out


def _entries() -> dict[str, list[str]]:
    out = {}
    for d in WATCHED_DIRS:
        p = Path(d)
        out[d] = sorted(x.name for x in p.iterdir()) if p.is_dir() else None
    return out


def _disk() -> dict:
    st = os.statvfs("/")
    caches = {}
    root = _cache_root()
    extra = [Path.home() / ".cache" / "go-build", Path.home() / "go", Path.home() / ".cache" / "pip"]
    dirs = [str(d) for d in [*(sorted(root.iterdir()) if root.is_dir() else []), *extra] if d.is_dir()]
    # One du over all of them: a file hard-linked into several (set-up links identical
    # files) counts once, in the first; the rows then add up to what the caches hold.
    for line in _run("du", "-sxb", *dirs).splitlines() if dirs else ():
        size, _, path = line.partition("\t")
        caches[path] = int(size)
    return {"avail_bytes": st.f_bavail * st.f_frsize, "caches": caches}


def snapshot() -> dict:
    return {
        "processes": _processes(), "cgroups": _cgroups(), "mounts": _mounts(),
        "links": sorted(re.sub(r"^\d+: ", "", line.split("\\")[0]).split("<")[0].strip()
                        for line in _run("ip", "-o", "link").splitlines()),
        "addresses": sorted(" ".join(line.split()[1:4]) for line in _run("ip", "-o", "addr").splitlines()),
        "routes": sorted(_run("ip", "route").splitlines() + _run("ip", "-6", "route").splitlines()),
        "iptables": _rules("iptables-save"), "ip6tables": _rules("ip6tables-save"),
        "nft": [line.strip() for line in _run("nft", "list", "ruleset").splitlines() if line.strip()],
        "sysctls": _sysctls(), "entries": _entries(), "disk": _disk(),
    }


def _descendants(procs: dict[str, dict], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p["ppid"], []).append(p["pid"])
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def leaks(before: dict, after: dict, root_pid: int | None = None) -> dict[str, list[str]]:
    """What `after` has that `before` did not (or changed), by kind. Empty lists: clean."""
    tree = _descendants(after["processes"], root_pid) if root_pid else set()
    new_procs = []
    for key, p in after["processes"].items():
        if key in before["processes"] or p["pid"] in tree or p["pid"] == os.getpid() or p["state"] == "Z":
            continue  # a zombie holds nothing but its pid; its parent reaps it
        suspicious = (
            p["ppid"] == 1 or "kubepods" in p["memcg"] or "/kuberl" in p["memcg"] or NODE_NAMES.search(p["cmd"])
        )
        if suspicious:
            new_procs.append(f"{p['pid']} {p['comm']} (ppid {p['ppid']}, {p['memcg'] or '/'}) {p['cmd'][:120]}")

    def added(kind: str) -> list[str]:
        return sorted(set(after[kind]) - set(before[kind]))

    def changed(kind: str) -> list[str]:
        b, a = set(before[kind]), set(after[kind])
        return [f"+ {x}" for x in sorted(a - b)] + [f"- {x}" for x in sorted(b - a)]

    sysctls = [f"{k}: {before['sysctls'].get(k)} -> {v}" for k, v in sorted(after["sysctls"].items())
               if before["sysctls"].get(k, v) != v]
    sysctls += [f"{k}: added ({v})" for k, v in sorted(after["sysctls"].items()) if k not in before["sysctls"]]
    files = []
    for d, names in after["entries"].items():
        was = before["entries"].get(d)
        if names is None:
            continue
        if was is None:
            files.append(f"{d} (created)")
        else:
            files += [f"{d}/{n}" for n in sorted(set(names) - set(was))]
    packaged = _packaged([f.removesuffix(" (created)") for f in files])
    files = [f for f in files if f.removesuffix(" (created)") not in packaged]
    return {"processes": new_procs, "cgroups": added("cgroups"), "mounts": changed("mounts"),
            "links": changed("links"), "addresses": changed("addresses"), "routes": changed("routes"),
            "iptables": changed("iptables"), "ip6tables": changed("ip6tables"), "nft": changed("nft"),
            "sysctls": sysctls, "files": files}


def _packaged(paths: list[str]) -> set[str]:
    """The paths a Debian package installed (set-up installs containerd, buildah, ...):
    those are the machine's software, not something a run left behind."""
    if not paths or shutil.which("dpkg-query") is None:
        return set()
    out = subprocess.run(["dpkg-query", "-S", *paths], capture_output=True, text=True).stdout
    return {line.split(": ", 1)[1].strip() for line in out.splitlines() if ": " in line}


# Kinds that only a run's own doing changes (processes come and go with other work).
HOST_STATE = ("cgroups", "mounts", "links", "addresses", "routes", "iptables", "ip6tables", "nft", "sysctls", "files")


def left_on_host(before: dict) -> dict[str, list[str]]:
    """What changed since `before` on the host, processes aside (tests check theirs by pid)."""
    found = leaks(before, snapshot())
    return {k: v for k, v in found.items() if k in HOST_STATE and v}


def disk_added_bytes(before: dict, after: dict) -> int:
    return before["disk"]["avail_bytes"] - after["disk"]["avail_bytes"]


def table(before: dict, after: dict, found: dict[str, list[str]], budget_bytes: int | None) -> str:
    gb = lambda n: f"{n / 1e9:.2f} GB"
    added = disk_added_bytes(before, after)
    rows = [("kind", "leaked", "first")]
    for kind, items in found.items():
        rows.append((kind, str(len(items)), items[0][:100] if items else "-"))
    verdict = "ok" if budget_bytes is None or added <= budget_bytes else "OVER BUDGET"
    rows.append(("disk added", gb(added), f"budget {gb(budget_bytes) if budget_bytes is not None else '-'}: {verdict}"))
    caches_b, caches_a = before["disk"]["caches"], after["disk"]["caches"]
    for path in sorted(set(caches_b) | set(caches_a)):
        rows.append((f"  {path}", gb(caches_a.get(path, 0)), f"was {gb(caches_b.get(path, 0))}"))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]}" for r in rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("file", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--root-pid", type=int, help="the audited command's own tree (its processes are not leaks)")
    c.add_argument("--max-disk-gb", type=float, help="fail when the run added more than this much disk")
    args = ap.parse_args(argv)
    if args.action == "snapshot":
        args.file.write_text(json.dumps(snapshot()))
        return
    before, after = json.loads(args.before.read_text()), json.loads(args.after.read_text())
    found = leaks(before, after, args.root_pid)
    budget = int(args.max_disk_gb * 1e9) if args.max_disk_gb is not None else None
    print(table(before, after, found, budget))
    details = {k: v for k, v in found.items() if v}
    for kind, items in details.items():
        print(f"\n{kind}:\n  " + "\n  ".join(items[:40]))
    over = budget is not None and disk_added_bytes(before, after) > budget
    if details or over:
        sys.exit("audit: the run left the machine changed (see above)")
    print("audit: nothing left behind")


if __name__ == "__main__":
    main()
