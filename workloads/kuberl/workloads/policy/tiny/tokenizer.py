"""kuberl's builtin character tokenizer (builtin:// models)."""

from __future__ import annotations


class CharTokenizer:
    """One id per character; ids 0-2 are pad, beginning-of-sequence and end-of-sequence."""

    PAD, BOS, EOS = 0, 1, 2
    ALPHABET = "0123456789+-*/=()?:<>., \nabcdefghijklmnopqrstuvwxyz"

    def __init__(self) -> None:
        self._ids = {ch: i + 3 for i, ch in enumerate(self.ALPHABET)}
        self._chars = {i: ch for ch, i in self._ids.items()}

    @property
    def vocab_size(self) -> int:
        return len(self.ALPHABET) + 3

    def encode(self, text: str, bos: bool = False) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self._ids})
        if unknown:
            raise ValueError(f"characters outside the tiny tokenizer's alphabet: {unknown!r}")
        return ([self.BOS] if bos else []) + [self._ids[ch] for ch in text]

    def decode(self, ids) -> str:
        return "".join(self._chars.get(int(i), "") for i in ids)

    def to_json(self) -> dict:
        """A self-describing tokenizer file, written next to the weights."""
        return {"type": "kuberl-char", "alphabet": self.ALPHABET, "pad_token_id": self.PAD, "bos_token_id": self.BOS, "eos_token_id": self.EOS}
