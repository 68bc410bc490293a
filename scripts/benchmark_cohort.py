"""Cohort throughput: queries per minute with 1 and more workers, against one process per
query (the model loaded every time).

    python scripts/benchmark_cohort.py [--queries 8] [--slices 40] [--hw 256] [--workers 1,2]
        [--device auto] [--image-size 256] [--no-separate] [--tag NAME] [--out benchmarks/cohort]

A synthetic cohort (one support, QUERIES other CT-like volumes of SLICES slices of HW x HW,
written as NIfTI beforehand) is segmented by ``medseg segment -i FOLDER`` in a fresh
process per configuration, timed from process start to exit: with ``--workers 1`` (one
model, I/O overlapped) and with N Ray workers (one model each; one GPU each where there are
GPUs), and, for comparison, as one ``medseg segment`` process per query. Reported: seconds,
queries per minute, speed-up over one process per query and scaling efficiency
(throughput with N workers / (N x throughput with 1)). Random weights (timing only).
CSV + JSON with the machine.
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

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_speed import synthetic_ct  # noqa: E402


def medseg(args: argparse.Namespace, ckpt: Path, query: Path, out: Path, s: Path, lab: Path,
           extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "medseg.cli", "-q", "segment", "-s", str(s), "-l", str(lab),
           "-i", str(query), "-o", str(out), "--checkpoint", str(ckpt), "--device", args.device,
           "--labels", "1", "--bank-size", str(args.bank_size), "--no-download", "--overwrite",
           *extra]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--hw", type=int, default=256)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--bank-size", type=int, default=8)
    ap.add_argument("--no-separate", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/cohort"))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()

    import torch

    from medseg.engine import build_random_checkpoint, select_device
    from medseg.io import write_image
    from medseg.report import machine, versions

    dev = select_device(args.device)
    args.image_size = args.image_size or (1024 if dev.type == "cuda" else 256)
    tmp = Path(tempfile.mkdtemp(prefix="medseg-cohort-"))
    ckpt = build_random_checkpoint(tmp / "random.pt", "tiny", args.image_size, 0, 5.0)
    s_img, s_lab = synthetic_ct(args.slices, args.hw, 0)
    write_image(s_img, tmp / "s.nii.gz")
    write_image(s_lab, tmp / "l.nii.gz")
    qdir = tmp / "queries"
    qdir.mkdir()
    for i in range(args.queries):
        write_image(synthetic_ct(args.slices, args.hw, 100 + i)[0], qdir / f"q{i:03d}.nii.gz")
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        wall = medseg(args, ckpt, qdir, tmp / f"out_w{w}", tmp / "s.nii.gz", tmp / "l.nii.gz",
                      ["--workers", str(w)])
        rows.append({"how": f"cohort, {w} worker(s)", "workers": w, "seconds": round(wall, 2),
                     "queries_per_min": round(60 * args.queries / wall, 2)})
        print(rows[-1], file=sys.stderr)
    if not args.no_separate:
        t = sum(medseg(args, ckpt, q, tmp / "out_sep", tmp / "s.nii.gz", tmp / "l.nii.gz", [])
                for q in sorted(qdir.iterdir()))
        rows.append({"how": "one process per query", "workers": 1, "seconds": round(t, 2),
                     "queries_per_min": round(60 * args.queries / t, 2)})
    base = next(r for r in rows if r["workers"] == 1)["queries_per_min"]
    sep = rows[-1]["queries_per_min"] if not args.no_separate else None
    for r in rows:
        r["scaling_efficiency"] = round(r["queries_per_min"] / (r["workers"] * base), 3)
        r["speedup_vs_process_per_query"] = round(r["queries_per_min"] / sep, 3) if sep else None
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    tag = args.tag or (gpu.lower().replace(" ", "-") if gpu else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"versions": versions(), "machine": machine(), "device": str(dev), "gpu": gpu,
            "cpus": os.cpu_count(), "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows}
    (args.out / f"cohort_{tag}.json").write_text(json.dumps(meta, indent=2))
    with open(args.out / f"cohort_{tag}.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    print(f"{args.queries} queries of {args.slices} x {args.hw}^2, image size {args.image_size}, "
          f"{dev}{f' ({gpu})' if gpu else ''}")
    for r in rows:
        print(" | ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
