"""Delta versions: a file stored as its byte-wise XOR against the same file of the parent
version, deflate-compressed.

Between two syncs an optimizer step changes a small share of a model's bytes (about 1–3 %
of BF16 bytes in published measurements; a weight whose update rounds away keeps its
bits). XOR leaves zeros wherever a byte kept its value, and deflate stores long zero runs in
a few bytes each, so a delta costs a few bytes per changed byte. The encoding is exact: XOR
with the parent gives back every bit, and the fetcher checks the result's sha256 against the
manifest before anyone reads it.

Files stream through in blocks (`BLOCK` bytes of each input in memory at once), so a
multi-gigabyte shard never sits in memory whole. Only files of equal size are paired: a
safetensors file whose tensor list or shapes changed is stored whole.

Deflate (zlib, in the standard library) rather than zstd: zstd is faster at the same ratio,
but it is not in the trainer and rollout images, and adding a package rebuilds their
dependency layer. `bench/bench_weights.py` measures what this one costs.
"""

from __future__ import annotations

import os
from pathlib import Path

import zlib

import numpy as np

BLOCK = 16 * 1024 * 1024
ENCODING = "xor-deflate"
SUFFIX = ".xor.z"  # the stored object's name: <file name> + SUFFIX
LEVEL = 1  # deflate's fastest: on XOR deltas its ratio is close to level 6's at twice the speed


def _xor(a: bytes, b: bytes) -> bytes:
    """a ^ b, byte-wise (equal lengths), 8 bytes per operation where the length allows."""
    whole = len(a) - len(a) % 8
    out = np.bitwise_xor(np.frombuffer(a, np.uint64, whole // 8), np.frombuffer(b, np.uint64, whole // 8)).tobytes()
    if whole < len(a):
        out += np.bitwise_xor(np.frombuffer(a, np.uint8, offset=whole), np.frombuffer(b, np.uint8, offset=whole)).tobytes()
    return out


def pairable(new: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """Whether `new` can be stored against `parent`: both exist and have the same size."""
    p = Path(parent)
    return p.is_file() and p.stat().st_size == Path(new).stat().st_size


def encode(new: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike, level: int = LEVEL) -> int:
    """Write deflate(new XOR parent) to `out`; returns its size in bytes."""
    if not pairable(new, parent):
        raise ValueError(f"{new} and {parent} differ in size: store it whole")
    compressor = zlib.compressobj(level)
    with open(new, "rb") as a, open(parent, "rb") as b, open(out, "wb") as sink:
        while block := a.read(BLOCK):
            sink.write(compressor.compress(_xor(block, b.read(len(block)))))
        sink.write(compressor.flush())
    return Path(out).stat().st_size


def decode(delta: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write parent XOR inflate(delta) to `out` (the file `encode` was given); returns its size."""
    inflater = zlib.decompressobj()
    with open(delta, "rb") as d, open(parent, "rb") as b, open(out, "wb") as sink:

        def emit(data: bytes) -> None:
            base = b.read(len(data))
            if len(base) != len(data):
                raise ValueError(f"{delta} is longer than its parent {parent}")
            sink.write(_xor(data, base))

        while chunk := d.read(BLOCK // 16):
            # Bounded output per call: a zero run inflates a thousandfold.
            emit(inflater.decompress(chunk, BLOCK))
            while inflater.unconsumed_tail:
                emit(inflater.decompress(inflater.unconsumed_tail, BLOCK))
        emit(inflater.flush())
        if not inflater.eof:
            raise ValueError(f"{delta} is truncated")
        if b.read(1):
            raise ValueError(f"{delta} is shorter than its parent {parent}")
    return Path(out).stat().st_size
