"""Quality benchmark on the public example cases: medseg against training-free baselines.

    python scripts/benchmark_quality.py [--checkpoint PATH | --random-weights]
        [--cases ct-liver-spleen,...] [--bank-sizes 16] [--matchers ssim,sam2]
        [--modes pair,volume] [--bspline] [--out benchmarks/quality]

Methods, side by side:
  copy          the support label resampled onto the query grid in world coordinates
  registration  SimpleITK affine (+ optional B-spline) registration of the support image to
                the query (Mattes mutual information), label warped with nearest neighbour
  transfer      for each query slice, the mask of its matched bank member (no SAM2), built
                up one component at a time so each one's effect shows:
                  transfer-centred  1-shot slice, centre on centre, a mask on every slice
                  +placement        the slice placed by body box / content search / world
                  +presence         no mask outside the structure's expected extent
                  (= medseg transfer) the default: + the richest support the correspondence
                                    can use (dense in a shared frame of reference)
  medseg        SAM2 in each mode; with --random-weights the rows say "RANDOM WEIGHTS" and are
                no measure of quality (they exercise the pipeline only)

Scores per case and label, whole query volume first: Dice, HD95 (mm), surface Dice at
2 mm; then Dice on the slices that hold the structure in the reference (the few-shot
papers' protocol) and the extent error (mm between the predicted and the reference first
and last slice along the body axis; the predicted extent as a fraction of the reference's).
Writes CSV and JSON (versions, machine, checkpoint hash) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from medseg import data
from medseg.api import SegmentConfig, Segmenter, machine, versions
from medseg.frames import label_to_frames
from medseg.io import Volume, read_image
from medseg.metrics import implementation, surface_metrics

STEPS = [  # the weight-free path, one component at a time
    ("transfer-centred", {"shots": 1, "placement": "centre", "presence": "off"}),
    ("+placement", {"shots": 1, "presence": "off"}),
    ("+presence", {"shots": 1}),
    ("transfer", {}),
]


def support_labelmap(path: str, image: Volume, values) -> Volume:
    """Any support label form as one integer labelmap on the support image's grid."""
    from medseg.labels import read_support_label

    lab = read_support_label(path, image)
    arr = np.zeros(image.shape, np.int32)
    for v in reversed(list(values)):
        arr[lab.mask(v)] = v
    return image.with_array(arr)


def copy_baseline(support_label: Volume, query: Volume) -> np.ndarray:
    import SimpleITK as sitk

    res = sitk.Resample(support_label.to_sitk(), query.to_sitk(), sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res)


def registration_baseline(support: Volume, support_label: Volume, query: Volume,
                          bspline: bool = False, seed: int = 0) -> np.ndarray:
    """Affine (+ B-spline) registration, Mattes MI, multi-resolution; NN label warp."""
    import SimpleITK as sitk

    fixed = sitk.Cast(query.to_sitk(), sitk.sitkFloat32)
    moving = sitk.Cast(support.to_sitk(), sitk.sitkFloat32)
    init = _best_start(fixed, moving, seed)

    def method(transform, iters):
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(0.1, seed)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, iters, relaxationFactor=0.7)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel([4, 2, 1])
        r.SetSmoothingSigmasPerLevel([2, 1, 0])
        r.SetInitialTransform(transform, inPlace=False)
        return r

    best_val, affine = np.inf, None
    for start in init:  # the best few starts, each refined to a full affine
        r = method(start, 200)
        try:
            out = r.Execute(fixed, moving)
        except RuntimeError:  # the refinement left the overlap ("samples map outside")
            continue
        if r.GetMetricValue() < best_val:
            best_val, affine = r.GetMetricValue(), out
    if affine is None:  # no start could be refined: the registration found nothing
        return np.zeros(query.shape, np.uint8)
    transform = affine
    if bspline:
        mesh = [4] * 3
        bs = sitk.BSplineTransformInitializer(fixed, mesh)
        r = method(bs, 50)
        r.SetOptimizerAsLBFGSB(1e-5, 50)
        r.SetMovingInitialTransform(affine)
        bs_out = r.Execute(fixed, moving)
        transform = sitk.CompositeTransform([affine, bs_out])
    res = sitk.Resample(support_label.to_sitk(), query.to_sitk(), transform,
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(res)


def _best_start(fixed, moving, seed: int, starts: int = 17, keep: int = 3):
    """Multi-start initialisation: the scans share no frame and the query may cover only a
    slab of the support, so the fixed centre is tried against points spread along the
    moving scan's longest axis (a short translation search each); the ``keep`` starts with
    the best mutual information are returned."""
    import SimpleITK as sitk

    def centre(img):
        return np.asarray(img.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in img.GetSize()]))

    size = np.asarray(moving.GetSize())
    ax = int(np.argmax(size * np.asarray(moving.GetSpacing())))
    found: list[tuple[float, object]] = []
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(32)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(0.2, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetOptimizerAsRegularStepGradientDescent(4.0, 0.5, 40)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4])
    r.SetSmoothingSigmasPerLevel([2])
    for t in np.linspace(0.02, 0.98, starts):
        idx = (size - 1) / 2.0
        idx[ax] = t * (size[ax] - 1)
        target = np.asarray(moving.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
        tr = sitk.AffineTransform(3)
        tr.SetCenter(centre(fixed).tolist())
        tr.SetTranslation((target - centre(fixed)).tolist())
        r.SetOptimizerWeights([0.0] * 9 + [1.0] * 3)  # translation only
        r.SetInitialTransform(tr, inPlace=True)
        try:
            r.Execute(fixed, moving)  # a short translation-only search from this start
            val = r.GetMetricValue()
        except RuntimeError:  # too little overlap
            continue
        found.append((val, sitk.AffineTransform(tr)))
    found.sort(key=lambda x: x[0])
    return [t for _, t in found[:keep]] or [sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY)]


