"""Speed and memory of ``medseg segment`` end to end, against raw sam2 propagation.

    python scripts/benchmark_speed.py [--sizes 50,100,200,400] [--hw 512] [--device auto]
        [--image-size 256] [--modes pair,volume] [--matcher sam2] [--checkpoint PATH]
        [--no-raw] [--out benchmarks/speed]

For every volume length (synthetic CT-like volumes of SIZE slices of HW x HW, written to and
read from NIfTI), one fresh process runs the whole job (load, frames, bank, match, SAM2,
post-process, write) and reports wall time per stage, slices per second, peak RAM (max RSS)
and peak GPU memory. In the same run, the stock sam2 predictor (``init_state`` on a JPEG
folder, one object, mask prompt on frame 0) propagates through the same frames; only
``propagate_in_video`` is timed. medseg's throughput is reported as a ratio to it.

Timing a model does not depend on its weights: without --checkpoint a random-weight tiny
model built from the real sam2 config is used (at --image-size, default 1024 on CUDA and 256
on CPU). Results: CSV + JSON with the machine description.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ct(n: int, hw: int, seed: int):
    """A CT-like volume (HU) with a body, two organs and noise; returns (image, label)."""
    from medseg.io import Volume

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, hw), np.linspace(-1, 1, hw), indexing="ij")
    zz = np.linspace(-1, 1, n)[:, None, None]
    body = ((yy / 0.8) ** 2 + (xx / 0.95) ** 2 < 1)[None]
    organ1 = (zz / 0.9) ** 2 + ((yy + 0.1) / 0.35) ** 2 + ((xx - 0.35) / 0.3) ** 2 < 1
    organ2 = (zz / 0.6) ** 2 + ((yy - 0.2) / 0.2) ** 2 + ((xx + 0.45) / 0.15) ** 2 < 1
    img = np.where(body, 0, -1000).astype(np.int16) + np.zeros((n, 1, 1), np.int16)
    img[organ1] = 60
    img[organ2] = 120
    img = img + rng.normal(0, 10, img.shape).astype(np.int16)
    lab = np.zeros(img.shape, np.uint8)
    lab[organ1] = 1
    lab[organ2] = 2
    geo = {"spacing": (0.8, 0.8, 2.0)}
    return Volume(img, **geo), Volume(lab, **geo)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args) -> dict:
    """One measurement in this process (called via --worker)."""
    import torch

    from medseg.api import Segmenter
    from medseg.engine import select_device
    from medseg.io import write_image

    tmp = Path(args.tmp)
    q_img, _ = synthetic_ct(args.size, args.hw, 1)
    paths = {"q": tmp / f"q{args.size}.nii.gz", "s": tmp / "s.nii.gz", "l": tmp / "l.nii.gz"}
    if not paths["s"].exists():
        s_img, s_lab = synthetic_ct(40, args.hw, 2)
        write_image(s_img, paths["s"])
        write_image(s_lab, paths["l"])
    write_image(q_img, paths["q"])
    del q_img
    dev = select_device(args.device)
    rec: dict = {"slices": args.size, "hw": args.hw, "device": str(dev), "mode": args.mode}
    if args.mode == "raw":
        rec.update(raw_sam2(args, paths["q"], dev))
    else:
        seg = Segmenter(args.model, args.checkpoint, args.device, image_size=args.image_size,
                        batch_size=args.batch_size)
        _ = seg.engine  # load outside the timed job
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = seg.segment(paths["s"], paths["l"], paths["q"], labels=[1], mode=args.mode,
                          matcher=args.matcher, bank_size=args.bank_size)
        res.save(tmp / f"out_{args.mode}_{args.size}", overwrite=True)
        wall = time.perf_counter() - t0
        t = res.report.timings_s
        rec.update({f"{k}_s": v for k, v in t.items() if k != "model_load"})
        rec["total_s"] = round(wall, 3)
        rec["slices_per_s"] = round(args.size / wall, 3)
        rec["image_size"] = seg.engine.image_size
        rec["precision"] = seg.engine.precision
        rec["random_weights"] = seg.engine.describe()["random_weights"]
    rec["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if dev.type == "cuda":
        rec["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return rec


def raw_sam2(args, query_path: Path, dev) -> dict:
    """Stock sam2: JPEG folder -> init_state -> add_new_mask -> propagate_in_video (timed)."""
    import torch
    from PIL import Image

    from medseg.checkpoints import MODELS, load_state_dict
    from medseg.frames import volume_to_frames
    from medseg.io import read_image

    stack = volume_to_frames(read_image(query_path))
    folder = Path(args.tmp) / f"jpg{args.size}"
    folder.mkdir(exist_ok=True)
    for i, f in enumerate(stack.frames):
        Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").save(folder / f"{i:05d}.jpg",
                                                                        quality=95)
    from sam2.build_sam import build_sam2_video_predictor

    image_size = args.image_size or load_state_dict(args.checkpoint)[1].get("image_size", 1024)
    over = [f"++model.image_size={image_size}"] if image_size != 1024 else []
    pred = build_sam2_video_predictor(MODELS[args.model].config, str(args.checkpoint),
                                      device=str(dev), hydra_overrides_extra=over)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null()
    with torch.inference_mode(), ctx:
        t0 = time.perf_counter()
        state = pred.init_state(str(folder), offload_video_to_cpu=args.size > 200)
        t_init = time.perf_counter() - t0
        mask = np.zeros(stack.frames.shape[1:], bool)
        h, w = mask.shape
        mask[h // 3 : h // 2, w // 2 : 3 * w // 4] = True
        pred.add_new_mask(state, 0, 1, mask)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in pred.propagate_in_video(state):
            pass
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t_prop = time.perf_counter() - t0
    return {"raw_init_state_s": round(t_init, 3), "raw_propagate_s": round(t_prop, 3),
            "raw_frames_per_s": round(args.size / t_prop, 3), "image_size": image_size}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="50,100,200,400")
    ap.add_argument("--hw", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--bank-size", type=int, default=16)
    ap.add_argument("--modes", default="pair,volume")
    ap.add_argument("--matcher", default="sam2")
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/speed"))
    ap.add_argument("--tag", default=None, help="file name tag (default: cpu or the GPU name)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return

    import torch

    from medseg.checkpoints import build_random_checkpoint, sha256
    from medseg.engine import select_device
    from medseg.report import machine, versions

    dev = select_device(args.device)
    if args.image_size is None and args.checkpoint is None:
        args.image_size = 1024 if dev.type == "cuda" else 256
    tmp = Path(tempfile.mkdtemp(prefix="medseg-speed-"))
    ckpt = args.checkpoint or build_random_checkpoint(tmp / "random.pt", args.model,
                                                      args.image_size or 1024, 0, 5.0)
    modes = [m for m in args.modes.split(",") if m] + ([] if args.no_raw else ["raw"])
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for mode in modes:
            cmd = [sys.executable, __file__, "--worker", "--size", str(size), "--mode", mode,
                   "--tmp", str(tmp), "--hw", str(args.hw), "--device", args.device, "--model",
                   args.model, "--checkpoint", str(ckpt), "--batch-size", str(args.batch_size),
                   "--bank-size", str(args.bank_size), "--matcher", args.matcher]
            if args.image_size:
                cmd += ["--image-size", str(args.image_size)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode or not line:
                print(r.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"worker failed: size {size} mode {mode}")
            rec = json.loads(line[0][7:])
            rows.append(rec)
            print(f"{size:5d} {mode:7s} " + ", ".join(f"{k}={v}" for k, v in rec.items()
                                                      if k.endswith(("_s", "_mb"))), file=sys.stderr)
    raw = {r["slices"]: r["raw_frames_per_s"] for r in rows if r["mode"] == "raw"}
    for r in rows:
        if r["mode"] != "raw" and r["slices"] in raw:
            r["ratio_to_raw_sam2"] = round(r["slices_per_s"] / raw[r["slices"]], 3)
    tag = args.tag or ("cpu" if dev.type != "cuda" else torch.cuda.get_device_name(0)
                       .lower().replace(" ", "-"))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"versions": versions(), "machine": machine(), "device": str(dev),
            "checkpoint": "random weights (timing only)" if not args.checkpoint else str(ckpt),
            "checkpoint_sha256": sha256(ckpt) if args.checkpoint else None,
            "args": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "size",
                                                                           "mode", "tmp")},
            "rows": rows}
    (args.out / f"speed_{tag}.json").write_text(json.dumps(meta, indent=2))
    cols = ["slices", "mode", "load_s", "frames_s", "support_s", "match_s", "propagate_s",
            "postprocess_s", "write_s", "total_s", "slices_per_s", "raw_frames_per_s",
            "ratio_to_raw_sam2", "peak_rss_mb", "peak_gpu_mb"]
    with open(args.out / f"speed_{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"device {dev}, model {args.model}, image size {rows[0].get('image_size')}, "
          f"{args.hw}x{args.hw} slices")
    print(" ".join(f"{c:>13s}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r.get(c, '')):>13s}" for c in cols))


if __name__ == "__main__":
    main()
