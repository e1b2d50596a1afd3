"""The real node's network: one Linux bridge that pods attach to, kept inside this machine.

Pods get addresses in POD_SUBNET from the CNI bridge plugin; the bridge's own address
(GATEWAY) is the node's InternalIP, where the API server, the kubelet and the cluster DNS
listen for pods. Nothing is masqueraded and a filter rule drops anything a pod sends to
another interface, so pod traffic never leaves this machine. Root only; stdlib only.

Everything here is idempotent: `up()` first removes what a run that died left behind.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

BRIDGE = "kuberl0"
POD_SUBNET = "10.88.0.0/24"  # the real node's pods (kwok's fake pods are in 10.244.0.0/16)
GATEWAY = "10.88.0.1"
PREFIX = 24
EGRESS_CHAIN = "KUBERL-NODE-EGRESS"
INPUT_CHAIN = "KUBERL-NODE-INPUT"

CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins

# Bridged traffic must cross iptables for kube-proxy's DNAT replies to be undone
# (br_netfilter), and the host must route between the bridge and its own addresses.
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    # -w: kube-proxy holds the xtables lock while it syncs; wait instead of failing.
    return _run("iptables", "-w", "5", *args, check=check)


def bridge_exists() -> bool:
    return _run("ip", "link", "show", BRIDGE, check=False).returncode == 0


def up() -> dict[str, str]:
    """Create the bridge and the egress guard; return the sysctls' previous values."""
    down({})
    previous = {}
    for key, value in SYSCTLS.items():
        path = Path("/proc/sys") / key
        previous[key] = path.read_text().strip()
        path.write_text(value)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{GATEWAY}/{PREFIX}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    _iptables("-N", EGRESS_CHAIN)
    _iptables("-A", EGRESS_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
    _iptables("-I", "FORWARD", "1", "-j", EGRESS_CHAIN)
    return previous


def guard_input(tcp_ports: list[int]) -> None:
    """What pods may reach on the node itself: DNS and the given TCP ports (the API server
    behind the kubernetes Service, the kubelet), and replies; nothing else listening on
    the node's addresses."""
    _iptables("-N", INPUT_CHAIN)
    _iptables("-A", INPUT_CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN")
    for proto in ("udp", "tcp"):
        _iptables("-A", INPUT_CHAIN, "-p", proto, "-d", GATEWAY, "--dport", "53", "-j", "RETURN")
    for port in tcp_ports:
        _iptables("-A", INPUT_CHAIN, "-p", "tcp", "-d", GATEWAY, "--dport", str(port), "-j", "RETURN")
    _iptables("-A", INPUT_CHAIN, "-j", "DROP")
    _iptables("-I", "INPUT", "1", "-i", BRIDGE, "-j", INPUT_CHAIN)


def down(previous: dict[str, str]) -> None:
    """Remove the bridge and the guards, restore the sysctls. Safe to call twice."""
    while _iptables("-D", "FORWARD", "-j", EGRESS_CHAIN, check=False).returncode == 0:
        pass
    while _iptables("-D", "INPUT", "-i", BRIDGE, "-j", INPUT_CHAIN, check=False).returncode == 0:
        pass
    for chain in (EGRESS_CHAIN, INPUT_CHAIN):
        _iptables("-F", chain, check=False)
        _iptables("-X", chain, check=False)
    remove_kube_chains()
    if bridge_exists():
        _run("ip", "link", "delete", BRIDGE)
    for key, value in previous.items():
        (Path("/proc/sys") / key).write_text(value)


def remove_kube_chains() -> None:
    """Drop every KUBE-* chain of both address families: the kubelet's (canaries, the
    firewall for 127.0.0.0/8 it hooks into INPUT/OUTPUT, hints) and whatever kube-proxy
    --cleanup left. A machine that runs this harness is no other cluster's node."""
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        out = _run(save, check=False).stdout
        table, rules, chains = None, [], []
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A ") and " -j KUBE-" in line and not line.split()[1].startswith("KUBE-"):
                rules.append((table, line[3:]))
        for table, rule in rules:
            _run(tool, "-w", "5", "-t", table, "-D", *shlex.split(rule), check=False)
        for flag in ("-F", "-X"):
            for table, chain in chains:
                _run(tool, "-w", "5", "-t", table, flag, chain, check=False)


def cni_conflist(ipam_dir: Path) -> dict:
    """bridge + host-local + portmap + loopback, as containerd's CRI reads from conf_dir."""
    return {
        "cniVersion": "0.4.0",
        "name": "kuberl",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             # A pod reaching itself through its own Service comes back over the bridge.
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_cni_config(conf_dir: Path, ipam_dir: Path) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    ipam_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-kuberl.conflist").write_text(json.dumps(cni_conflist(ipam_dir), indent=2))


def missing_cni_plugins() -> list[str]:
    return [p for p in ("bridge", "host-local", "portmap", "loopback") if not (CNI_BIN_DIR / p).is_file()]
