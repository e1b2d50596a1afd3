"""The SGLang server as an `Engine`."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import torch

from kuberl.workloads.config import ENGINE_URL_ENV
from kuberl.workloads.engines.base import Completion, Engine, GenerationRequest
from kuberl.workloads.engines.sglang.client import (
    SGLangClient,
    SGLangError,
    completion_from_result,
    sampling_params_for,
)
from kuberl.workloads.logs import get_logger
from kuberl.workloads.weights.manifest import local_versions

log = get_logger(__name__)


class SGLangEngine(Engine):
    """`Engine` over one SGLang server (token ids in and out; the server loads the model's own tokenizer).

    `generate` is thread-safe: the rollout agent may run several prompt groups at once
    and SGLang batches them. A weight swap (`load_weights_from_disk`, `load_version`,
    `load_state_dict`) pauses generation, loads, sets ``weight_version`` and continues;
    in-flight requests are retracted and resume on the new weights (``swap_mode``), their
    completions tagged with the older version.
    """

    def __init__(self, client: SGLangClient | str, *, version: int = 0, swap_mode: str = "retract",
                 scratch_dir: str | Path | None = None):
        self.client = client if isinstance(client, SGLangClient) else SGLangClient(client)
        self.policy_version = version
        self.swap_mode = swap_mode
        self._owns_scratch = not scratch_dir
        self._scratch = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="kuberl-sglang-weights-"))
        self._swap_lock = threading.Lock()
        self._inflight: set[str] = set()
        self._rids_of: dict[int, list[str]] = {}  # id(GenerationRequest) -> its rows' rids, while in flight
        self._inflight_lock = threading.Lock()
        self._config_json: dict | None = None

    @classmethod
    def from_config(cls, cfg, *, version: int = -1) -> SGLangEngine:
        """The engine a rollout agent drives for ``cfg`` (a `WorkloadConfig`).

        URL: ``$KUBERL_ENGINE_URL`` (a server of its own under `kuberl run`), else
        ``cfg.rollout.engine_url`` (the pod's SGLang container, on loopback). Swaps from tensors
        (`load_state_dict`) are written under ``$KUBERL_ENGINE_SCRATCH``, which must be a
        directory the server reads too (an emptyDir mounted in both containers of a rollout pod).
        """
        import os

        url = os.environ.get(ENGINE_URL_ENV) or cfg.rollout.engine_url
        if not url:
            raise ValueError(f"rollout.engine is sglang but neither ${ENGINE_URL_ENV} nor rollout.engineUrl names its "
                             f"server")
        # "retract" for both swap policies: in-flight requests are requeued and their KV is
        # recomputed with the new weights, so every later token's logprob is exactly the new
        # policy's ("in_place" would decode on KV computed by the old weights, and SGLang
        # cannot flush the cache then). Under "drain" nothing is in flight at a swap anyway.
        return cls(SGLangClient(url), version=version, swap_mode="retract",
                   scratch_dir=os.environ.get("KUBERL_ENGINE_SCRATCH") or None)

    # ---- generation ---------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        rows = [(i, r) for i, r in enumerate(requests) for _ in range(r.n)]
        rids = [uuid.uuid4().hex for _ in rows]
        sent_version = self.policy_version
        with self._inflight_lock:
            self._inflight.update(rids)
            for (_, r), rid in zip(rows, rids, strict=True):
                self._rids_of.setdefault(id(r), []).append(rid)
        try:
            results = self.client.generate([list(r.prompt_ids) for _, r in rows],
                                           [sampling_params_for(r) for _, r in rows], rids=rids)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(rids)
                for r in requests:
                    self._rids_of.pop(id(r), None)
        if len(results) != len(rows):
            raise SGLangError(f"/generate returned {len(results)} results for {len(rows)} rows")
        out: list[list[Completion]] = [[] for _ in requests]
        for (i, _), result in zip(rows, results, strict=True):
            out[i].append(completion_from_result(result, sent_version))
        return out

    def abort(self, requests: list[GenerationRequest]) -> int:
        """Abort the rows of these requests that are in flight (a group the agent gave up on)."""
        with self._inflight_lock:
            rids = [rid for r in requests for rid in self._rids_of.get(id(r), ()) if rid in self._inflight]
        for rid in rids:
            self.client.abort(rid)
        return len(rids)

    def abort_all(self) -> int:
        """Abort this engine's in-flight requests (their completions end with "abort")."""
        with self._inflight_lock:
            rids = list(self._inflight)
        for rid in rids:
            self.client.abort(rid)
        return len(rids)

    # ---- weights ------------------------------------------------------------------------

    def pause(self) -> None:
        self.client.pause_generation(self.swap_mode)

    def resume(self) -> None:
        self.client.continue_generation()

    def load_weights_from_disk(self, path: str | Path, version: int) -> float:
        """Swap to the HF checkpoint at ``path`` (a directory the server can read); seconds taken."""
        t0 = time.perf_counter()
        with self._swap_lock:
            self.client.pause_generation(self.swap_mode)
            try:
                self.client.update_weights_from_disk(path, weight_version=str(version))
                self.policy_version = version
            finally:
                self.client.continue_generation()
        dt = time.perf_counter() - t0
        log.info("sglang weights swapped", version=version, path=str(path), seconds=round(dt, 3))
        return dt

    def load_dir(self, path: Path, version: int) -> None:
        """The server reads the fetched checkpoint itself: BF16 as BF16, blockwise FP8 as FP8
        (its ``quantization_config``); nothing is converted or written again."""
        self.load_weights_from_disk(path, version)

    def load_version(self, store, version: int | None = None, dest_dir: str | Path | None = None) -> int:
        """Fetch ``version`` (latest when None) from a `kuberl.workloads.weights.WeightStore`
        into ``dest_dir`` (default: this engine's scratch dir) and swap to it."""
        if version is None:
            version = store.latest()
            if version is None:
                raise LookupError("no weights published yet")
        dest = Path(dest_dir) if dest_dir else self._scratch / f"v{version:08d}"
        # A delta version is rebuilt against the one this server holds (it stays in scratch).
        path, _manifest = store.fetch(version, dest, have=local_versions(self._scratch))
        self.load_weights_from_disk(path, version)
        self._drop_older_versions(keep=Path(path))
        return version

    def load_state_dict(self, tensors: dict[str, torch.Tensor], version: int) -> None:
        """Write HF-named tensors as safetensors next to the server's config, then swap.

        Only for a server on this host (the path must be readable by it); pods use
        `load_version` with the weight store.
        """
        from safetensors.torch import save_file

        dest = self._scratch / f"v{version:08d}"
        dest.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(dest / "model.safetensors"))
        if self._config_json is None:
            info = self.client.model_info()
            cfg = Path(info.get("model_path", "")) / "config.json"
            self._config_json = json.loads(cfg.read_text()) if cfg.exists() else {}
        if self._config_json:
            (dest / "config.json").write_text(json.dumps(self._config_json))
        self.load_weights_from_disk(dest, version)
        self._drop_older_versions(keep=dest)

    def _drop_older_versions(self, keep: Path) -> None:
        """Once the server has loaded `keep`, the versions before it are dead weight: a
        long job would otherwise leave one full copy of the model per sync on disk."""
        for old in self._scratch.glob("v*"):
            if old.is_dir() and old != keep:
                shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.client.close()
        if self._owns_scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
