"""Delta versions: a file stored as the 16-bit words that differ from the same file of the
parent version: a bitmap of which words changed (deflated) and their XOR with the parent.

Between two syncs an optimizer step changes a small share of a model's bytes (about 1–3 %
of BF16 bytes in published measurements; a weight whose update rounds away keeps its
bits). BF16 and FP16 weights are 16-bit words, so a changed weight costs two bytes of XOR
plus its bit in the map, and an unchanged one costs its bit, which deflate shrinks to
almost nothing while few words change. The encoding is exact: XOR with the parent gives back
every bit, and the fetcher checks the result's sha256 against the manifest before anyone
reads it.

Every step but the bitmap's deflate is a vectorised numpy pass, so encoding runs at about
twice and decoding at about three times the speed of deflating the whole XOR stream (the
encoding used before, bench/bench_weight_deltas.py), and the stored delta is smaller.

Files stream through in blocks (`BLOCK` bytes of each input in memory at once), so a
multi-gigabyte shard never sits in memory whole. Each block is stored as a header (its
length, the deflated bitmap's length, the count of changed words), the bitmap, then the
XORed words. Only files of equal size are paired: a safetensors file whose tensor list or
shapes changed is stored whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

BLOCK = 16 * 1024 * 1024  # even: blocks split files on word boundaries
ENCODING = "xor-sparse16"
SUFFIX = ".xor16"  # the stored object's name: <file name> + SUFFIX
LEVEL = 1  # deflate's fastest, for the bitmap: mostly zero bytes, where level 6 gains little
_HEADER = struct.Struct("<III")  # block bytes, deflated bitmap bytes, changed words


def _words(block: bytes) -> np.ndarray:
    """The block as little-endian 16-bit words (an odd last byte padded with a zero)."""
    if len(block) % 2:
        block += b"\0"
    return np.frombuffer(block, "<u2")


def pairable(new: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """Whether `new` can be stored against `parent`: both exist and have the same size."""
    p = Path(parent)
    return p.is_file() and p.stat().st_size == Path(new).stat().st_size


def encode(new: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike, level: int = LEVEL,
           digest: Hash | None = None) -> int:
    """Write the delta of `new` against `parent` to `out`; returns its size in bytes.
    ``digest`` (a hashlib object) is fed `new` as it is read: its checksum without a second read."""
    if not pairable(new, parent):
        raise ValueError(f"{new} and {parent} differ in size: store it whole")
    with open(new, "rb") as a, open(parent, "rb") as b, open(out, "wb") as sink:
        while block := a.read(BLOCK):
            if digest is not None:
                digest.update(block)
            xor = np.bitwise_xor(_words(block), _words(b.read(len(block))))
            changed = xor != 0
            bitmap = zlib.compress(np.packbits(changed).tobytes(), level)
            values = xor[changed]
            sink.write(_HEADER.pack(len(block), len(bitmap), values.size))
            sink.write(bitmap)
            sink.write(values.tobytes())
    return Path(out).stat().st_size


def _read(f, n: int, delta: str | os.PathLike) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{delta} is truncated")
    return data


def decode(delta: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike, digest: Hash | None = None) -> int:
    """Write `parent` with the changed words of `delta` applied to `out` (the file `encode`
    was given); returns its size. Lengths a delta claims are checked against the block size
    and each other before anything is allocated for them: a corrupt or hostile delta raises
    ValueError. ``digest`` (a hashlib object) is fed the result as it is written.

    Each parent block is read into one reused buffer and patched there in place: the
    unchanged words, nearly all of them, are never copied again."""
    buffer = bytearray(BLOCK + 2)
    with open(delta, "rb") as d, open(parent, "rb", buffering=0) as b, open(out, "wb") as sink:
        while header := d.read(_HEADER.size):
            if len(header) != _HEADER.size:
                raise ValueError(f"{delta} is truncated")
            size, bitmap_len, count = _HEADER.unpack(header)
            words = (size + 1) // 2
            if not 0 < size <= BLOCK or count > words or bitmap_len > 2 * words + 64:
                raise ValueError(f"{delta} is corrupt: a block of {size} bytes claims {count} changed words")
            inflater = zlib.decompressobj()
            packed = inflater.decompress(_read(d, bitmap_len, delta), (words + 7) // 8 + 1)
            if not inflater.eof or len(packed) != (words + 7) // 8:
                raise ValueError(f"{delta} is corrupt: a block's bitmap does not match its length")
            changed = np.unpackbits(np.frombuffer(packed, np.uint8), count=words).view(bool)
            if int(np.count_nonzero(changed)) != count:
                raise ValueError(f"{delta} is corrupt: a block's bitmap does not match its count")
            block = memoryview(buffer)[:size]
            if _read_into(b, block) != size:
                raise ValueError(f"{delta} is longer than its parent {parent}")
            buffer[size] = 0  # an odd last byte's pad, as `_words` pads it
            result = np.frombuffer(buffer, "<u2", count=words)
            result[changed] ^= np.frombuffer(_read(d, 2 * count, delta), "<u2")
            if digest is not None:
                digest.update(block)
            sink.write(block)
        if b.read(1):
            raise ValueError(f"{delta} is shorter than its parent {parent}")
    return Path(out).stat().st_size


def _read_into(f, view: memoryview) -> int:
    """Fill ``view`` from ``f`` (short reads repeated); the bytes read, fewer only at its end."""
    got = 0
    while got < len(view) and (n := f.readinto(view[got:])):
        got += n
    return got
