"""Services and names on the real node: kube-proxy (iptables mode) and CoreDNS.

CoreDNS runs on the node itself, listening on the bridge address the kubelet hands pods
as their nameserver; it answers the cluster domain from the API server (Services, headless
Services' pods, pod A records) and nothing else, so a pod never reaches the machine's own
resolver. kube-proxy turns Service ClusterIPs into DNAT rules, the kubernetes Service
included (it points at the API server's bridge address). Stdlib only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from e2e.cluster import node_network

CLUSTER_DOMAIN = "cluster.local"
COREDNS_USER = "system:kuberl-coredns"


def kube_proxy_argv(bin: Path, dir: Path, node_name: str, healthz_port: int, metrics_port: int) -> list[str]:
    return [
        str(bin / "kube-proxy"), f"--kubeconfig={dir / 'kube-proxy.kubeconfig'}",
        f"--hostname-override={node_name}", "--proxy-mode=iptables",
        f"--cluster-cidr={node_network.POD_SUBNET}",
        f"--healthz-bind-address=127.0.0.1:{healthz_port}", f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        # NodePorts only on the bridge, never on the machine's own interfaces.
        f"--nodeport-addresses={node_network.GATEWAY}/32",
        # Leave the machine's conntrack sysctls alone (0 = do not set).
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0s",
        "--conntrack-tcp-timeout-close-wait=0s", "--v=1",
    ]


def kube_proxy_synced(_log: Path) -> bool:
    """The kubernetes Service's rule is in the nat table: the first full sync happened."""
    out = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True)
    return out.returncode == 0 and "default/kubernetes:https" in out.stdout


def corefile(kubeconfig: Path, ready_port: int, health_port: int) -> str:
    return f""".:53 {{
    bind {node_network.GATEWAY}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} kuberl-local
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""


def coredns_rbac() -> list[dict]:
    """What the kubernetes plugin reads, granted to CoreDNS's own identity."""
    rules = [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]
    name = "kuberl:coredns"
    return [
        {"_path": "/apis/rbac.authorization.k8s.io/v1/clusterroles", "apiVersion": "rbac.authorization.k8s.io/v1",
         "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
        {"_path": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
         "apiVersion": "rbac.authorization.k8s.io/v1",
         "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}]},
    ]
