"""datasets[].source schemes: file://, s3:// (SeaweedFS) and an hf:// dataset snapshot give the
same problems; rows may be chat turns, which reach the engines through the chat template."""

from __future__ import annotations

import json

import pytest

from kuberl.workloads.spec import Dataset
from kuberl.workloads.tasks.dataset_files import DatasetNotFound
from kuberl.workloads.tasks.datasets import load_dataset
from tests.support.fixtures_servers import s3_bucket, s3_server  # noqa: F401  (fixtures)
from tests.support.tiny import tiny_tokenizer

ROWS = [
    {"question": "2+3=", "answer": "5", "level": 1},
    {"question": [{"role": "system", "content": "Answer with digits."}, {"role": "user", "content": "4+4="}],
     "answer": "8", "level": 2},
]


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    return path


def _load(source: str, **kw):
    return load_dataset(Dataset(name="sums", source=source, prompt_field="question", difficulty_field="level"), **kw)


def test_file_s3_and_hub_cache_datasets_give_the_same_problems(tmp_path, jsonl, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("KUBERL_MODEL_CACHE", str(tmp_path / "cache"))
    local = _load(f"file://{jsonl}")
    assert [p.answer for p in local] == ["5", "8"] and [p.difficulty for p in local] == [1.0, 2.0]

    client = s3_server.client()
    client.upload_file(str(jsonl), s3_bucket, "data/train.jsonl")
    assert _load(f"s3://{s3_bucket}/data/train.jsonl", s3_client=client) == local
    cached = next((tmp_path / "cache" / "datasets").iterdir())
    cached.write_text("{}")  # a damaged copy (size differs from the object) is fetched again
    assert _load(f"s3://{s3_bucket}/data/train.jsonl", s3_client=client) == local

    commit = "a" * 40
    root = tmp_path / "hub" / "datasets--org--sums"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "snapshots" / commit / "data").mkdir(parents=True)
    (root / "snapshots" / commit / "data" / "train.jsonl").write_text(jsonl.read_text())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert _load("hf://org/sums/data/train.jsonl") == local
    assert _load(f"hf://org/sums@{commit}/data/train.jsonl") == local

    with pytest.raises(DatasetNotFound,
                       match=r"dataset sums hf://org/absent/x.jsonl: .*refs/main is "
                             r"absent.*hf download --repo-type dataset org/absent"):
        _load("hf://org/absent/x.jsonl")
    with pytest.raises(DatasetNotFound, match=r"dataset sums: s3://.*/data/none.jsonl cannot be read"):
        _load(f"s3://{s3_bucket}/data/none.jsonl", s3_client=client)
    with pytest.raises(DatasetNotFound, match=r"the scheme must be builtin://, file://, s3:// or hf://"):
        _load("gs://bucket/x.jsonl")


def test_chat_rows_are_rendered_with_the_chat_template(jsonl):
    text, chat = _load(f"file://{jsonl}")
    tok = tiny_tokenizer()
    assert chat.messages is not None and chat.prompt == "4+4=" and text.messages is None
    # The builtin template: BOS, then every turn's content; a plain prompt is one user turn.
    assert tok.encode_prompt(chat.to_data()) == tok.encode_prompt({"prompt": "Answer with digits.4+4="})
    assert tok.encode_prompt(text.to_data()) == tok.encode_prompt({"messages": [{"role": "user", "content": "2+3="}]})


def test_a_row_without_the_prompt_field_names_the_row_and_the_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"dataset sums row 1: no field 'question' \(set promptField/answerField"):
        _load(f"file://{path}")
