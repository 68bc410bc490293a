"""Speed and memory, like for like: medseg's whole job beside stock sam2 doing the same work.

    python scripts/benchmark_speed.py [--sizes 50,100,200,400] [--hw 512] [--device auto]
        [--image-size 256] [--modes pair,volume,scan] [--batch-size 8] [--bank-size 16]
        [--checkpoint PATH] [--compile] [--no-raw] [--tag NAME] [--out benchmarks/speed]

For every volume length (synthetic CT-like volumes of SIZE slices of HW x HW; inputs are
prepared beforehand and not timed) each timed run is a fresh process measured from its
start to its exit, and every row states ``frames_run``, the query frames SAM2 worked on
(both sides run every frame: medseg with ``--presence off``):

* ``pair`` / ``volume``: ``medseg segment`` of the query from a labelled support scan (load,
  frames, completion, slice correspondence, bank, matching, SAM2, clean-up, writing NIfTI +
  .seg.nrrd + report; imports and model load included);
* ``raw sam2 (its part)``: stock sam2 on the query's frames written as JPEGs beforehand:
  import, build, ``init_state``, ``add_new_mask`` on one frame, ``propagate_in_video``;
  nothing read, nothing written -- the strictest baseline;
* ``raw sam2 (end to end)``: what a user would write without medseg: read the NIfTI files
  with SimpleITK, window, write the support's labelled slice and the query's frames as
  JPEGs, ``init_state``, ``add_new_mask`` on the support slice, ``propagate_in_video``,
  threshold, write the labelmap NIfTI on the query's grid;
* ``scan`` (same scan, one painted slice): ``medseg segment`` with no query on the scan
  with one painted slice (the painted structure completed through the scan with SAM2's
  interactive video mode), beside ``raw sam2 scan (end to end)``: the scan's frames,
  ``add_new_mask`` on the painted one, propagated forward and backward, written as NIfTI.

Each row is the median of ``--repeats`` runs (all rows' runs interleaved); every run's
total is kept. Reported: seconds, CPU seconds (user + system: the work done, whatever the
number of cores) and slices/s, medseg's speed-up over each raw row of the same job,
medseg's stage times (from its report), raw sam2's propagation alone, peak RAM (max RSS)
and peak GPU memory. Timing does not depend on the weights: without --checkpoint a
random-weight tiny model built from the real sam2 config is used. Results: CSV + JSON with
the machine.
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

_BUILD = r"""
import json, sys, time
t_start = time.perf_counter()
import numpy as np, torch
from sam2.build_sam import build_sam2_video_predictor
cfg, ckpt, size, device = sys.argv[1:5]
over = [f"++model.image_size={size}"] if int(size) != 1024 else []
t0 = time.perf_counter()
pred = build_sam2_video_predictor(cfg, ckpt, device=device, hydra_overrides_extra=over)
t_build = time.perf_counter() - t0
ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.no_grad()
"""

RAW = _BUILD + r"""
folder, mask = sys.argv[5], np.load(sys.argv[6])
with torch.inference_mode(), ctx:
    t0 = time.perf_counter()
    state = pred.init_state(folder, offload_video_to_cpu=True)
    t_init = time.perf_counter() - t0
    pred.add_new_mask(state, 0, 1, mask)
    t0 = time.perf_counter()
    n = 0
    for _ in pred.propagate_in_video(state):
        n += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_prop = time.perf_counter() - t0
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print("RESULT " + json.dumps({"build_s": t_build, "init_state_s": t_init, "propagate_s": t_prop,
                              "gpu_peak_mb": gpu, "frames_run": n - 1}))
"""

PEER = _BUILD + r"""
import os, tempfile
import SimpleITK as sitk
from PIL import Image
support, label, query, out, lo, hi, painted = sys.argv[5:12]
lo, hi, painted = float(lo), float(hi), int(painted)
def frames(img):  # axial frames, windowed to uint8 (the volumes are axis-aligned)
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
t0 = time.perf_counter()
q = sitk.ReadImage(query)
qf = frames(q)
if support == "-":  # the same scan: its own frames, the painted one prompted
    video, prompt = qf, painted
    mask = sitk.GetArrayFromImage(sitk.ReadImage(label))[painted] > 0
