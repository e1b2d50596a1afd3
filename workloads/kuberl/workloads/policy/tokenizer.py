"""The job's tokenizer: a Hugging Face tokenizer with its chat template and stop ids.

One object, loaded from the model directory (or ``model.tokenizer``), handed to everything
that turns text into token ids: prompts, episodes, the warm start, evaluation. The trainer
and the rollout agents load it from the same files, so the ids an engine receives and the
ids the trainer trains on are the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tokenizer:
    hf: Any  # transformers.PreTrainedTokenizerBase
    stop_ids: tuple[int, ...]  # generation ends at any of these (EOS of the tokenizer and the generation config)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer of an HF directory (offline: nothing is downloaded)."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        hf = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return cls(hf, stop_token_ids(directory, hf.eos_token_id))

    @property
    def pad_id(self) -> int:
        pad = self.hf.pad_token_id
        return int(pad if pad is not None else self.stop_ids[0])

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """Plain text, no special tokens (environment observations after the first)."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def encode_prompt(self, row: dict) -> list[int]:
        """A dataset row's prompt as the engines receive it.

        ``messages`` (chat turns) are rendered with the chat template and the generation
        prompt; plain ``prompt`` text is rendered as one user turn when the tokenizer has a
        chat template, else encoded with the tokenizer's special tokens (BOS).
        """
        messages = row.get("messages")
        if messages is None and self.hf.chat_template is not None:
            messages = [{"role": "user", "content": str(row["prompt"])}]
        if messages is not None:
            text = self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(self.hf.encode(text, add_special_tokens=False))
        return list(self.hf.encode(str(row["prompt"]), add_special_tokens=True))

    def decode(self, ids) -> str:
        """Generated ids → text, without stop or other special tokens."""
        return self.hf.decode([int(i) for i in ids if int(i) not in self.stop_ids], skip_special_tokens=True)


def stop_token_ids(directory: Path, tokenizer_eos: int | None) -> tuple[int, ...]:
    """EOS ids from generation_config.json (an int or a list), else the tokenizer's EOS."""
    ids: list[int] = []
    gen = directory / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids += [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    if tokenizer_eos is not None and int(tokenizer_eos) not in ids:
        ids.append(int(tokenizer_eos))
    if not ids:
        raise ValueError(
            f"{directory}: neither generation_config.json nor the tokenizer names an end-of-sequence token"
        )
    return tuple(ids)
