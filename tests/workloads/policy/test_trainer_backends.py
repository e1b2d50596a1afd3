"""The model seam: ``trainer.backend`` picks the backend the trainer process trains with.

Both backends start from the same builtin://tiny HF checkpoint, give the same logprobs on
the same tokens, and run the trainer's warm start, RL round and publish path. megatron runs
as a one-rank gang inside the trainer process (gloo on CPU).

Each test runs in its own interpreter (`python -m tests.workloads.policy.test_trainer_backends
NAME DIR`): importing megatron-core changes process-wide torch state (it registers numpy
types as safe globals of torch.load), which would leak into the other tests' checkpoints.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.workloads.trainer.test_workloads_local import _answered, _tiny_trainer


ROOT = Path(__file__).resolve().parents[3]


def _run_alone(name: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "tests.workloads.policy.test_trainer_backends", name, str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.strip().endswith(f"{name} ok")


def test_trainer_backend_field_chooses_the_backend_and_both_agree(tmp_path):
    _run_alone("backends_agree", tmp_path)


def test_megatron_refuses_a_parallelism_it_does_not_run(tmp_path):
    _run_alone("megatron_refuses", tmp_path)


def backends_agree(tmp_path):
    from kuberl.workloads.policy.megatron.backend import MegatronTrainerBackend
    from kuberl.workloads.policy.tiny.backend import TinyTrainerBackend

    # No entropy bonus: megatron's vocab-parallel entropy is not implemented (the update refuses it).
    tiny = _tiny_trainer(tmp_path / "t", algorithm={"entropyCoef": 0.0})
    mega = _tiny_trainer(tmp_path / "m", algorithm={"entropyCoef": 0.0},
                         trainer={"backend": "megatron", "replicas": 1, "gpusPerReplica": 0},
                         model={"source": "builtin://tiny", "dtype": "float32"})
    assert isinstance(tiny.backend, TinyTrainerBackend) and isinstance(mega.backend.local, MegatronTrainerBackend)
    # One checkpoint, two libraries: the HF weights they hold are the same tensors.
    a, b = tiny.backend.hf_state(), mega.backend.hf_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    groups = _answered(tiny, tiny.prompts.take(4, 0), pass_all=False, response_len=lambda i: 1 + i % 3)
    from kuberl.workloads.rl.batch import collate

    batch = collate(groups, pad_id=tiny.tokenizer.pad_id)
    lp_t = tiny.backend.policy.logprobs(batch.ids, batch.valid, 1.0) * batch.valid
    lp_m = mega.backend.policy.logprobs(batch.ids, batch.valid, 1.0) * batch.valid
    assert (lp_t - lp_m).abs().max() < 1e-5

    for tr in (tiny, mega):
        tr.cfg.model.warmup_sft_steps = 2
        tr.init_fresh()
        rows = tr.train(groups)
        assert rows and all(r.policy["grad_norm"] > 0 for r in rows)
    moved = mega.backend.hf_state()
    assert any(not torch.equal(moved[k], b[k]) for k in b), "megatron trained: its weights moved"
    # What the trainer publishes and its engines load is HF-named, whatever the backend.
    engine_model = mega.engine_model()
    assert all(torch.equal(v, moved[k]) for k, v in engine_model.state_dict().items())
    # A checkpoint is one backend's: switching trainer.backend over a checkpoint.uri is refused, naming the field.
    with pytest.raises(ValueError, match="written by the megatron trainer .trainer.backend: megatron"):
        tiny.backend.load_checkpoint_state(mega.backend.checkpoint_state(), keep_reference=False)


def megatron_refuses(tmp_path):
    """Parallelism the megatron trainer does not run (context, expert) or a gang that TP x PP
    does not divide is refused with the field and the fix."""
    from kuberl.workloads.policy.megatron.backend import gang_refusal

    cfg = _tiny_trainer(tmp_path / "ok").cfg
    assert gang_refusal(cfg, 1) is None and gang_refusal(cfg, 3) is None
    cfg.parallelism.tensor = 2
    assert "3 ranks, not a multiple of tensor x pipeline = 2" in gang_refusal(cfg, 3)
    # The API refuses context parallel for megatron too (CEL); the process keeps its own guard.
    cfg.parallelism.tensor, cfg.parallelism.context = 1, 2
    assert "set context and expert to 1" in gang_refusal(cfg, 2)


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    {"backends_agree": backends_agree, "megatron_refuses": megatron_refuses}[sys.argv[1]](Path(sys.argv[2]))
    print(f"{sys.argv[1]} ok")
