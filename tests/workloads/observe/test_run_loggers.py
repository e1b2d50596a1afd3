"""spec.observability selects the run loggers the trainer opens (real TensorBoard writer)."""

from __future__ import annotations

import pytest

from kuberl.workloads.observe.run_loggers import RunLoggers, TensorBoardLogger
from kuberl.workloads.observe.step_row import StepRow
from tests.support.objects import example_spec, workload_config_for


def _cfg(tmp_path, observability=None, **endpoints):
    spec = example_spec("tiny-cpu-colocated.yaml")
    if observability is not None:
        spec["observability"] = observability
    return workload_config_for(spec, output_dir=str(tmp_path), **endpoints)


def test_tensorboard_is_on_by_default_and_off_when_disabled(tmp_path):
    on = RunLoggers.open(_cfg(tmp_path / "on"))
    assert [type(x) for x in on.loggers] == [TensorBoardLogger]
    on.log(StepRow(step=1, policy_version=1, reward_mean=0.5))
    on.close()
    assert list((tmp_path / "on" / "tensorboard").glob("events.out.tfevents.*"))
    off = RunLoggers.open(_cfg(tmp_path / "off", {"tensorboard": {"enabled": False}}))
    assert off.loggers == []
    off.close()
    assert not (tmp_path / "off" / "tensorboard").exists()


def test_a_cluster_job_copies_its_run_files_next_to_its_checkpoints(tmp_path):
    """In a cluster (no output_dir override) run files go to <checkpoint uri>/run."""
    spec = example_spec("tiny-cpu-colocated.yaml")
    spec["checkpoint"] = {"uri": str(tmp_path / "ckpt")}
    cfg = workload_config_for(spec)
    assert cfg.run_files_uri == f"{tmp_path / 'ckpt'}/run"
    assert _cfg(tmp_path).run_files_uri is None  # kuberl run: the files are in runs/<job>/ already
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "pod")})
    loggers = RunLoggers.open(cfg)
    loggers.log(StepRow(step=1, policy_version=1, reward_mean=0.5))
    loggers.flush()
    assert list((tmp_path / "ckpt" / "run" / "tensorboard").glob("events.out.tfevents.*"))
    loggers.close()


def test_a_failing_logger_is_switched_off_not_raised(tmp_path):
    class Broken:
        def log(self, row):
            raise OSError("disk full")

        def flush(self):
            pass

        def close(self):
            pass

    loggers = RunLoggers([Broken()])
    loggers.log(StepRow(step=1, policy_version=1, reward_mean=0.0))
    assert loggers.loggers == []


def test_wandb_online_without_a_key_fails_the_start_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _cfg(tmp_path, {"wandb": {"project": "p", "mode": "online", "apiKeySecret": {"name": "wandb"}}})
    with pytest.raises(RuntimeError, match="WANDB_API_KEY"):
        RunLoggers.open(cfg)