else:
    lab = sitk.GetArrayFromImage(sitk.ReadImage(label))
    sf = frames(sitk.ReadImage(support))
    k = int(np.argmax((lab > 0).sum(axis=(1, 2))))  # the support's largest labelled slice
    video, prompt, mask = np.concatenate([sf[k:k + 1], qf]), 0, lab[k] > 0
folder = tempfile.mkdtemp()
for i, f in enumerate(video):
    Image.fromarray(f).convert("RGB").save(os.path.join(folder, f"{i:05d}.jpg"), quality=95)
t_read = time.perf_counter() - t0
with torch.inference_mode(), ctx:
    state = pred.init_state(folder, offload_video_to_cpu=True)
    pred.add_new_mask(state, prompt, 1, mask)
    result = np.zeros(video.shape, np.uint8)
    t0 = time.perf_counter()
    n = 0
    for reverse in (False, True):
        for f, _, logits in pred.propagate_in_video(state, start_frame_idx=prompt,
                                                    reverse=reverse):
            result[f] = (logits[0, 0] > 0).cpu().numpy()
            n += f != prompt
    t_prop = time.perf_counter() - t0
if support != "-":
    result = result[1:]
res = sitk.GetImageFromArray(result)
res.CopyInformation(q)
sitk.WriteImage(res, out, True)
gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
print("RESULT " + json.dumps({"build_s": t_build, "read_frames_s": t_read, "propagate_s": t_prop,
                              "gpu_peak_mb": gpu, "frames_run": n if support == "-" else n}))
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


def timed(cmd: list[str], env: dict) -> tuple[float, float, float, str, str]:
    """(wall seconds, CPU seconds (user + system), peak RSS MB, stdout, stderr) of one
    fresh process."""
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
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, stdout, stderr


def prepare(tmp: Path, size: int, hw: int) -> dict[str, Path]:
    """The inputs of one size: NIfTI support/label/query, the query with one painted slice
    (same-scan runs), and for raw sam2's part the support's labelled frame followed by the
    query's frames as JPEGs, with its mask."""
    from PIL import Image

    from medseg.frames import label_to_frames, volume_to_frames
    from medseg.io import write_image

    paths = {k: tmp / f"{k}{size}.nii.gz" for k in ("s", "l", "q", "painted")}
    paths.update(jpg=tmp / f"jpg{size}", mask=tmp / f"mask{size}.npy")
    # the support covers the query's length (40 slices over the same distance), so the
    # structure spans the query as it would in a real scan
    s_img, s_lab = synthetic_ct(40, hw, 2, dz=2.0 * size / 40)
    write_image(s_img, paths["s"])
    write_image(s_lab, paths["l"])
    q_img, q_lab = synthetic_ct(size, hw, 1)
    write_image(q_img, paths["q"])
    painted = np.zeros_like(q_lab.array)
    painted[size // 2] = q_lab.array[size // 2] == 1
    write_image(q_lab.with_array(painted), paths["painted"])
    lab = label_to_frames(s_lab) == 1
    k = int(np.argmax(lab.sum(axis=(1, 2))))
    np.save(paths["mask"], lab[k])
    paths["jpg"].mkdir(exist_ok=True)
    frames = [volume_to_frames(s_img, window=CT_WINDOW).frames[k],
              *volume_to_frames(q_img, window=CT_WINDOW).frames]
    for i, f in enumerate(frames):
        Image.fromarray((f * 255).astype(np.uint8)).convert("RGB").save(
            paths["jpg"] / f"{i:05d}.jpg", quality=95)
    return paths


CT_WINDOW = (-125.0, 275.0)  # abdomen, as medseg chooses for these volumes (in its report)


def run_medseg(args, paths: dict, size: int, mode: str, ckpt: Path, tmp: Path,
               env: dict | None = None, label: str = "") -> dict:
    """``medseg segment`` in a fresh process (``scan``: the painted scan itself); ``env``
    added to the environment, ``label`` added to the row's name."""
    out = tmp / f"out_{mode}_{size}"
    inputs = ["-s", str(paths["q"]), "-l", str(paths["painted"]), "--mode", "volume"] \
        if mode == "scan" else ["-s", str(paths["s"]), "-l", str(paths["l"]), "-i",
                                str(paths["q"]), "--mode", mode, "--presence", "off"]
    cmd = [sys.executable, "-m", "medseg.cli", "-q", "segment", *inputs, "-o", str(out),
           "--overwrite", "--checkpoint", str(ckpt), "--device", args.device, "--labels", "1",
           "--batch-size", str(args.batch_size), "--bank-size", str(args.bank_size),
           "--no-download"]
    cmd += ["--image-size", str(args.image_size)] if args.image_size else []
    cmd += ["--compile"] if args.compile else []
    wall, cpu, rss, _, _ = timed(cmd, {**os.environ, **(env or {})})
    rep = json.loads(next(out.glob("*_report.json")).read_text())
    if mode == "scan":
        drawn = sum(any(f.get("drawn") or []) for f in rep["per_frame"])
        frames_run = size - drawn  # every frame but the painted one
    else:
        frames_run = sum(g["propagation"].get("frames_run", 0) for g in rep["support_groups"])
    rec = {"slices": size, "mode": f"medseg {mode}{label}", "frames_run": frames_run,
           "total_s": round(wall, 3), "cpu_s": round(cpu, 1),
           "slices_per_s": round(size / wall, 3), "peak_rss_mb": round(rss, 1)}
    rec.update({f"{k}_s": v for k, v in rep["timings_s"].items()})
    eng = rep["engine"]
    rec.update(image_size=eng["image_size"], precision=eng["precision"],
               batch_size=eng["batch_size"], peak_gpu_mb=eng.get("gpu_peak_mb"),
               compile_warmup_s=(eng.get("compiled") or {}).get("warmup_s"))
    return rec


def _raw_cmd(args, ckpt: Path, image_size: int, script: str, *rest: str) -> list[str]:
    from medseg.checkpoints import MODELS
    from medseg.engine import select_device

    dev = str(select_device(args.device))
    return [sys.executable, "-c", script, MODELS[args.model].config, str(ckpt), str(image_size),
            dev, *rest]


def _result(out: str) -> dict:
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])