def score(pred: np.ndarray, ref: np.ndarray, spacing_zyx, ref_vol: Volume) -> dict:
    """Whole-volume scores, structure-slices Dice and the extent error (axial frames)."""
    out = {}
    d = _dice(pred, ref)
    hd, _, nsd = surface_metrics(pred, ref, spacing_zyx, 2.0)
    out.update(dice=d, hd95_mm=hd, nsd2mm=nsd)
    pf = label_to_frames(ref_vol.with_array(pred.astype(np.uint8)))
    rf = label_to_frames(ref_vol.with_array(ref.astype(np.uint8)))
    keep = rf.reshape(rf.shape[0], -1).any(axis=1)
    has = pf.reshape(pf.shape[0], -1).any(axis=1)
    out["slices_with_structure"] = int(keep.sum())
    out["dice_slices"] = _dice(pf[keep], rf[keep]) if keep.any() else math.nan
    dz = float(volume_frames_spacing(ref_vol))
    if keep.any() and has.any():
        r, p = np.nonzero(keep)[0], np.nonzero(has)[0]
        out["extent_error_mm"] = dz * max(abs(int(p[0]) - int(r[0])), abs(int(p[-1]) - int(r[-1])))
        out["extent_ratio"] = (p[-1] - p[0] + 1) / (r[-1] - r[0] + 1)
    else:
        out["extent_error_mm"], out["extent_ratio"] = math.nan, math.nan
    return out


def volume_frames_spacing(vol: Volume) -> float:
    """Spacing between axial frames (the canonical S axis)."""
    from medseg.io import canonical_orientation, canonical_spacing_zyx

    return canonical_spacing_zyx(vol, canonical_orientation(vol.direction))[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    t = a.sum() + b.sum()
    return math.nan if t == 0 else 2.0 * float((a & b).sum()) / float(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="real SAM2.1 checkpoint (enables the medseg rows)")
    g.add_argument("--random-weights", action="store_true",
                   help="run the medseg rows with a random-weight tiny model (pipeline check only)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--cases", default=",".join(data.CASES))
    ap.add_argument("--bank-sizes", default="16", help="comma list, e.g. 0,8,32,64")
    ap.add_argument("--matchers", default="ssim,ncc", help="matchers for the transfer rows "
                    "(sam2 needs a model)")
    ap.add_argument("--modes", default="pair,volume")
    ap.add_argument("--bspline", action="store_true", help="add B-spline after the affine")
    ap.add_argument("--steps", action="store_true", help="add a transfer row per component")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/quality"))
    args = ap.parse_args()

    root = data.fetch(progress=False)
    bank_sizes = [int(b) for b in args.bank_sizes.split(",")]
    matchers = [m for m in args.matchers.split(",") if m]
    modes = [m for m in args.modes.split(",") if m]
    seg = None
    ckpt_note = None
    if args.checkpoint or args.random_weights:
        ckpt = args.checkpoint
        if args.random_weights:
            import tempfile

            from medseg.engine import build_random_checkpoint

            ckpt = build_random_checkpoint(Path(tempfile.mkdtemp()) / "random_tiny_256.pt", "tiny",
                                           256, args.seed)
            ckpt_note = "RANDOM WEIGHTS"
        seg = Segmenter(model=args.model, checkpoint=ckpt, device=args.device, image_size=args.image_size)
    else:
        seg = Segmenter(model=args.model, device=args.device, allow_download=False)
    rows: list[dict] = []
    for name in args.cases.split(","):
        case = data.CASES[name]
        p = data.case_paths(case, root)
        s, q, qr = (read_image(p[k], name=k) for k in ("support", "query", "query_ref"))
        sl_path = p["support_label"]
        sl = support_labelmap(sl_path, s, case.labels)
        t0 = time.perf_counter()
        copy = copy_baseline(sl, q)
        t_copy = time.perf_counter() - t0
        t0 = time.perf_counter()
        reg = registration_baseline(s, sl, q, args.bspline, args.seed)
        t_reg = time.perf_counter() - t0
        preds: list[tuple[str, str, dict, float, dict]] = []
        for lv, nm in zip(case.labels, case.names):
            preds.append(("copy", "", {nm: copy == lv}, t_copy, {}))
            preds.append(("registration" + ("+bspline" if args.bspline else ""), "",
                          {nm: reg == lv}, t_reg, {}))
        for bs in bank_sizes:
            for matcher in matchers:
                if matcher == "sam2" and not (args.checkpoint or args.random_weights):
                    continue
                for label, extra in STEPS if args.steps else STEPS[-1:]:
                    cfg = SegmentConfig.from_options(labels=list(case.labels), names=list(case.names),
                                        method="transfer", matcher=matcher, window=case.window,
                                        bank_size=bs, seed=args.seed, **extra)
                    t0 = time.perf_counter()
                    r = seg.segment(s, sl_path, q, cfg)
                    tt = time.perf_counter() - t0
                    note = ckpt_note if matcher == "sam2" and ckpt_note else ""
                    preds.append((f"{label}[{matcher}]", note,
                                  {nm: r.labels.array == i + 1 for i, nm in enumerate(case.names)},
                                  tt, {"bank_size": bs}))
            if args.checkpoint or args.random_weights:
                for mode in modes:
                    cfg = SegmentConfig.from_options(labels=list(case.labels), names=list(case.names),
                                        mode=mode, matcher="sam2", window=case.window,
                                        bank_size=bs, seed=args.seed)
                    t0 = time.perf_counter()
                    r = seg.segment(s, sl_path, q, cfg)
                    tt = time.perf_counter() - t0
                    preds.append((f"medseg[{mode}]", ckpt_note or "",
                                  {nm: r.labels.array == i + 1 for i, nm in enumerate(case.names)},
                                  tt, {"bank_size": bs}))
        for method, note, masks, secs, extra in preds:
            for nm, rv in zip(case.names, case.ref_labels):
                if nm not in masks:
                    continue
                sc = score(masks[nm], qr.array == rv, q.spacing_zyx, q)
                rows.append({"case": name, "label": nm, "method": method, "note": note,
                             "bank_size": extra.get("bank_size", ""), **sc,
                             "seconds": round(secs, 2), "reference": case.reference})
        print(f"done {name}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    cols = ["case", "label", "method", "note", "bank_size", "dice", "hd95_mm", "nsd2mm",
            "dice_slices", "extent_error_mm", "extent_ratio", "slices_with_structure", "seconds"]
    with open(args.out / "quality.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols + ["reference"])
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r[k]) for k in cols + ["reference"]})
    meta = {"versions": versions(), "machine": machine(), "metrics": implementation(),
            "checkpoint": str(args.checkpoint) if args.checkpoint else
            ("random weights" if args.random_weights else None),
            "checkpoint_sha256": seg._engine.checkpoint_sha256 if seg and seg._engine else None,
            "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (args.out / "quality.json").write_text(json.dumps(meta, indent=2, default=_json))
    print(f"{'case':17s} {'label':10s} {'method':24s} {'bank':>4s} {'Dice':>6s} {'HD95mm':>7s} "
          f"{'NSD2mm':>6s} {'Dice@sl':>7s} {'ext.mm':>6s} {'ext.x':>5s} {'s':>6s} note")
    for r in rows:
        print(f"{r['case']:17s} {r['label']:10s} {r['method']:24s} {str(r['bank_size']):>4s} "
              f"{_fmt(r['dice']):>6s} {_fmt(r['hd95_mm']):>7s} {_fmt(r['nsd2mm']):>6s} "
              f"{_fmt(r['dice_slices']):>7s} {_fmt(r['extent_error_mm']):>6s} "
              f"{_fmt(r['extent_ratio']):>5s} {r['seconds']:>6.1f} {r['note']}")


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.3f}")
    return str(v)


def _json(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    main()
