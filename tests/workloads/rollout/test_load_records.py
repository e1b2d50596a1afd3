"""The agents' weight-load records and the audit that reads them back, on a directory and on
real SeaweedFS (where a job in a cluster keeps them), and `kuberl audit` on both."""

from __future__ import annotations

import json

import pytest

from kuberl.operator.cli.main import main as kuberl
from kuberl.operator.local.audit import audit_files
from kuberl.workloads.observe.uploads import RunFiles
from kuberl.workloads.rollout.load_records import LoadRecords, read_loads
from kuberl.workloads.trainer.ledger import Ledger


def _a_finished_job(files: RunFiles, tmp_path, *, loaded_digest: str) -> None:
    """A trainer that published v1 whole and finished; one agent restarted between its loads."""
    ledger = Ledger(tmp_path / "trainer-pod", "inc", mirror=files)
    for event, fields in [("start", {"restored_step": 0}), ("published", {"version": 1, "digest": "d1"}),
                          ("issued", {"prompts": ["p@inc.0"]}), ("step", {"step": 1, "prompts": ["p@inc.0"]}),
                          ("checkpoint", {"step": 1}), ("end", {"step": 1, "in_flight": []})]:
        ledger.record(event, **fields)
    ledger.mirror()
    assert LoadRecords(files, "agent-0", started=1.0).loaded(1, "d1")
    again = LoadRecords(files, "agent-0", started=2.0)  # the restarted container: a file of its own
    assert again.loaded(1, loaded_digest)


def test_loads_of_every_agent_process_are_read_back_from_a_directory(tmp_path):
    files = RunFiles(str(tmp_path / "run"))
    records = LoadRecords(files, "rollout-0")
    records.loaded(3, "a")
    records.loaded(4, "b")  # the file is rewritten whole: both loads are in it
    LoadRecords(files, "rollout-1").loaded(4, "b")
    assert sorted(read_loads(files)) == [(3, "a"), (4, "b"), (4, "b")]


def test_a_store_that_is_away_loses_the_write_not_the_load(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    records = LoadRecords(RunFiles(str(blocked)), "rollout-0")
    assert not records.loaded(1, "a")  # logged, not raised: the agent keeps serving
    blocked.unlink()
    assert records.loaded(2, "b") and read_loads(RunFiles(str(blocked))) == [(1, "a"), (2, "b")]


@pytest.fixture
def store_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    return s3_server


def test_the_audit_reads_a_cluster_job_from_the_store(store_env, s3_bucket, tmp_path, capsys):
    """What a job in a cluster leaves: the ledger's segments and the agents' loads under
    <checkpoint uri>/run on the store, read back by `kuberl audit` after every pod is gone."""
    uri = f"s3://{s3_bucket}/kuberl/ns/job/checkpoints/run"
    files = RunFiles(uri, store_env.endpoint)
    _a_finished_job(files, tmp_path, loaded_digest="d1")
    report = audit_files(files)
    assert report.finished and report.steps == 1 and report.versions_loaded == 1
    assert report.zeros() == dict.fromkeys(report.zeros(), 0)
    assert kuberl(["audit", uri, "--endpoint", store_env.endpoint]) == 0
    assert json.loads(capsys.readouterr().out)["slots_trained"] == 1


def test_kuberl_audit_fails_on_a_version_loaded_that_was_never_published_whole(tmp_path, capsys):
    files = RunFiles(str(tmp_path / "run"))
    _a_finished_job(files, tmp_path, loaded_digest="half-written")
    assert kuberl(["audit", str(tmp_path / "run")]) == 1
    assert "partial_versions_loaded" in capsys.readouterr().err
    assert kuberl(["audit", str(tmp_path / "nothing-here")]) == 2
    assert "no ledger under" in capsys.readouterr().err


def test_each_load_says_where_its_files_came_from(tmp_path):
    from kuberl.workloads.rollout.load_records import load_sources

    files = RunFiles(str(tmp_path))
    records = LoadRecords(files, "agent-0", started=1.0)
    records.loaded(1, "a", "store-claimed")
    records.loaded(2, "b", "relay")
    LoadRecords(files, "agent-1", started=1.0).loaded(2, "b", "relay")
    assert load_sources(files) == {"store-claimed": 1, "relay": 2}
    assert read_loads(files) == [(1, "a"), (2, "b"), (2, "b")]


def test_a_long_run_writes_its_loads_in_bounded_parts(tmp_path, monkeypatch):
    """A swap rewrites one part of bounded size, never the whole history; a part whose
    write failed is written again at the next swap."""
    from kuberl.workloads.rollout import load_records

    monkeypatch.setattr(load_records, "RECORDS_PER_FILE", 3)
    files = RunFiles(str(tmp_path / "run"))
    records = LoadRecords(files, "rollout-0", started=1.0)
    written = []
    put = files.put_bytes
    monkeypatch.setattr(files, "put_bytes", lambda name,
                        data: (written.append((name, len(data.splitlines()))), put(name, data)))
    for v in range(1, 8):
        assert records.loaded(v, f"d{v}")
    assert max(n for _, n in written) == 3 and len({name for name, _ in written}) == 3
    assert read_loads(files) == [(v, f"d{v}") for v in range(1, 8)]
    monkeypatch.setattr(files, "put_bytes", lambda name, data: (_ for _ in ()).throw(OSError("store away")))
    assert not records.loaded(8,
                              "d8") and not records.loaded(9,
                                                           "d9")  # the third part fills, the fourth begins, unwritten
    monkeypatch.setattr(files, "put_bytes", put)
    assert records.loaded(10, "d10")
    assert read_loads(files) == [(v, f"d{v}") for v in range(1, 11)]
