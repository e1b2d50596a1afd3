"""HTTP client of one SGLang server: generate, abort, weight updates, health."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from kuberl.workloads.engines.base import Completion, GenerationRequest
from kuberl.workloads.logs import get_logger

log = get_logger(__name__)


class SGLangError(RuntimeError):
    """The server answered, but refused or failed the call (4xx/5xx, success=false)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EngineDeadError(SGLangError):
    """The server is unreachable or its process has exited; the rollout pod must restart it."""


class SGLangClient:
    """One SGLang server's HTTP API. Thread-safe (one pooled `httpx.Client`)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, generate_timeout: float = 600.0,
                 retries: int = 4, backoff: float = 0.5, max_backoff: float = 8.0,
                 liveness: Callable[[], None] | None = None):
        """``liveness`` (optional) raises when the server process is known dead, e.g.
        `SGLangServer.check_alive` for a server we launched; it is consulted on every
        transport error so death is reported at once instead of after all retries."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.generate_timeout = generate_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.liveness = liveness
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    def close(self) -> None:
        self._http.close()

    # ---- transport ----------------------------------------------------------------------

    def _dead(self, what: str, err: BaseException) -> EngineDeadError:
        if self.liveness is not None:
            try:
                self.liveness()
            except Exception as died:  # noqa: BLE001 - liveness raises whatever its owner chose; the process is gone
                return EngineDeadError(f"SGLang engine at {self.base_url} died ({what}): {died}")
        return EngineDeadError(f"SGLang engine at {self.base_url} unreachable ({what}): {type(err).__name__}: {err}")

    def _check_process(self, what: str, err: BaseException) -> None:
        if self.liveness is not None:
            try:
                self.liveness()
            except Exception as died:  # noqa: BLE001 - see _dead
                raise EngineDeadError(f"SGLang engine at {self.base_url} died ({what}): {died}") from err

    def _call(self, method: str, path: str, *, body: Any = None, timeout: float | None = None,
              retry: bool = True, ok: tuple[int, ...] = (200,)) -> httpx.Response:
        """One request with retries. Transport errors and 5xx retry (when ``retry``); 4xx never."""
        attempts = self.retries + 1 if retry else 1
        delay = self.backoff
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                r = self._http.request(method, path, json=body, timeout=timeout or self.timeout)
            except httpx.TransportError as e:
                last = e
                self._check_process(f"{method} {path}", e)
                log.warning("sglang call failed", path=path, attempt=attempt + 1, error=f"{type(e).__name__}: {e}")
            else:
                if r.status_code in ok:
                    return r
                if r.status_code < 500:
                    raise SGLangError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}", r.status_code)
                last = SGLangError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}", r.status_code)
                log.warning("sglang call failed", path=path, attempt=attempt + 1, status=r.status_code)
            if attempt + 1 < attempts:
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        assert last is not None
        if isinstance(last, SGLangError):
            raise last
        raise self._dead(f"{method} {path} after {attempts} attempt(s)", last) from last

    # ---- endpoints ----------------------------------------------------------------------

    def generate(self, input_ids: list[list[int]], sampling_params: list[dict[str, Any]], *,
                 rids: list[str] | None = None, return_logprob: bool = True,
                 timeout: float | None = None) -> list[dict[str, Any]]:
        """One ``/generate`` call for a batch of rows; one result dict per row, in order."""
        if not input_ids:
            return []
        rids = rids or [uuid.uuid4().hex for _ in input_ids]
        body = {"input_ids": input_ids, "sampling_params": sampling_params, "rid": rids,
                "return_logprob": return_logprob}
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                r = self._http.post("/generate", json=body, timeout=timeout or self.generate_timeout)
                break
            except httpx.ConnectError as e:  # never reached the server: safe to send again
                self._check_process("POST /generate", e)
                if attempt == self.retries:
                    raise self._dead(f"POST /generate after {attempt + 1} attempt(s)", e) from e
                log.warning("sglang generate: connect failed, retrying", attempt=attempt + 1, error=str(e))
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            except httpx.TransportError as e:  # may be running there: stop it, then report
                self._check_process("POST /generate", e)
                self._abort_quietly(rids)
                raise self._dead("POST /generate", e) from e
        if r.status_code != 200:
            raise SGLangError(f"POST /generate -> {r.status_code}: {r.text[:2000]}", r.status_code)
        out = r.json()
        return out if isinstance(out, list) else [out]

    def _abort_quietly(self, rids: list[str]) -> None:
        for rid in rids:
            try:
                self.abort(rid)
            except SGLangError:
                pass

    def update_weights_from_disk(self, model_path: str | Path, *, weight_version: str | None = None,
                                 flush_cache: bool = True, abort_all_requests: bool = False,
                                 timeout: float = 600.0) -> dict[str, Any]:
        """Load new weights in place. Raises `SGLangError` (the server keeps its old weights)."""
        body: dict[str, Any] = {"model_path": str(model_path), "flush_cache": flush_cache,
                                "abort_all_requests": abort_all_requests}
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        r = self._call("POST", "/update_weights_from_disk", body=body, timeout=timeout, ok=(200, 400))
        out = r.json()
        if r.status_code != 200 or not out.get("success", False):
            raise SGLangError(f"update_weights_from_disk({model_path}) failed: {out.get('message', out)}",
                              r.status_code)
        return out

    def release_memory_occupation(self) -> None:
        """Free the server's GPU memory (weights and KV cache) while the trainer uses the GPUs."""
        self._call("POST", "/release_memory_occupation", body={}, timeout=600.0)

    def resume_memory_occupation(self) -> None:
        self._call("POST", "/resume_memory_occupation", body={}, timeout=600.0)

    def pause_generation(self, mode: str = "retract") -> None:
        """``abort`` (in-flight requests end now), ``retract`` (requeued, KV recomputed after
        `continue_generation`) or ``in_place`` (kept with their KV cache)."""
        if mode not in ("abort", "retract", "in_place"):
            raise ValueError(f"pause mode {mode!r}")
        self._call("POST", "/pause_generation", body={"mode": mode})

    def continue_generation(self) -> None:
        self._call("POST", "/continue_generation", body={})

    def abort(self, rid: str | None = None, *, abort_all: bool = False) -> None:
        if rid is None and not abort_all:
            raise ValueError("abort needs a rid or abort_all=True")
        self._call("POST", "/abort_request", body={"rid": rid or "", "abort_all": abort_all})

    def flush_cache(self) -> bool:
        """Drop the prefix cache. False when the server refused (requests still running)."""
        r = self._call("POST", "/flush_cache", ok=(200, 400))
        return r.status_code == 200

    def health(self, timeout: float = 20.0) -> bool:
        """``/health_generate``: the server generated one token (or is busy generating)."""
        try:
            r = self._http.get("/health_generate", timeout=timeout)
        except httpx.TransportError:
            return False
        return r.status_code == 200

    def check_health(self, timeout: float = 20.0) -> None:
        """Raise `EngineDeadError` unless the engine is healthy."""
        if self.liveness is not None:
            try:
                self.liveness()
            except Exception as died:
                raise EngineDeadError(f"SGLang engine at {self.base_url} died: {died}") from died
        if not self.health(timeout):
            raise EngineDeadError(f"SGLang engine at {self.base_url} failed /health_generate")

    def model_info(self) -> dict[str, Any]:
        return self._call("GET", "/model_info").json()

    def weight_version(self) -> str | None:
        return self.model_info().get("weight_version")


