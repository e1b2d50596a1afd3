"""Load the node's images into containerd's cached root, inside a sandbox (e2e/setup.sh):

    python3 -m e2e.sandbox.launch -- python3 -m e2e.images.load

A throwaway containerd on the cached root imports what e2e/images/build.py built (a no-op
for an image already there), removes earlier builds of kuberl.local images (so each
rebuild replaces, never adds) and forgets container records a killed run left behind.
Loading here, not in the first test that needs a node, lets set-up deduplicate the
unpacked layers with the project venv (e2e/setup.sh) before any test runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2e import sandbox
from e2e.cluster import containerd
from e2e.cluster.controlplane import set_parent_death_signal
from e2e.images.build import NODE_IMAGES, Catalog, built_refs


def load(timeout: float = 60.0) -> dict:
    if not sandbox.inside():
        raise RuntimeError("load images inside a sandbox: python3 -m e2e.sandbox.launch -- python3 -m e2e.images.load")
    refs = built_refs()
    missing = [n for n in NODE_IMAGES if n not in refs]
    if missing:
        raise RuntimeError(f"images not built: {missing} (python3 -m e2e.images.build)")
    catalog = Catalog(bin=Path("/nonexistent"))
    work = Path(tempfile.mkdtemp(prefix="kuberl-load-"))
    conf, sock = containerd.write_config(work)
    log = open(work / "containerd.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(["containerd", "--config", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=set_parent_death_signal)  # noqa: PLW1509
    store = containerd.Store(sock)
    t0 = time.monotonic()
    try:
        while not store.ready():
            if proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"containerd did not start:\n{(work / 'containerd.log').read_text()[-3000:]}")
            time.sleep(0.2)
        forgotten = store.forget_containers()
        imported, pruned = store.replace_images({refs[n]: catalog.layout(n) for n in NODE_IMAGES})
        names = {refs[n]: n for n in NODE_IMAGES}
        return {"imported": [names[ref] for ref in imported], "pruned": pruned, "forgotten_containers": forgotten,
                "seconds": round(time.monotonic() - t0, 1)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main() -> None:
    print(json.dumps(load()), file=sys.stderr)


if __name__ == "__main__":
    main()
