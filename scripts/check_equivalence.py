"""medseg's SAM2 engine against stock sam2, on the same frames, per device and precision.

    python scripts/check_equivalence.py [--device auto] [--image-size 1024]
        [--precisions fp32,bf16] [--frames 8] [--batch-sizes 1,8] [--out benchmarks/equivalence]

Stock sam2 is driven only through its public API: ``init_state`` on a folder of frames
(stored losslessly as PNG data under the ``00000.jpg`` names sam2 expects, at the model's
input size so its loader does not resize), ``add_new_mask`` and ``propagate_in_video``
forward and backward, under the same autocast medseg uses. medseg runs ``pair`` mode (one
2-frame clip [support, query frame] per frame) and ``volume`` mode (support inserted at the
middle of the stack) on the same frames. Reported per configuration: the largest absolute
logit and object-score difference and the number of mask pixels that differ. Also: medseg
in bf16 against medseg in fp32 (how far bf16 moves the result). Without --checkpoint a
random-weight tiny model (object-score head biased so masks are not empty) is used: the
comparison is about arithmetic, not quality. Results: table + JSON with the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def run(args) -> dict:
    import torch

    from medseg.api import machine, versions
    from medseg.engine import Sam2Engine, build_random_checkpoint, select_device
    from medseg.engine.reference import compare, sample_frames, stock_pairs, stock_predictor, stock_run

    dev = select_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p]
    if dev.type != "cuda":
        precisions = [p for p in precisions if p == "fp32"]
    tmp = Path(tempfile.mkdtemp(prefix="medseg-equiv-"))
    ckpt = args.checkpoint or build_random_checkpoint(tmp / "random.pt", "tiny", args.image_size,
                                                      0, 5.0)
    frames_u8, masks = sample_frames(args.frames + 1, args.image_size)
    s = args.frames // 2
    query_u8 = np.delete(frames_u8, s, axis=0)
    query = (query_u8 / 255.0).astype(np.float32)
    support = (frames_u8[s] / 255.0).astype(np.float32)
    rows, medseg_out = [], {}
    for precision in precisions:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            eng = Sam2Engine(model="tiny", checkpoint=str(ckpt), device=str(dev), image_size=args.image_size,
                             batch_size=bs, precision=precision)
            ref = stock_predictor(eng)
            stock = {
                "volume": stock_run(ref, frames_u8, s, masks, eng.autocast),
                "pair": stock_pairs(ref, frames_u8[s], query_u8, masks, eng.autocast),
            }
            ours = {
                "volume": eng.run_volume(query, support, masks, insert_at=s, keep_logits=True),
                "pair": eng.run_pairs(query, support[None], masks[None],
                                      matches=np.zeros(len(query), int), keep_logits=True),
            }
            for mode in ("pair", "volume"):
                mine = (ours[mode].logits, ours[mode].object_scores)
                medseg_out[(precision, bs, mode)] = mine
                rows.append({"comparison": "medseg vs stock sam2", "precision": precision,
                             "batch_size": bs, "mode": mode, **compare(mine, stock[mode])})
            del eng, ref
    if "fp32" in precisions and "bf16" in precisions:
        bs = int(args.batch_sizes.split(",")[0])
        for mode in ("pair", "volume"):
            rows.append({"comparison": "medseg bf16 vs medseg fp32", "precision": "bf16",
                         "batch_size": bs, "mode": mode,
                         **compare(medseg_out[("bf16", bs, mode)], medseg_out[("fp32", bs, mode)])})
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {"versions": versions(), "machine": machine(), "device": str(dev), "gpu": gpu,
            "image_size": args.image_size, "frames": args.frames, "objects": len(masks),
            "checkpoint": "random weights" if not args.checkpoint else str(args.checkpoint),
            "rows": rows}


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # stock sam2's progress bars (read at import)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/equivalence"))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    if args.image_size is None:
        args.image_size = 1024 if args.device in ("auto", "cuda") and _has_cuda() else 256
    res = run(args)
    tag = args.tag or (res["gpu"] or "cpu").lower().replace(" ", "-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"equivalence_{tag}.json").write_text(json.dumps(res, indent=2))
    cols = ["comparison", "precision", "batch_size", "mode", "bitwise_equal",
            "max_abs_logit_diff", "max_abs_score_diff", "pixels_differing"]
    print(f"device {res['device']} ({res['gpu'] or 'cpu'}), image size {res['image_size']}, "
          f"{res['frames']} query frames, {res['objects']} objects")
    print(" | ".join(cols))
    for r in res["rows"]:
        print(" | ".join(str(r[c]) for c in cols))


def _has_cuda() -> bool:
    with contextlib.suppress(ImportError):
        import torch

        return torch.cuda.is_available()
    return False


if __name__ == "__main__":
    main()
