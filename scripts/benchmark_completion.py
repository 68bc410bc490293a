"""Completing a structure from one painted slice, weight-free: the candidates measured.

    python scripts/benchmark_completion.py [--held-out] [--out benchmarks/completion]

Every scan of the example cases (supports and queries with their references), and with
``--held-out`` the held-out scans, is given one painted slice per structure (its largest
axial slice of the reference); each candidate estimates the structure on every other
slice of the same scan. Whole-volume Dice, the predicted extent over the reference's, and
seconds, per scan and structure; means per candidate, first on the cases the parameters
were set on, then on the held-out ones.

Candidates:
  registration   medseg's method (medseg.support.complete): slice-to-slice demons
                 registration of the mask, refined by an intensity model of structure
                 against surroundings, stopped where the carried mask looks like the
                 surroundings
  random-walker  scikit-image's random_walker in 3D (beta 2000, cg_j, in-plane 2x
                 downsampled); seeds: the painted mask, the rest of its slice, and voxels far
                 outside the painted intensities
  region-growing slice by slice: the previous mask grown by one slice-spacing into pixels
                 within the painted intensities' 2nd-98th percentile (+/- 25 %), opened,
                 holes filled, components overlapping the previous mask; stopped when
                 smaller than 2 % of it
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_quality import _dice, label_masks, scans  # noqa: E402

from medseg import data  # noqa: E402
from medseg.api import machine, versions  # noqa: E402
from medseg.frames import label_to_frames, volume_to_frames  # noqa: E402
from medseg.io import read_image  # noqa: E402
from medseg.support.complete import complete_by_registration  # noqa: E402
from medseg.support.drawn import drawn_of  # noqa: E402


def disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def random_walker(raw: np.ndarray, spacing, f0: int, mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import random_walker as rw

    fg = raw[f0][mask]
    lo, hi = np.percentile(fg, [2, 98])
    w = max(hi - lo, 1e-3)
    small = raw[:, ::2, ::2]
    seeds = np.zeros(small.shape, np.int32)
    seeds[(small < lo - 1.3 * w) | (small > hi + 1.3 * w)] = 2
    ms = mask[::2, ::2]
    seeds[f0][~ndimage.binary_dilation(ms)] = 2
    seeds[f0][ndimage.binary_erosion(ms)] = 1
    norm = np.clip((small - lo) / w, -2, 3)
    p = rw(norm, seeds, beta=2000, mode="cg_j", tol=1e-3, return_full_prob=True,
           spacing=(spacing[0], spacing[1] * 2, spacing[2] * 2))[0]
    lab, _ = ndimage.label(p > 0.5)
    keep = np.unique(lab[seeds == 1])
    fgm = np.isin(lab, keep[keep > 0])
    up = np.repeat(np.repeat(fgm, 2, 1), 2, 2)[:, :raw.shape[1], :raw.shape[2]]
    up[f0] = mask
    return up


def region_growing(raw: np.ndarray, spacing, f0: int, mask: np.ndarray) -> np.ndarray:
    sm = np.stack([ndimage.gaussian_filter(f, 1.0) for f in raw])
    lo, hi = np.percentile(sm[f0][mask], [2, 98])
    w = hi - lo
    like = (sm >= lo - 0.25 * w) & (sm <= hi + 0.25 * w)
    r_grow = max(1, round(spacing[0] / min(spacing[1:])))
    r_open = max(1, round(2.0 / min(spacing[1:])))
    out = np.zeros(raw.shape, bool)
    out[f0] = mask
    for step in (1, -1):
        prev = mask
        for f in range(f0 + step, len(raw) if step > 0 else -1, step):
            cand = ndimage.binary_opening(like[f] & ndimage.binary_dilation(prev, disk(r_grow)),
                                          disk(r_open))
            lab, k = ndimage.label(cand)
            hit = ndimage.sum(prev, lab, range(1, k + 1)) if k else []
            cur = ndimage.binary_fill_holes(np.isin(lab, [i + 1 for i in range(k) if hit[i] > 0]))
            if cur.sum() < max(4, 0.02 * prev.sum()):
                break
            out[f] = prev = cur
    return out


def registration(raw: np.ndarray, spacing, f0: int, mask: np.ndarray) -> np.ndarray:
    one = np.zeros(raw.shape, bool)
    one[f0] = mask
    return complete_by_registration(raw, spacing, drawn_of(one, None, "axial")).masks


CANDIDATES = {"registration": registration, "random-walker": random_walker,
              "region-growing": region_growing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--held-out", action="store_true")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/completion"))
    args = ap.parse_args()
    root = data.fetch(progress=False)
    cases = list(data.CASES.values()) + (list(data.HELD_OUT.values()) if args.held_out else [])
    todo = scans(cases, list(data.SCAN_CASES.values()) if args.held_out else [], root)
    rows = []
    for sc in todo:
        img = read_image(sc.image)
        raw = label_to_frames(img.with_array(img.array.astype(np.float32)))
        spacing = volume_to_frames(img).spacing
        ref = label_masks(sc.label, img, sc.values)
        for v, nm in zip(sc.values, sc.names):
            rf = label_to_frames(img.with_array(ref[v].astype(np.uint8))).astype(bool)
            f0 = int(np.argmax(rf.sum(axis=(1, 2))))
            for cand in args.candidates.split(","):
                t0 = time.perf_counter()
                pred = CANDIDATES[cand](raw, spacing, f0, rf[f0])
                secs = time.perf_counter() - t0
                rs, ps = (np.nonzero(x.any(axis=(1, 2)))[0] for x in (rf, pred))
                rows.append({"scan": sc.name, "structure": nm, "held_out": bool(sc.held_out),
                             "candidate": cand, "dice": round(_dice(pred, rf), 4),
                             "extent_ratio": round((ps[-1] - ps[0] + 1) / (rs[-1] - rs[0] + 1), 3)
                             if len(ps) else 0.0, "seconds": round(secs, 2)})
                r = rows[-1]
                print(f"{sc.name:32s} {nm:16s} {cand:15s} Dice {r['dice']:.3f} "
                      f"extent {r['extent_ratio']:.2f} {secs:6.1f} s", flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "completion.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = {}
    for held in (False, True):
        for cand in args.candidates.split(","):
            sel = [r for r in rows if r["candidate"] == cand and r["held_out"] == held]
            if sel:
                summary[f"{cand} ({'held out' if held else 'tuning cases'})"] = {
                    "mean_dice": round(float(np.mean([r["dice"] for r in sel])), 4),
                    "structures": len(sel),
                    "extent_in_0.8_1.25": sum(0.8 <= r["extent_ratio"] <= 1.25 for r in sel),
                    "seconds": round(float(np.sum([r["seconds"] for r in sel])), 1)}
    (args.out / "completion.json").write_text(json.dumps(
        {"versions": versions(), "machine": machine(), "summary": summary, "rows": rows},
        indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    for k, v in summary.items():
        print(f"{k:40s} mean Dice {v['mean_dice']:.3f} over {v['structures']} structures, "
              f"extent within 0.8-1.25 on {v['extent_in_0.8_1.25']}, {v['seconds']} s")


if __name__ == "__main__":
    main()
