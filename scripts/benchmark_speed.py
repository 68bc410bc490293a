"""Speed and memory: medseg's whole job against stock sam2 doing its part of it.

    python scripts/benchmark_speed.py [--sizes 50,100,200,400,1000] [--hw 512] [--device auto]
        [--image-size 256] [--modes pair,volume] [--batch-size 8] [--checkpoint PATH]
        [--compile] [--no-raw] [--tag NAME] [--out benchmarks/speed]

For every volume length (synthetic CT-like volumes of SIZE slices of HW x HW; inputs are
prepared beforehand and not timed), each timed run is a fresh process measured from its
start to its exit:

* medseg: ``medseg segment`` on the NIfTI files (load, frames, support bank, matching with
  SAM2 features, SAM2, post-processing, writing NIfTI + .seg.nrrd + report, model load and
  imports included);
* raw sam2: stock sam2 on the same frames (as JPEGs written beforehand): import, build the
  predictor from the checkpoint, ``init_state``, ``add_new_mask`` on one frame,
  ``propagate_in_video``; nothing is written.

Reported: seconds and slices/s of each, medseg's speed-up over raw sam2, medseg's stage
times (from its report), raw sam2's propagation alone, peak RAM (max RSS) and peak GPU
memory. Timing does not depend on the weights: without --checkpoint a random-weight tiny
model built from the real sam2 config is used. Results: CSV + JSON with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RAW = r"""
import json, sys, time
import numpy as np, torch
from sam2.build_sam import build_sam2_video_predictor
cfg, ckpt, size, folder, device = sys.argv[1:6]
over = [f"++model.image_size={size}"] if int(size) != 1024 else []
t0 = time.perf_counter()
pred = build_sam2_video_predictor(cfg, ckpt, device=device, hydra_overrides_extra=over)
t_build = time.perf_counter() - t0
ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.no_grad()
with torch.inference_mode(), ctx:
    t0 = time.perf_counter()
    state = pred.init_state(folder, offload_video_to_cpu=True)
    t_init = time.perf_counter() - t0
    h, w = state["video_height"], state["video_width"]
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 2, w // 2 : 3 * w // 4] = True
    pred.add_new_mask(state, 0, 1, mask)
    t0 = time.perf_counter()
    for _ in pred.propagate_in_video(state):
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_prop = time.perf_counter() - t0
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print("RESULT " + json.dumps({"build_s": t_build, "init_state_s": t_init, "propagate_s": t_prop,
                              "gpu_peak_mb": gpu}))
