"""algorithm.maxPromptLength: the trainer never issues a prompt longer than it."""

from __future__ import annotations

import pytest

from kuberl.workloads.trainer.prompts import PromptSource
from tests.support.objects import example_spec, workload_config_for
from tests.support.tiny import tiny_tokenizer


def _source(max_prompt_length: int) -> PromptSource:
    spec = example_spec("tiny-cpu.yaml")
    spec["algorithm"]["maxPromptLength"] = max_prompt_length
    spec["datasets"] = [{"name": "mixed", "source": "builtin://arithmetic?digits=2"}]
    return PromptSource(workload_config_for(spec, "prompts"), tiny_tokenizer())


def test_prompts_over_max_prompt_length_are_skipped():
    lengths = sorted({len(tiny_tokenizer().encode_prompt(p.to_data())) for p in _source(1024).problems})
    assert len(lengths) > 1, "the dataset mixes prompt lengths"
    short = _source(lengths[0])
    assert short.problems and all(
        len(tiny_tokenizer().encode_prompt(p.to_data())) <= lengths[0] for p in short.problems
    )
    assert len(short.problems) < len(_source(lengths[-1]).problems)
    with pytest.raises(ValueError, match="maxPromptLength"):
        _source(lengths[0] - 1)
