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


def test_frames(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames with smooth structure + noise, and two object masks (K, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    frames = []
    for i in range(n):
        c = 0.05 * np.sin(i)
        img = 0.3 + 0.4 * (((yy - c) / 0.5) ** 2 + ((xx + c) / 0.35) ** 2 < 1)
        img = img + 0.2 * (((yy + 0.4) / 0.2) ** 2 + ((xx - 0.5) / 0.15) ** 2 < 1)
        img = img + rng.normal(0, 0.05, img.shape)
        frames.append(np.clip(img * 255, 0, 255).astype(np.uint8))
    masks = np.stack([((yy / 0.5) ** 2 + (xx / 0.35) ** 2 < 1),
                      (((yy + 0.4) / 0.2) ** 2 + ((xx - 0.5) / 0.15) ** 2 < 1)])
    return np.stack(frames), masks


def stock_run(predictor, frames_u8: np.ndarray, prompt_frame: int, masks: np.ndarray,
              autocast) -> tuple[np.ndarray, np.ndarray]:
    """Stock sam2: logits (n, K, H, W) and object scores (n, K) of every frame but the prompt's."""
    import torch
    from PIL import Image

    n, h, w = frames_u8.shape
    with tempfile.TemporaryDirectory() as d:
        for i, f in enumerate(frames_u8):
            Image.fromarray(f).convert("RGB").save(Path(d) / f"{i:05d}.jpg", format="PNG")
        with torch.inference_mode(), autocast():
            state = predictor.init_state(d)
            for o, m in enumerate(masks):
                predictor.add_new_mask(state, prompt_frame, o, torch.from_numpy(m))
            logits = np.full((n, len(masks), h, w), np.nan, np.float32)
            for reverse in (False, True):
                for fidx, _, lg in predictor.propagate_in_video(state, start_frame_idx=prompt_frame,
                                                                reverse=reverse):
                    logits[fidx] = lg[:, 0].float().cpu().numpy()
            scores = np.full((n, len(masks)), np.nan, np.float32)
            for o in range(len(masks)):
                out = state["output_dict_per_obj"][o]["non_cond_frame_outputs"]
                for fidx, v in out.items():
                    scores[fidx, o] = float(v["object_score_logits"].float().reshape(-1)[0])
    keep = [i for i in range(n) if i != prompt_frame]
    return logits[keep], scores[keep]


def stock_pairs(predictor, support: np.ndarray, queries: np.ndarray, masks: np.ndarray, autocast):
    """Stock sam2, one 2-frame video [support, query] per query frame."""
    res = [stock_run(predictor, np.stack([support, q]), 0, masks, autocast) for q in queries]
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


def compare(a: tuple, b: tuple) -> dict:
    """Largest logit / score difference and differing mask pixels (logit > 0)."""
    la, sa = a
    lb, sb = b
    return {
        "max_abs_logit_diff": float(np.nanmax(np.abs(la - lb))),
        "max_abs_score_diff": float(np.nanmax(np.abs(sa - sb))),
        "pixels_differing": int(((la > 0) != (lb > 0)).sum()),
        "pixels": int(la.size),
        "bitwise_equal": bool(np.array_equal(la, lb, equal_nan=True)
                              and np.array_equal(sa, sb, equal_nan=True)),
    }


def run(args) -> dict:
    import torch

    from medseg.api import machine, versions
    from medseg.checkpoints import build_random_checkpoint
    from medseg.engine import Sam2Engine, select_device

    dev = select_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p]
    if dev.type != "cuda":
        precisions = [p for p in precisions if p == "fp32"]
    tmp = Path(tempfile.mkdtemp(prefix="medseg-equiv-"))
    ckpt = args.checkpoint or build_random_checkpoint(tmp / "random.pt", "tiny", args.image_size,
                                                      0, 5.0)
    frames_u8, masks = test_frames(args.frames + 1, args.image_size)
    s = args.frames // 2
    query_u8 = np.delete(frames_u8, s, axis=0)
    query = (query_u8 / 255.0).astype(np.float32)
    support = (frames_u8[s] / 255.0).astype(np.float32)
    rows, medseg_out = [], {}
    for precision in precisions:
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            eng = Sam2Engine("tiny", str(ckpt), str(dev), image_size=args.image_size,
                             batch_size=bs, precision=precision)
            stock = {
                "volume": stock_run(eng.predictor, frames_u8, s, masks, eng.autocast),
                "pair": stock_pairs(eng.predictor, frames_u8[s], query_u8, masks, eng.autocast),
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
            del eng
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
    os.environ.setdefault("TQDM_DISABLE", "1")  # stock sam2's progress bars
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
