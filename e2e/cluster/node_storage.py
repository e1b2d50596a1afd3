"""PersistentVolumes for the real node: a default StorageClass with no provisioner and a
few hostPath volumes under the plane's work directory, bound on first use (the chart's
laptop stack claims its NATS and SeaweedFS data this way, as on kind)."""

from __future__ import annotations

from pathlib import Path

STORAGE_CLASS = "kuberl-local"
VOLUMES = 6
CAPACITY = "64Gi"  # nominal: hostPath is not size-limited


def create(api, root: Path, node_name: str) -> list[Path]:
    api.request("POST", "/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        # Bound when a pod using the claim is scheduled, so it lands on the node with the disk.
        "volumeBindingMode": "WaitForFirstConsumer", "reclaimPolicy": "Retain"})
    paths = []
    for i in range(VOLUMES):
        path = root / f"pv-{i}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # pods run as non-root users of their own choosing
        api.request("POST", "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{node_name}-pv-{i}"},
            "spec": {"capacity": {"storage": CAPACITY}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": str(path), "type": "Directory"},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}}}})
        paths.append(path)
    return paths