def run_raw(args, paths: dict, size: int, ckpt: Path, image_size: int) -> dict:
    """Stock sam2's part: the prepared frames in, nothing written."""
    cmd = _raw_cmd(args, ckpt, image_size, RAW, str(paths["jpg"]), str(paths["mask"]))
    wall, cpu, rss, out, _ = timed(cmd, {**os.environ, "TQDM_DISABLE": "1"})
    r = _result(out)
    return {"slices": size, "mode": "raw sam2 (its part)", "frames_run": r["frames_run"],
            "total_s": round(wall, 3), "cpu_s": round(cpu, 1),
            "slices_per_s": round(size / wall, 3),
            "peak_rss_mb": round(rss, 1), "raw_build_s": round(r["build_s"], 3),
            "raw_init_state_s": round(r["init_state_s"], 3),
            "raw_propagate_s": round(r["propagate_s"], 3),
            "raw_propagate_frames_per_s": round(r["frames_run"] / r["propagate_s"], 3),
            "peak_gpu_mb": None if r["gpu_peak_mb"] is None else round(r["gpu_peak_mb"], 1),
            "image_size": image_size}


def run_peer(args, paths: dict, size: int, ckpt: Path, image_size: int, tmp: Path,
             scan: bool) -> dict:
    """What a user would write with stock sam2 alone, from the NIfTI files to a NIfTI."""
    out = tmp / f"peer_{'scan' if scan else 'query'}_{size}.nii.gz"
    rest = ["-", str(paths["painted"])] if scan else [str(paths["s"]), str(paths["l"])]
    cmd = _raw_cmd(args, ckpt, image_size, PEER, *rest, str(paths["q"]), str(out),
                   *map(str, CT_WINDOW), str(size // 2))
    wall, cpu, rss, stdout, _ = timed(cmd, {**os.environ, "TQDM_DISABLE": "1"})
    r = _result(stdout)
    return {"slices": size, "mode": f"raw sam2 {'scan ' if scan else ''}(end to end)",
            "frames_run": r["frames_run"], "total_s": round(wall, 3), "cpu_s": round(cpu, 1),
            "slices_per_s": round(size / wall, 3), "peak_rss_mb": round(rss, 1),
            "raw_build_s": round(r["build_s"], 3), "raw_read_frames_s": round(r["read_frames_s"], 3),
            "raw_propagate_s": round(r["propagate_s"], 3),
            "raw_propagate_frames_per_s": round(r["frames_run"] / r["propagate_s"], 3),
            "peak_gpu_mb": None if r["gpu_peak_mb"] is None else round(r["gpu_peak_mb"], 1),
            "image_size": image_size}


COLS = ["slices", "mode", "frames_run", "total_s", "cpu_s", "slices_per_s", "speedup_vs_raw_part",
        "speedup_vs_raw_end_to_end", "load_s", "frames_s", "complete_s", "locate_s",
        "support_s", "match_s", "propagate_s", "postprocess_s", "write_s", "model_load_s",
        "raw_build_s", "raw_init_state_s", "raw_read_frames_s", "raw_propagate_s",
        "raw_propagate_frames_per_s", "peak_rss_mb", "peak_gpu_mb", "compile_warmup_s",
        "runs_total_s", "runs_cpu_s"]


def one_size(args, size: int, ckpt: Path, tmp: Path) -> list[dict]:
    """Every row of one volume length, each the median of ``--repeats`` runs (the runs of
    all rows interleaved, so that a slow spell of the machine hits every row alike);
    speed-ups against the raw rows of the same job."""
    from medseg._allocator import ENV

    paths = prepare(tmp, size, args.hw)
    modes = [m for m in args.modes.split(",") if m]
    size_px = args.image_size or 1024
    jobs = {f"medseg {m}": (lambda m=m: run_medseg(args, paths, size, m, ckpt, tmp))
            for m in modes}
    if args.allocator_ab:  # the same runs with glibc's own allocator thresholds
        jobs.update({f"medseg {m} (glibc defaults)": (
            lambda m=m: run_medseg(args, paths, size, m, ckpt, tmp, {ENV: "default"},
                                   " (glibc defaults)")) for m in modes})
    if not args.no_raw:
        if any(m != "scan" for m in modes):
            jobs["raw sam2 (its part)"] = lambda: run_raw(args, paths, size, ckpt, size_px)
            jobs["raw sam2 (end to end)"] = lambda: run_peer(args, paths, size, ckpt, size_px,
                                                             tmp, scan=False)
        if "scan" in modes:
            jobs["raw sam2 scan (end to end)"] = lambda: run_peer(args, paths, size, ckpt,
                                                                  size_px, tmp, scan=True)
    runs: dict[str, list[dict]] = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            runs[name].append(job())
    rows = {k: _median(v) for k, v in runs.items()}
    for name, r in rows.items():
        peers = ["raw sam2 scan (end to end)"] if name == "medseg scan" else \
            ["raw sam2 (its part)", "raw sam2 (end to end)"] if name.startswith("medseg") else []
        for peer, col in zip(peers, ("speedup_vs_raw_part", "speedup_vs_raw_end_to_end")
                             if len(peers) == 2 else ("speedup_vs_raw_end_to_end",)):
            if peer in rows:
                r[col] = round(rows[peer]["total_s"] / r["total_s"], 3)
    for r in rows.values():
        print(f"{size:5d} {r['mode']:26s} " + ", ".join(
            f"{k}={r[k]}" for k in COLS[2:] if r.get(k) is not None), file=sys.stderr)
    return list(rows.values())


def _median(runs: list[dict]) -> dict:
    """The run with the median total time, with every run's total kept."""
    ordered = sorted(runs, key=lambda r: r["total_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["runs_total_s"] = [r["total_s"] for r in runs]
    row["runs_cpu_s"] = [r["cpu_s"] for r in runs]
    return row


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
    ap.add_argument("--modes", default="pair,volume,scan")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row (the median is kept)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-raw", action="store_true")
    ap.add_argument("--allocator-ab", action="store_true",
                    help="add each medseg row with glibc's default allocator thresholds "
                         "(MEDSEG_MALLOC=default, see medseg/_allocator.py)")
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
    for size in [int(v) for v in args.sizes.split(",")]:
        rows += one_size(args, size, ckpt, tmp)
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
    show = ["slices", "mode", "frames_run", "total_s", "cpu_s", "slices_per_s", "speedup_vs_raw_part",
            "speedup_vs_raw_end_to_end", "propagate_s", "raw_propagate_s", "peak_rss_mb",
            "peak_gpu_mb"]
    print(" | ".join(show))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in show))


if __name__ == "__main__":
    main()
