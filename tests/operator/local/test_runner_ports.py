"""`kuberl run` never hands one port to two of its processes: a server binds its port only
when it is up (SGLang after a minute), so a port picked for it is still "free" meanwhile."""

from __future__ import annotations

from pathlib import Path

from kuberl.operator.local import runner


def test_a_port_given_to_a_process_is_not_given_again(monkeypatch):
    offered = iter([41697, 41697, 41697, 40001, 41697, 40002])
    monkeypatch.setattr(runner, "free_port", lambda: next(offered))
    run = runner.LocalRun(Path("job.yaml"))
    assert [run.port(), run.port(), run.port()] == [41697, 40001, 40002]
