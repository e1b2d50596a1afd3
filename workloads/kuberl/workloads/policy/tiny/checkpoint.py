"""builtin://tiny as a real Hugging Face checkpoint: Qwen2 config, safetensors, tokenizer.

Written once per cache directory (`kuberl.workloads.policy.sources`), then loaded by the
same code as any user's model: `transformers` (AutoTokenizer, AutoModelForCausalLM), the
trainer backends and SGLang read these files.

The tokenizer is character level: a byte-level BPE (the structure of Qwen2's tokenizer,
which `transformers` rebuilds for any `qwen2` checkpoint whatever tokenizer.json says) with
one id per character and no merges, so arithmetic prompts and answers are one token per
character — what makes the tiny task learnable in minutes on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2
ALPHABET = "0123456789+-*/=()?:<>., \nabcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(ALPHABET)
PAD_ID, BOS_ID, EOS_ID = range(3)
WEIGHTS_SEED = 0  # builtin://tiny is one checkpoint: the same initial weights for every job

# A turn is its content, after BOS: the tiny model sees exactly "3+4=" after <s>.
CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


def byte_level(ch: str) -> str:
    """A character as byte-level BPE spells it: printable ASCII as itself, bytes 0-32
    (space, newline) shifted to U+0100 + byte (GPT-2's byte-to-unicode table)."""
    code = ord(ch)
    if 33 <= code <= 126:
        return ch
    if code <= 32:
        return chr(256 + code)
    raise ValueError(f"{ch!r} is outside the builtin alphabet")


def build_tokenizer():
    """The builtin character tokenizer as a `transformers` fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)} | {byte_level(ch): i + len(SPECIAL_TOKENS) for i,
                                                                ch in enumerate(ALPHABET)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                  add_bos_token=True, clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_builtin_tiny(directory: str | Path, seed: int = WEIGHTS_SEED) -> Path:
    """config.json, generation_config.json, model.safetensors and the tokenizer files
    (``seed``: other initial weights, for tests that need several distinct models)."""
    from kuberl.workloads.policy.tiny.model import save_pretrained, seeded_model

    d = Path(directory)
    save_pretrained(seeded_model(seed), d)
    build_tokenizer().save_pretrained(str(d))
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                                                          "pad_token_id": PAD_ID}))
    return d
