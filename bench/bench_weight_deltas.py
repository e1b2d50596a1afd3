"""Delta versions (weights.delta, changed 16-bit words and their bitmap): bytes stored and
encode/decode speed against a whole copy.

A BF16 file of `--mib` MiB (normal weights) and the same file after an optimizer-like step
that moves `share` of the weights by about 5 % (most moves round away in BF16: the bytes
that change are fewer than the weights moved). Measured in the same run: the delta's size
as a share of the file (the baseline: storing it whole), and encode and decode time against
copying the file (the baseline a whole version costs on disk before any network).

    .venv/bin/python bench/bench_weight_deltas.py [--mib 64] [--shares 0.01 0.03 0.1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import write_result

from kuberl.workloads.weights import delta


def bf16_bytes(weights: np.ndarray) -> bytes:
    return (weights.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # truncation: what matters is which bits move


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.mib * 1024 * 1024 // 2
    weights = rng.standard_normal(n).astype(np.float32)
    tmp = Path(tempfile.mkdtemp(prefix="kuberl-bench-deltas-"))
    rows = []
    try:
        (tmp / "parent").write_bytes(bf16_bytes(weights))
        size = (tmp / "parent").stat().st_size
        t = time.perf_counter()
        shutil.copyfile(tmp / "parent", tmp / "copy")
        copy_s = time.perf_counter() - t
        for share in args.shares:
            moved = weights.copy()
            which = rng.random(n) < share
            moved[which] *= 1 + 0.05 * rng.standard_normal(int(which.sum())).astype(np.float32)
            (tmp / "new").write_bytes(bf16_bytes(moved))
            changed = np.count_nonzero(np.frombuffer((tmp / "parent").read_bytes(), np.uint8)
                                       != np.frombuffer((tmp / "new").read_bytes(), np.uint8)) / size
            t = time.perf_counter()
            stored = delta.encode(tmp / "new", tmp / "parent", tmp / "delta")
            encode_s = time.perf_counter() - t
            t = time.perf_counter()
            delta.decode(tmp / "delta", tmp / "parent", tmp / "rebuilt")
            decode_s = time.perf_counter() - t
            assert (tmp / "rebuilt").read_bytes() == (tmp / "new").read_bytes()
            rows.append({"weights_moved": share, "bytes_changed": round(float(changed), 4),
                         "stored_over_whole": round(stored / size, 4),
                         "encode_mb_s": round(size / encode_s / 1e6), "decode_mb_s": round(size / decode_s / 1e6),
                         "encode_over_copy": round(encode_s / copy_s, 1),
                         "decode_over_copy": round(decode_s / copy_s, 1)})
            print(rows[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = write_result("bench_weight_deltas",
                       {"file_mib": args.mib, "encoding": delta.ENCODING, "block_bytes": delta.BLOCK,
                                               "copy_mb_s": round(size / copy_s / 1e6), "rows": rows,
                                               "note": "one core of the 2-core machine, one file"})
    print(out)


if __name__ == "__main__":
    main()