def sampling_params_for(req: GenerationRequest) -> dict[str, Any]:
    """SGLang sampling params with `TorchEngine`'s semantics: plain temperature sampling
    over the full vocabulary, stopping at ``stop_ids`` (kept in the output) or the limit."""
    params: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "temperature": req.temperature,
                              "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                              "skip_special_tokens": False, "no_stop_trim": True}
    if req.stop_ids:
        params["stop_token_ids"] = list(req.stop_ids)
    else:
        params["ignore_eos"] = True  # SGLang would otherwise stop at the config's EOS
    return params


def _as_version(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def completion_from_result(result: dict[str, Any], sent_version: int) -> Completion:
    """A `Completion` from one ``/generate`` result: the ids are those of the logprobs (``output_ids``
    only comes back from a server without a tokenizer)."""
    meta = result.get("meta_info", {})
    lps = meta.get("output_token_logprobs") or []
    ids = result.get("output_ids")
    if ids is None:
        ids = [int(t[1]) for t in lps]
    if len(lps) != len(ids):
        raise SGLangError(f"{len(ids)} output ids but {len(lps)} logprobs for rid {meta.get('id')}")
    for (_, tok, *_), tid in zip(lps, ids, strict=True):
        if int(tok) != int(tid):
            raise SGLangError(f"logprob token {tok} != output token {tid} (rid {meta.get('id')})")
    fr = meta.get("finish_reason") or {}
    kind = fr.get("type") if isinstance(fr, dict) else str(fr)
    reason = {"stop": "stop", "length": "length", "abort": "abort"}.get(kind, kind or "length")
    served = meta.get("weight_version")
    # Weights only move forward: the oldest version that can have produced a token is the
    # smaller of the one we knew at send time and the one the server reports at the end.
    version = (
        min(v for v in (sent_version, _as_version(served)) if v is not None)
        if _as_version(served) is not None
        else sent_version
    )
    return Completion(token_ids=[int(t) for t in ids], logprobs=[float(lp[0]) for lp in lps], finish_reason=reason,
                      policy_version=version,
                      meta={"rid": meta.get("id"), "weight_version": served, "prompt_tokens": meta.get("prompt_tokens"),
                            "e2e_latency": meta.get("e2e_latency")})
