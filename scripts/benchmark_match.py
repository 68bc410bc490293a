"""Cost of the dynamic matcher: N query frames against an M-member bank.

    python scripts/benchmark_match.py [--frames 300] [--bank 64] [--hw 512] [--out benchmarks/match]

Times the weight-free distances (SSIM, NCC) and, with a SAM2 model (random weights: timing
only), the descriptor distance on already-encoded features, i.e. what matching adds on top of
the encoder pass the propagation needs anyway.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--bank", type=int, default=64)
    ap.add_argument("--hw", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/match"))
    args = ap.parse_args()
    from medseg.engine import Sam2Engine, build_random_checkpoint
    from medseg.match import ncc_distance, ssim_distance
    from medseg.report import machine, versions

    rng = np.random.default_rng(0)
    q = rng.random((args.frames, args.hw, args.hw), dtype=np.float32)
    b = rng.random((args.bank + 1, args.hw, args.hw), dtype=np.float32)
    rows = {}
    for name, fn in (("ssim", ssim_distance), ("ncc", ncc_distance)):
        t0 = time.perf_counter()
        d = fn(q, b)
        rows[name] = {"seconds": round(time.perf_counter() - t0, 3), "shape": list(d.shape)}
    ck = build_random_checkpoint(Path(tempfile.mkdtemp()) / "r.pt", "tiny", args.image_size)
    e = Sam2Engine(model="tiny", checkpoint=str(ck), device=args.device)
    n_enc = 16
    t0 = time.perf_counter()
    entries = e.encode_many(q[:n_enc])
    enc_per_frame = (time.perf_counter() - t0) / n_enc
    bank_entries = e.encode_many(b)
    t0 = time.perf_counter()
    bd = e.descriptors(bank_entries)
    for _ in range(args.frames // n_enc):
        e.distances(e.descriptors(entries), bd)
    rows["sam2_descriptor"] = {"seconds": round(time.perf_counter() - t0, 3),
                               "note": "descriptor + distances only, on encoded features"}
    rows["sam2_encoder_reference"] = {"seconds": round(enc_per_frame * args.frames, 3),
                                      "note": f"image encoder for {args.frames} frames "
                                              f"(image size {args.image_size}), needed anyway"}
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"frames": args.frames, "bank_members": args.bank + 1, "hw": args.hw,
            "device": args.device, "versions": versions(), "machine": machine(), "rows": rows}
    (args.out / f"match_{args.device}.json").write_text(json.dumps(meta, indent=2))
    print(f"{args.frames} query frames x {args.bank + 1} bank members, {args.hw}x{args.hw}, "
          f"{args.device}")
    for k, v in rows.items():
        print(f"  {k:24s} {v['seconds']:8.3f} s")


if __name__ == "__main__":
    main()
