"""pytest fixtures for tests against a real Kubernetes API server.

`kube` (session): the local control plane from e2e/cluster (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok fake CPU/GPU nodes), or, when $KUBECONFIG
names an existing file, that cluster instead (kind on a laptop). Either way the CRDs in
crds/ are installed and Established before any test runs.

`namespace` (function): a fresh namespace per test, deleted afterwards, with its
`default` service account present (the ServiceAccount admission plugin rejects pods
until the service-account controller has created it).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"

from e2e.cluster import controlplane

__all__ = ["Kube", "kube", "namespace", "wait_until", "yaml_documents"]


def yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def wait_until(what: str, check, timeout: float = 60.0, interval: float = 0.25):
    """Poll `check()` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Kube:
    """Handle on the cluster under test: a kubeconfig, a kubectl that matches the server,
    and a configured kubernetes client."""

    kubeconfig: Path
    kubectl_path: Path

    def __post_init__(self) -> None:
        import kubernetes

        self.api_client = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.api_client)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self._dynamic = None
        # kwok fake nodes (ours carry type=kwok): pods then reach Running without images
        # and obey kuberl.io/fake-phase. Also true for a plane started by `controlplane.py up`.
        self.kwok = bool(self.core.list_node(label_selector="type=kwok").items)

    @property
    def dynamic(self):
        """Discovery-backed client for arbitrary kinds (built lazily: discovery costs a second)."""
        if self._dynamic is None:
            from kubernetes.dynamic import DynamicClient

            self._dynamic = DynamicClient(self.api_client)
        return self._dynamic

    def request(self, method: str, path: str, body: dict | None = None, *,
                query: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        """A raw API call: (HTTP status, decoded body), errors included rather than raised.
        For what the typed clients hide: query parameters such as fieldValidation, the
        server's own error text, or acting as another identity via `token`."""
        cfg = self.api_client.configuration
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        else:
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            auth = cfg.get_api_key_with_prefix("authorization")
            if auth:
                headers["Authorization"] = auth
        url = cfg.host + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw.startswith(b"{") else {"message": raw.decode()}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)

    def install_crds(self) -> list[str]:
        """Apply every CRD in crds/ server-side and wait until each is Established."""
        names = []
        for path in sorted(CRDS_DIR.glob("*.yaml")):
            self.kubectl("apply", "--server-side", "--force-conflicts",
                         "--field-manager=kuberl-tests", "-f", str(path))
            names += [d["metadata"]["name"] for d in yaml_documents(path)
                      if d.get("kind") == "CustomResourceDefinition"]
        if names:
            self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                         *[f"crd/{n}" for n in names])
        return names


def _kubectl_for_existing_cluster() -> Path:
    # Prefer our pinned kubectl (version skew policy: within one minor of the server).
    built = controlplane.bin_dir() / "kubectl"
    if built.is_file():
        return built
    import shutil

    found = shutil.which("kubectl")
    if not found:
        pytest.fail("KUBECONFIG is set but no kubectl: run e2e/cluster/build.sh")
    return Path(found)


@pytest.fixture(scope="session")
def kube():
    existing = os.environ.get("KUBECONFIG")
    if existing and Path(existing).is_file():
        k = Kube(Path(existing), _kubectl_for_existing_cluster())
        k.install_crds()
        yield k
        return

    bin_dir = controlplane.ensure_built()
    plane = controlplane.ControlPlane(bin=bin_dir)
    plane.start()
    try:
        k = Kube(plane.kubeconfig, plane.kubectl_path)
        k.install_crds()
        yield k
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: Kube):
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {"kuberl.io/test": "true"}}})
    wait_until(f"default service account in {name}",
               lambda: kube.core.list_namespaced_service_account(
                   name, field_selector="metadata.name=default").items, timeout=30)
    yield name
    # Not waiting: namespace deletion is asynchronous and other tests need not wait on it.
    kube.core.delete_namespace(name)
