"""What a job learns from: the model and tokenizer, the datasets, the curriculum and the rewards."""

from __future__ import annotations

import sys
from typing import ClassVar, Literal

from pydantic import Field

from kuberl.workloads.spec.base import LIST_MAX, SHORT_STRING_MAX, URI_MAX, ApiModel, Name, cel


class HubCache(ApiModel):
    """A Hugging Face hub cache on a PersistentVolumeClaim (its ``models--org--name`` and
    ``datasets--org--name`` folders, as ``huggingface-cli download`` writes them)."""

    claim_name: Name = Field(description="PersistentVolumeClaim in the job's namespace "
                                         "holding the cache; mounted read-only.")
    sub_path: str | None = Field(
        None,
        max_length=SHORT_STRING_MAX,
        pattern=r"^[A-Za-z0-9_][-._A-Za-z0-9]*(/[A-Za-z0-9_][-._A-Za-z0-9]*)*$",
        description="Folder within the claim that is the hub cache; default: the claim's root.",
    )


class ModelSpec(ApiModel):
    """Where the initial policy and its tokenizer come from."""

    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="Initial weights: s3://bucket/prefix, hf://org/name (pre-fetched into the image or a volume), "
                    "file:///path, or builtin://tiny (a small CPU model).",
    )
    tokenizer: str | None = Field(None, max_length=URI_MAX,
                                  description="Tokenizer location; defaults to the model source.")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16",
                                                  description="Training precision of the master weights' compute.")
    warmup_sft_steps: int = Field(0, ge=0, le=100000,
                                  description="Supervised warm-start steps on the dataset's "
                                              "reference answers before RL (tiny CPU models).")
    hub_cache: HubCache | None = Field(None, description=(
        "Where the job's pods read hf:// model, tokenizer and dataset "
        "sources: mounted read-only in the trainer and rollout pods at "
        "/var/cache/huggingface/hub (HF_HUB_CACHE, offline). Without it "
        "hf:// resolves from a cache in the image."))


class Dataset(ApiModel):
    """A prompt dataset. Small curated sets are the norm."""

    name: Name = Field(description="Name the curriculum stages refer to.")
    source: str = Field(
        min_length=1,
        max_length=URI_MAX,
        description="A JSONL file: file:///….jsonl, s3://bucket/….jsonl (weight store endpoint), "
                    "hf://org/name[@rev]/path.jsonl (mounted hub cache); or builtin://arithmetic (generated problems).",
    )
    prompt_field: str = Field("prompt", max_length=SHORT_STRING_MAX,
                              description="JSONL field with the prompt: text, or chat turns [{role, content}] rendered "
                                          "with the model's chat template.")
    answer_field: str = Field("answer", max_length=SHORT_STRING_MAX,
                              description="JSONL field with the reference answer the verifier checks.")
    difficulty_field: str | None = Field(None, max_length=SHORT_STRING_MAX,
                                         description="JSONL field with a numeric difficulty the curriculum filters on.")
    max_prompts: int | None = Field(None, ge=1, le=100_000_000, description="Use at most this many prompts.")


class DifficultyRange(ApiModel):
    """An inclusive range on the dataset's difficulty field."""

    cel_rules: ClassVar = (cel("!has(self.min) || !has(self.max) || self.min <= self.max",
                               "min must be less than or equal to max", ".min"),)

    min: float | None = Field(None, description="Lowest difficulty included.")
    max: float | None = Field(None, description="Highest difficulty included.")


class StageSwitch(ApiModel):
    """When a curriculum stage ends. Set exactly one."""

    cel_rules: ClassVar = (
        cel("has(self.steps) != has(self.passRate)", "set exactly one of steps or passRate"),
    )

    steps: int | None = Field(None, ge=1, le=10_000_000,
                              description="End the stage after this many optimizer steps in it.")
    pass_rate: float | None = Field(None, gt=0.0, le=1.0,
                                    description="End the stage when the moving pass rate reaches this value.")
    window: int = Field(4, ge=1, le=1000, description="Steps the moving pass rate averages over.")


class CurriculumStage(ApiModel):
    """One stage of a difficulty curriculum."""

    name: Name = Field(description="Stage name, shown in status.")
    datasets: list[Name] | None = Field(None, max_length=LIST_MAX,
                                        description="Datasets this stage draws from; all datasets when empty.")
    difficulty: DifficultyRange | None = Field(None, description="Prompt filter on the difficulty field.")
    samples_per_prompt: int | None = Field(None, ge=1, le=1024,
                                           description="Group size in this stage; overrides "
                                                       "algorithm.groupSize (hard stages sample more).")
    max_response_length: int | None = Field(None, ge=1, le=1_048_576,
                                            description="Response length cap in this stage; overrides "
                                                        "algorithm.maxResponseLength.")
    until: StageSwitch | None = Field(None, description="When to move on; the last stage runs to the end of the job.")


class CurriculumSpec(ApiModel):
    """A multi-stage difficulty curriculum."""

    cel_rules: ClassVar = (
        cel(
            "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            "stage names must be unique",
            ".stages",
        ),
        cel(
            "self.stages.all(s, s == self.stages[size(self.stages) - 1] || has(s.until))",
            "every stage but the last needs an until condition",
            ".stages",
        ),
    )

    stages: list[CurriculumStage] = Field(min_length=1, max_length=16, description="Stages in order.")


class VerifierReward(ApiModel):
    """A built-in verifier."""

    name: Literal["arithmetic", "math-boxed",
                  "exact-match"] = Field(description="Which built-in verifier scores responses "
                                                     "against the reference answer.")


def python_entry_point_problem(entry_point: str) -> str | None:
    """Why ``entry_point`` may not be a reward, or None. The standard library and builtins are
    refused: `os:system`, `builtins:eval` and their like would run the model's output as a
    command or code in the agent; a reward is the user's own module in the workload image."""
    module = entry_point.partition(":")[0]
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__":
        return (f"{entry_point!r} is in Python's standard library ({top}); a reward must be a function of "
                "your own module (module.path:function), shipped in the workload image")
    return None


class PythonReward(ApiModel):
    """A custom reward function shipped in the workload image."""

    entry_point: str = Field(
        max_length=SHORT_STRING_MAX,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="module.path:function taking (prompt, response, sample) and returning a float; "
                    "it runs in a child process of the rollout agent and may not be in the standard library.",
    )
    timeout_seconds: float = Field(
        10.0, ge=0.1, le=3600.0,
        description="A call that has not returned after this long is abandoned (its process killed): "
                    "the sample is an infrastructure failure, masked out of the loss and counted.",
    )


class RewardSpec(ApiModel):
    """How responses are scored. Set the field that matches type."""

    cel_rules: ClassVar = (
        cel("self.type != 'verifier' || has(self.verifier)", "type verifier needs the verifier field", ".verifier"),
        cel("self.type != 'agentEnv' || has(self.agentEnv)",
            "type agentEnv needs the agentEnv field naming an entry of spec.agentEnvs", ".agentEnv"),
        cel("self.type != 'python' || has(self.python)", "type python needs the python field", ".python"),
    )

    type: Literal["verifier", "agentEnv",
                  "python"] = Field("verifier",
                                    description="verifier (built in), agentEnv (the environment returns the reward), "
                                                "or python (custom entry point).")
    verifier: VerifierReward | None = Field(None, description="Built-in verifier settings.")
    agent_env: Name | None = Field(None,
                                   description="Name of the agent environment (in "
                                               "spec.agentEnvs) whose episodes return the reward.")
    python: PythonReward | None = Field(None, description="Custom reward entry point.")