"""


def synthetic_ct(n: int, hw: int, seed: int, dz: float = 2.0):
    """A CT-like volume (HU) with a body, two organs and noise, ``n`` slices ``dz`` mm apart,
    the organs spanning the same fraction of any length; returns (image, label)."""
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
    geo = {"spacing": (0.8, 0.8, dz)}
    return Volume(img, **geo), Volume(lab, **geo)


def timed(cmd: list[str], env: dict) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MB, stdout, stderr) of one fresh process."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own resource usage
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode:
        print(stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd[:4])} ...")
    return wall, usage.ru_maxrss / 1024.0, stdout, stderr


def prepare(tmp: Path, size: int, hw: int) -> dict[str, Path]:
    """The inputs of one size: NIfTI support/label/query and the query as a JPEG folder."""
    from PIL import Image

    from medseg.frames import volume_to_frames
    from medseg.io import write_image

    paths = {"s": tmp / f"s{size}.nii.gz", "l": tmp / f"l{size}.nii.gz",
             "q": tmp / f"q{size}.nii.gz", "jpg": tmp / f"jpg{size}"}
    # the support covers the query's length (40 slices over the same distance), so the
    # structure spans the query as it would in a real scan and every frame is worked on
    s_img, s_lab = synthetic_ct(40, hw, 2, dz=2.0 * size / 40)
    write_image(s_img, paths["s"])
    write_image(s_lab, paths["l"])
    q_img, _ = synthetic_ct(size, hw, 1)
    write_image(q_img, paths["q"])
    paths["jpg"].mkdir(exist_ok=True)
    for i, f in enumerate(volume_to_frames(q_img).frames):  # the frames medseg sees
        Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").save(
            paths["jpg"] / f"{i:05d}.jpg", quality=95)
    return paths


def run_medseg(args, paths: dict, size: int, mode: str, ckpt: Path, tmp: Path) -> dict:
    out = tmp / f"out_{mode}_{size}"
    cmd = [sys.executable, "-m", "medseg.cli", "-q", "segment", "-s", str(paths["s"]), "-l",
           str(paths["l"]), "-i", str(paths["q"]), "-o", str(out), "--overwrite", "--checkpoint",
           str(ckpt), "--device", args.device, "--mode", mode, "--labels", "1", "--batch-size",
           str(args.batch_size), "--bank-size", str(args.bank_size), "--no-download"]
    cmd += ["--image-size", str(args.image_size)] if args.image_size else []
    cmd += ["--compile"] if args.compile else []
    wall, rss, _, _ = timed(cmd, os.environ.copy())
    rep = json.loads((out / f"q{size}_report.json").read_text())
    rec = {"slices": size, "mode": mode, "total_s": round(wall, 3),
           "slices_per_s": round(size / wall, 3), "peak_rss_mb": round(rss, 1)}
    rec.update({f"{k}_s": v for k, v in rep["timings_s"].items()})
    eng = rep["engine"]
    rec.update(image_size=eng["image_size"], precision=eng["precision"],
               batch_size=eng["batch_size"], peak_gpu_mb=eng.get("gpu_peak_mb"),
               compile_warmup_s=(eng.get("compiled") or {}).get("warmup_s"))
    return rec


def run_raw(args, paths: dict, size: int, ckpt: Path, image_size: int) -> dict:
    from medseg.checkpoints import MODELS
    from medseg.engine import select_device

    dev = str(select_device(args.device))
    cmd = [sys.executable, "-c", RAW, MODELS[args.model].config, str(ckpt), str(image_size),
           str(paths["jpg"]), dev]
    wall, rss, out, _ = timed(cmd, {**os.environ, "TQDM_DISABLE": "1"})
    r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    return {"slices": size, "mode": "raw sam2", "total_s": round(wall, 3),
            "slices_per_s": round(size / wall, 3), "peak_rss_mb": round(rss, 1),
            "raw_build_s": round(r["build_s"], 3), "raw_init_state_s": round(r["init_state_s"], 3),
            "raw_propagate_s": round(r["propagate_s"], 3),
            "raw_propagate_frames_per_s": round(size / r["propagate_s"], 3),
            "peak_gpu_mb": None if r["gpu_peak_mb"] is None else round(r["gpu_peak_mb"], 1),
            "image_size": image_size}


COLS = ["slices", "mode", "total_s", "slices_per_s", "speedup_vs_raw", "load_s", "frames_s",
        "support_s", "match_s", "propagate_s", "postprocess_s", "write_s", "model_load_s",
        "raw_build_s", "raw_init_state_s", "raw_propagate_s", "raw_propagate_frames_per_s",
        "peak_rss_mb", "peak_gpu_mb", "compile_warmup_s"]


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
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/speed"))
    ap.add_argument("--tag", default=None, help="file name tag (default: cpu-<size> or the GPU)")
    args = ap.parse_args()

    import torch

    from medseg.checkpoints import sha256
    from medseg.engine import build_random_checkpoint, select_device
    from medseg.report import machine, versions

    dev = select_device(args.device)
    if args.image_size is None and args.checkpoint is None:
        args.image_size = 1024 if dev.type == "cuda" else 256
    tmp = Path(tempfile.mkdtemp(prefix="medseg-speed-"))
    ckpt = Path(args.checkpoint or build_random_checkpoint(
        tmp / "random.pt", args.model, args.image_size or 1024, 0, 5.0))
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        paths = prepare(tmp, size, args.hw)
        group = [run_medseg(args, paths, size, m, ckpt, tmp) for m in args.modes.split(",") if m]
        if not args.no_raw:
            raw = run_raw(args, paths, size, ckpt, group[0]["image_size"] if group else
                          args.image_size)
            for r in group:
                r["speedup_vs_raw"] = round(raw["total_s"] / r["total_s"], 3)
            group.append(raw)
        for r in group:
            print(f"{size:5d} {r['mode']:9s} " + ", ".join(
                f"{k}={r[k]}" for k in COLS[2:] if r.get(k) is not None), file=sys.stderr)
        rows += group
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    tag = args.tag or (gpu.lower().replace(" ", "-") if gpu else f"cpu-{args.image_size}")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"versions": versions(), "machine": machine(), "device": str(dev), "gpu": gpu,
            "checkpoint": "random weights (timing only)" if not args.checkpoint else str(ckpt),
            "checkpoint_sha256": sha256(ckpt) if args.checkpoint else None,
            "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (args.out / f"speed_{tag}.json").write_text(json.dumps(meta, indent=2))
    with open(args.out / f"speed_{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"device {dev}{f' ({gpu})' if gpu else ''}, model {args.model}, image size "
          f"{rows[0].get('image_size')}, {args.hw}x{args.hw} slices, batch {args.batch_size}")
    show = ["slices", "mode", "total_s", "slices_per_s", "speedup_vs_raw", "propagate_s",
            "raw_propagate_frames_per_s", "peak_rss_mb", "peak_gpu_mb"]
    print(" | ".join(show))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in show))


if __name__ == "__main__":
    main()
