"""Delta versions: a file stored as the 16-bit words that differ from the same file of the
parent version, with a two-level map of where they are.

Between two syncs an optimizer step changes a small share of a model's bytes (about 1–3 %
of BF16 bytes in published measurements; a weight whose update rounds away keeps its
bits). BF16 and FP16 weights are 16-bit words, so a changed weight costs two bytes of XOR
with the parent plus its bit in a bitmap of changed words. The bitmap is stored without its
zero bytes, with a second bitmap saying which of its bytes are kept: where a step changes
words at random, as optimizer steps do, that is as small as deflating the bitmap (deflate
finds no repeats in it) and costs a few vectorised numpy passes instead of deflate's
12 ms per 16 MiB block. The encoding is exact: XOR with the parent gives back every bit,
and the fetcher checks the result's sha256 against the manifest before anyone reads it.

Files stream through in blocks (`BLOCK` bytes of each input in memory at once, in buffers
reused from block to block), so a multi-gigabyte shard never sits in memory whole. Each
block is stored as a header (its length, the kept bitmap bytes, the changed words), the map
of kept bytes, the kept bytes, then the XORed words. Only files of equal size are paired: a
safetensors file whose tensor list or shapes changed is stored whole.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

BLOCK = 1024 * 1024  # even: blocks split files on word boundaries; small enough to stay in the CPU caches
ENCODING = "xor16-sparse-bitmap"
SUFFIX = ".xor16"  # the stored object's name: <file name> + SUFFIX
_HEADER = struct.Struct("<III")  # block bytes, kept bitmap bytes, changed words


def _sizes(block_bytes: int) -> tuple[int, int, int]:
    """(16-bit words, bitmap bytes, map-of-kept-bytes bytes) of a block of ``block_bytes``."""
    words = (block_bytes + 1) // 2  # an odd last byte is a word padded with a zero
    bitmap = (words + 7) // 8
    return words, bitmap, (bitmap + 7) // 8


def kept_places(kept_map: np.ndarray, bitmap_bytes: int) -> np.ndarray:
    """The places in the bitmap of the bytes it keeps (its nonzero ones), from their map."""
    return np.flatnonzero(np.unpackbits(kept_map, count=bitmap_bytes).view(bool))  # unpackbits gives 0/1: true bools


def changed_words(places: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The indices of the changed words, in increasing order, from the kept bitmap bytes and
    their places: what the encoder writes and the decoder reads."""
    bits = np.flatnonzero(np.unpackbits(kept).view(bool))  # bit k is bit k % 8 of kept byte k // 8, first word first
    return places[bits >> 3] * 8 + (bits & 7)


def pairable(new: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """Whether `new` can be stored against `parent`: both exist and have the same size."""
    p = Path(parent)
    return p.is_file() and p.stat().st_size == Path(new).stat().st_size


def encode(new: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike,
           digest: Hash | None = None) -> int:
    """Write the delta of `new` against `parent` to `out`; returns its size in bytes.
    ``digest`` (a hashlib object) is fed `new` as it is read: its checksum without a second read."""
    if not pairable(new, parent):
        raise ValueError(f"{new} and {parent} differ in size: store it whole")
    ours, theirs, xor = bytearray(BLOCK + 2), bytearray(BLOCK + 2), np.empty(BLOCK // 2 + 1, "<u2")
    with open(new, "rb", buffering=0) as a, open(parent, "rb", buffering=0) as b, open(out, "wb") as sink:
        while size := _read_into(a, memoryview(ours)[:BLOCK]):
            if digest is not None:
                digest.update(memoryview(ours)[:size])
            if _read_into(b, memoryview(theirs)[:size]) != size:
                raise ValueError(f"{parent} is shorter than {new}: it changed while being read")
            ours[size] = theirs[size] = 0  # an odd last byte's pad
            words, bitmap_bytes, _ = _sizes(size)
            diff = np.bitwise_xor(np.frombuffer(ours, "<u2", words), np.frombuffer(theirs, "<u2", words),
                                  out=xor[:words])
            bitmap = np.packbits(diff != 0)  # (packbits of the words themselves is ten times slower)
            kept_map = np.packbits(bitmap)  # a nonzero byte is a set bit
            places = kept_places(kept_map, bitmap_bytes)
            kept = bitmap[places]
            values = diff[changed_words(places, kept)]
            sink.write(_HEADER.pack(size, kept.size, values.size))
            sink.write(kept_map.tobytes())
            sink.write(kept.tobytes())
            sink.write(values.tobytes())
    return Path(out).stat().st_size


def _read(f: BinaryIO, n: int, delta: str | os.PathLike) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{delta} is truncated")
    return data


def decode(delta: str | os.PathLike, parent: str | os.PathLike, out: str | os.PathLike,
           digest: Hash | None = None) -> int:
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
            size, kept_bytes, count = _HEADER.unpack(header)
            words, bitmap_bytes, map_bytes = _sizes(size)
            if not 0 < size <= BLOCK or count > words or kept_bytes > bitmap_bytes:
                raise ValueError(f"{delta} is corrupt: a block of {size} bytes claims {count} changed words")
            kept_map = np.frombuffer(_read(d, map_bytes, delta), np.uint8)
            kept = np.frombuffer(_read(d, kept_bytes, delta), np.uint8)
            places = kept_places(kept_map, bitmap_bytes)
            if places.size != kept_bytes:
                raise ValueError(f"{delta} is corrupt: a block's map of kept bytes does not match its count")
            where = changed_words(places, kept)
            if where.size != count or (count and where[-1] >= words):
                raise ValueError(f"{delta} is corrupt: a block's bitmap does not match its count")
            block = memoryview(buffer)[:size]
            if _read_into(b, block) != size:
                raise ValueError(f"{delta} is longer than its parent {parent}")
            buffer[size] = 0  # an odd last byte's pad, as the encoder pads it
            result = np.frombuffer(buffer, "<u2", count=words)
            result[where] ^= np.frombuffer(_read(d, 2 * count, delta), "<u2")
            if digest is not None:
                digest.update(block)
            sink.write(block)
        if b.read(1):
            raise ValueError(f"{delta} is shorter than its parent {parent}")
    return Path(out).stat().st_size


def _read_into(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``f`` (short reads repeated); the bytes read, fewer only at its end."""
    got = 0
    while got < len(view) and (n := f.readinto(view[got:])):
        got += n
    return got
