"""Read a W&B run file (``run-<id>.wandb``) back: what an offline run would upload.

The file is a 7-byte header (``:W&B``, magic 0xBEE1, version 0) followed by a LevelDB-style
log: 32 KiB blocks of records (crc32c 4, length 2, type 1: full/first/middle/last),
each payload a ``wandb_internal_pb2.Record``. wandb ships no public reader for it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, partial = [], HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # the block's tail is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            partial = chunk
        elif kind == MIDDLE:
            partial += chunk
        elif kind == LAST:
            out.append(partial + chunk)
            partial = b""
    return out


def history(path: Path) -> list[dict]:
    """The logged rows: {key: value} (plus ``_step``), in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in payloads(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows
