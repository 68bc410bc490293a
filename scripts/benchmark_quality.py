"""Quality benchmark: what a user who paints one slice gets, measured on whole scans.

    python scripts/benchmark_quality.py [--checkpoint PATH | --random-weights]
        [--cases ct-liver-spleen,...] [--held-out] [--corrections 0,1,2,4]
        [--steps] [--no-baselines] [--out benchmarks/quality]

Every case runs three ways, rows in this order:

  one painted slice  the support label blanked to its largest slice per structure (what a
                     user paints): medseg completes the structure through the support scan,
                     then segments the query -- the headline rows
  full label         the support label as shipped, which already covers the structure in 3D
                     (TotalSegmentator output, Slicer's full segmentation): today's rows
  in-scan            the scan segmented from one painted slice of its own reference (support =
                     query): every query and support scan of the cases, and the scan-only cases

Methods: ``transfer`` (weight-free: completion, then each query slice takes its matched
support mask), SAM2 in ``pair``/``volume`` mode and its scan mode in-scan (with
``--checkpoint``), and for the full label the baselines ``copy`` (the label resampled in
world coordinates) and ``registration`` (SimpleITK affine, Mattes MI, single-threaded so a
seed gives one answer).

The corrections curve: whole-volume Dice after 0, 1, 2 and 4 simulated corrections. Each
correction replaces, per structure, the query slice with the most wrongly labelled pixels
among those with the lowest Dice by the reference's slice, in the result's own
``.seg.nrrd`` (its slice record kept, as 3D Slicer keeps it), and reruns medseg on that
scan with the corrected file as the label. Two starts: the in-scan result from one painted
slice, and the one-painted-slice result on the query. The rows say whether every corrected
slice came back bit-identical.

Scores per case and structure: whole-volume Dice, HD95 (mm), surface Dice at 2 mm; Dice on
the reference's slices only (the few-shot papers' protocol); the extent error (mm) and the
predicted extent as a fraction of the reference's. CSV and JSON (versions, machine,
checkpoint hash) are written and a table printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg import data
from medseg.api import Segmenter, machine, versions
from medseg.config import SegmentConfig, with_options
from medseg.export.seg_nrrd import seg_nrrd
from medseg.frames import FrameStack, label_to_frames, volume_to_frames
from medseg.io import Volume, canonical_orientation, canonical_spacing_zyx, read_image, write_image
from medseg.labels import read_support_label
from medseg.metrics import implementation, surface_metrics

STEPS = [  # the weight-free path, one component at a time (--steps)
    ("transfer-centred", {"shots": 1, "placement": "centre", "presence": "off"}),
    ("+placement", {"shots": 1, "presence": "off"}),
    ("+presence", {"shots": 1}),
]
COLS = ["setting", "case", "label", "method", "held_out", "note", "corrections", "dice",
        "hd95_mm", "nsd2mm", "dice_slices", "extent_error_mm", "extent_ratio",
        "slices_with_structure", "corrected_exact", "seconds"]


@dataclass
class Scan:
    """A scan, a label on it and the structures (values, names) to score."""

    image: str
    label: str
    values: tuple[int, ...]
    names: tuple[str, ...]
    window: str | None
    held_out: bool
    name: str


# --- labels -----------------------------------------------------------------------------------


def label_masks(path: str, image: Volume, values) -> dict[int, np.ndarray]:
    """Each structure's mask on the image grid (any label form)."""
    lab = read_support_label(path, image, resample=True)
    return {v: lab.mask(v) for v in values}


def painted_slice(masks: dict[int, np.ndarray], image: Volume, out: Path) -> Path:
    """A label map holding, per structure, only its largest axial slice: what a user paints."""
    stack = volume_to_frames(image)
    arr = np.zeros(image.shape, np.uint16)
    for v, m in masks.items():
        f = stack.view_of(m)
        k = int(np.argmax(f.sum(axis=(1, 2))))
        one = np.zeros(f.shape, bool)
        one[k] = f[k]
        arr[stack.to_volume_array(one)] = v
    write_image(image.with_array(arr), out)
    return out


# --- scores ----------------------------------------------------------------------------------


def score(pred: np.ndarray, ref: np.ndarray, vol: Volume) -> dict:
    """Whole-volume scores, structure-slices Dice and the extent error (axial frames)."""
    out = {"dice": _dice(pred, ref)}
    hd, _, nsd = surface_metrics(pred, ref, vol.spacing_zyx, 2.0)
    out.update(hd95_mm=hd, nsd2mm=nsd)
    pf = label_to_frames(vol.with_array(pred.astype(np.uint8))).astype(bool)
    rf = label_to_frames(vol.with_array(ref.astype(np.uint8))).astype(bool)
    keep = rf.reshape(rf.shape[0], -1).any(axis=1)
    has = pf.reshape(pf.shape[0], -1).any(axis=1)
    out["slices_with_structure"] = int(keep.sum())
    out["dice_slices"] = _dice(pf[keep], rf[keep]) if keep.any() else math.nan
    dz = float(canonical_spacing_zyx(vol, canonical_orientation(vol.direction))[0])
    if keep.any() and has.any():
        r, p = np.nonzero(keep)[0], np.nonzero(has)[0]
        out["extent_error_mm"] = dz * max(abs(int(p[0]) - int(r[0])), abs(int(p[-1]) - int(r[-1])))
        out["extent_ratio"] = (p[-1] - p[0] + 1) / (r[-1] - r[0] + 1)
    else:
        out["extent_error_mm"], out["extent_ratio"] = math.nan, math.nan
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    t = a.sum() + b.sum()
    return math.nan if t == 0 else 2.0 * float((a & b).sum()) / float(t)


def rows_of(res_masks: dict[str, np.ndarray], refs: dict[str, np.ndarray], vol: Volume,
            base: dict) -> list[dict]:
    return [{**base, "label": nm, **score(res_masks[nm], refs[nm], vol)} for nm in refs]


# --- baselines ----------------------------------------------------------------------------------


def copy_baseline(label: Volume, query: Volume) -> np.ndarray:
    import SimpleITK as sitk

    res = sitk.Resample(label.to_sitk(), query.to_sitk(), sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    return sitk.GetArrayFromImage(res)


def registration_baseline(support: Volume, label: Volume, query: Volume, seed: int = 0
                          ) -> np.ndarray:
    """Affine registration (Mattes MI, multi-start, multi-resolution) single-threaded, so
    the same seed gives the same answer; the label warped with nearest neighbour."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        fixed = sitk.Cast(query.to_sitk(), sitk.sitkFloat32)
        moving = sitk.Cast(support.to_sitk(), sitk.sitkFloat32)
        best_val, affine = np.inf, None
        for start in _starts(fixed, moving, seed):
            r = _method(start, seed)
            try:
                out = r.Execute(fixed, moving)
            except RuntimeError:  # the refinement left the overlap
                continue
            if r.GetMetricValue() < best_val:
                best_val, affine = r.GetMetricValue(), out
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if affine is None:
        return np.zeros(query.shape, np.uint16)
    res = sitk.Resample(label.to_sitk(), query.to_sitk(), affine, sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt16)
    return sitk.GetArrayFromImage(res)


def _method(transform, seed: int, iters: int = 200):
    import SimpleITK as sitk

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


def _starts(fixed, moving, seed: int, starts: int = 17, keep: int = 3):
    """Multi-start: the fixed centre tried against points along the moving scan's longest
    axis (a short translation search each); the ``keep`` best by mutual information."""
    import SimpleITK as sitk

    def centre(img):
        return np.asarray(img.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2 for n in img.GetSize()]))

    size = np.asarray(moving.GetSize())
    ax = int(np.argmax(size * np.asarray(moving.GetSpacing())))
    found = []
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
        r.SetOptimizerWeights([0.0] * 9 + [1.0] * 3)
        r.SetInitialTransform(tr, inPlace=True)
        try:
            r.Execute(fixed, moving)
        except RuntimeError:
            continue
        found.append((r.GetMetricValue(), sitk.AffineTransform(tr)))
    found.sort(key=lambda x: x[0])
    return [t for _, t in found[:keep]] or [sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.GEOMETRY)]


# --- medseg runs ------------------------------------------------------------------------------


def methods(args) -> list[tuple[str, dict]]:
    """(row name, options) of the medseg methods to run across scans."""
    out = [("transfer", {"method": "transfer"})]
    if args.steps:
        out = [(n, {"method": "transfer", **o}) for n, o in STEPS] + out
    if args.checkpoint or args.random_weights:
        out += [(f"sam2[{m}]", {"method": "sam2", "mode": m}) for m in args.modes.split(",")]
    return out


def cross_case(seg: Segmenter, case: data.Case, root: Path, tmp: Path, args) -> list[dict]:
    """One case, one painted slice first, then the full label (with baselines)."""
    p = data.case_paths(case, root)
    s, q = (read_image(p[k], name=k) for k in ("support", "query"))
    sup = label_masks(p["support_label"], s, case.labels)
    ref = label_masks(p["query_ref"], q, case.ref_labels)  # cropped references put on q's grid
    refs = {nm: ref[rv] for nm, rv in zip(case.names, case.ref_labels)}
    one = painted_slice(sup, s, tmp / f"{case.name}_one_slice.nii.gz")
    rows = []
    for setting, label in (("one painted slice", str(one)), ("full label", p["support_label"])):
        base = {"setting": setting, "case": case.name, "held_out": case.held_out,
                "corrections": 0}
        for name, opts in methods(args):
            cfg = SegmentConfig.from_options(labels=list(case.labels), names=list(case.names),
                                             window=case.window, seed=args.seed, **opts)
            t0 = time.perf_counter()
            r = seg.segment(p["support"], label, p["query"], cfg)
            secs = time.perf_counter() - t0
            got = {nm: r.labels.array == i + 1 for i, nm in enumerate(case.names)}
            rows += rows_of(got, refs, q, {**base, "method": name, "note": _note(args, opts),
                                           "seconds": round(secs, 2)})
        if setting == "full label" and not args.no_baselines:
            rows += _baselines(s, sup, q, refs, case, base, args)
    return rows


def _baselines(s, sup, q, refs, case, base, args) -> list[dict]:
    arr = np.zeros(s.shape, np.uint16)
    for v in reversed(list(case.labels)):
        arr[sup[v]] = v
    lab = s.with_array(arr)
    rows = []
    for name, fn in (("copy", lambda: copy_baseline(lab, q)),
                     ("registration", lambda: registration_baseline(s, lab, q, args.seed))):
        t0 = time.perf_counter()
        out = fn()
        secs = round(time.perf_counter() - t0, 2)
        got = {nm: out == v for v, nm in zip(case.labels, case.names)}
        rows += rows_of(got, refs, q, {**base, "method": name, "note": "", "seconds": secs})
    return rows


def _note(args, opts) -> str:
    return "RANDOM WEIGHTS" if args.random_weights and opts.get("method") == "sam2" else ""


# --- in-scan and corrections -------------------------------------------------------------------


def scans(cases: list[data.Case], scan_cases: list[data.ScanCase], root: Path) -> list[Scan]:
    """Every support and query scan of the cases with its label, and the scan-only cases
    (each scan and structure once)."""
    out, seen = [], set()
    for c in cases:
        p = data.case_paths(c, root)
        for img, lab, vals in ((p["support"], p["support_label"], c.labels),
                               (p["query"], p["query_ref"], c.ref_labels)):
            key = (img, lab, vals)
            if key not in seen:
                seen.add(key)
                out.append(Scan(img, lab, tuple(vals), tuple(c.names), c.window, c.held_out,
                                f"{c.name}:{'support' if img == p['support'] else 'query'}"))
    for c in scan_cases:
        out.append(Scan(str(root / c.image), str(root / c.label), (c.value,), (c.structure,),
                        c.window, c.held_out, c.name))
    return out


def in_scan(seg: Segmenter, scan: Scan, tmp: Path, args, ks: list[int]) -> list[dict]:
    """The scan from one painted slice of its reference, then the corrections curve."""
    img = read_image(scan.image, name="scan")
    ref = label_masks(scan.label, img, scan.values)
    one = painted_slice(ref, img, tmp / f"{_safe(scan.name)}_one_slice.nii.gz")
    rows = []
    for name, opts in (("transfer", {"method": "transfer"}),
                       *((("sam2[scan]", {"method": "sam2"}),)
                         if args.checkpoint or args.random_weights else ())):
        cfg = SegmentConfig.from_options(labels=list(scan.values), names=list(scan.names),
                                         window=scan.window, seed=args.seed, **opts)
        rows += corrections_curve(seg, img, scan, ref, one, cfg, ks, tmp,
                                  {"setting": "in-scan", "method": name,
                                   "note": _note(args, opts)})
    return rows


def corrections_curve(seg, img: Volume, scan: Scan, ref: dict[int, np.ndarray], label: Path,
                      cfg: SegmentConfig, ks: list[int], tmp: Path, base: dict,
                      support: str | None = None) -> list[dict]:
    """Rows after 0, then ``ks`` corrections (cumulative), starting from ``label`` painted on
    ``support`` (None: the scan itself). Reruns name the structures (the corrected file is
    a medseg result: its values are 1..N)."""
    refs = {nm: ref[v] for v, nm in zip(scan.values, scan.names)}
    rerun = with_options(cfg, labels=list(scan.names))
    rows, done, corrected = [], 0, {}
    t0 = time.perf_counter()
    res = seg.segment(support or scan.image, label, scan.image, cfg)
    for k in sorted(set([0, *ks])):
        while done < k:
            label = correct(res, refs, tmp / f"{_safe(scan.name)}_{base['method']}_{done}",
                            corrected)
            done += 1
            res = seg.segment(scan.image, label, None, rerun)
        exact = all(np.array_equal(res.label_frames[f] == res.plan.by_name(nm).output_value, m)
                    for (nm, f), m in corrected.items())
        got = {nm: res.labels.array == i + 1 for i, nm in enumerate(scan.names)}
        rows += rows_of(got, refs, img, {
            **base, "case": scan.name, "held_out": scan.held_out, "corrections": k,
            "corrected_exact": exact if corrected else "",
            "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def correct(res, refs: dict[str, np.ndarray], out: Path,
            corrected: dict[tuple[str, int], np.ndarray]) -> Path:
    """The result's .seg.nrrd (slice record kept) with, per structure, its worst slice
    replaced by the reference's: a correction as a user makes it in 3D Slicer."""
    stack: FrameStack = res.query_frames
    frames = res.label_frames.copy()
    for e in res.plan:
        r = stack.view_of(refs[e.name])
        p = frames == e.output_value
        inter = (p & r).reshape(len(p), -1).sum(axis=1)
        total = p.reshape(len(p), -1).sum(axis=1) + r.reshape(len(p), -1).sum(axis=1)
        wrong = total - 2 * inter
        dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 2.0)
        order = np.lexsort((-wrong, dice))  # lowest Dice first, then most wrong pixels
        left = [int(i) for i in order if total[i] > 0 and (e.name, int(i)) not in corrected]
        if not left:  # every slice that holds the structure is corrected already
            continue
        f = left[0]
        frames[f][frames[f] == e.output_value] = 0
        frames[f][r[f]] = e.output_value
        corrected[(e.name, f)] = r[f].copy()
    arr = stack.to_volume_array(frames)
    path = out.with_suffix(".seg.nrrd")
    seg_nrrd(arr, res.labels, res.plan, path, None, res.segment_tags())
    return path


def _safe(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    args = parse()
    if args.merge:
        merge(args)
        return
    root = data.fetch(progress=False)
    seg, ckpt_sha = segmenter(args)
    cases = [{**data.CASES, **data.HELD_OUT}[c] for c in args.cases.split(",")]
    scan_cases = [data.SCAN_CASES[c] for c in args.scan_cases.split(",") if c]
    ks = [int(k) for k in args.corrections.split(",") if k.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for case in [] if args.in_scan_only else cases:
            if not args.corrections_only:
                rows += cross_case(seg, case, root, tmp, args)
            rows += cross_corrections(seg, case, root, tmp, args, ks)
            write(rows, args, ckpt_sha, table=False)  # what is done is kept
            print(f"done {case.name}", file=sys.stderr)
        todo = [] if args.corrections_only else scans(cases, scan_cases, root)
        if args.scans is not None:
            keep = set(args.scans.split(","))
            todo = [s for s in todo if s.name in keep]
        for scan in todo:
            rows += in_scan(seg, scan, tmp, args, ks)
            write(rows, args, ckpt_sha, table=False)
            print(f"done {scan.name} (in-scan)", file=sys.stderr)
    write(rows, args, ckpt_sha)


def cross_corrections(seg, case: data.Case, root: Path, tmp: Path, args, ks) -> list[dict]:
    """The corrections curve starting from the one-painted-slice result on the query."""
    if not ks or ks == [0]:
        return []
    p = data.case_paths(case, root)
    s = read_image(p["support"], name="support")
    one = painted_slice(label_masks(p["support_label"], s, case.labels), s,
                        tmp / f"{case.name}_one_slice_c.nii.gz")
    q = read_image(p["query"], name="query")
    ref = label_masks(p["query_ref"], q, case.ref_labels)
    ref = dict(zip(case.labels, (ref[v] for v in case.ref_labels)))
    scan = Scan(p["query"], p["query_ref"], case.labels, case.names, case.window,
                case.held_out, case.name)
    cfg = SegmentConfig.from_options(labels=list(case.labels), names=list(case.names),
                                     window=case.window, seed=args.seed, method="transfer")
    rows = corrections_curve(seg, q, scan, ref, one, cfg, [k for k in ks if k], tmp,
                             {"setting": "corrections from one painted slice",
                              "method": "transfer", "note": ""}, p["support"])
    return rows


def segmenter(args) -> tuple[Segmenter, str | None]:
    if args.random_weights:
        from medseg.engine import build_random_checkpoint

        ck = build_random_checkpoint(Path(tempfile.mkdtemp()) / "random_tiny_256.pt", "tiny",
                                     256, args.seed)
        seg = Segmenter(model="tiny", checkpoint=ck, device=args.device)
    elif args.checkpoint:
        seg = Segmenter(model=args.model, checkpoint=args.checkpoint, device=args.device,
                        image_size=args.image_size)
    else:
        return Segmenter(allow_download=False), None
    return seg, seg.engine.checkpoint_sha256


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="real SAM2.1 checkpoint (adds the SAM2 rows)")
    g.add_argument("--random-weights", action="store_true",
                   help="SAM2 rows with a random-weight tiny model (a pipeline check only)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--cases", default=",".join(data.CASES))
    ap.add_argument("--held-out", action="store_true", help="add the held-out cases "
                    "(cross-scan: " + ", ".join(data.HELD_OUT) + "; in-scan: "
                    + ", ".join(data.SCAN_CASES) + ")")
    ap.add_argument("--corrections", default="0,1,2,4", help="corrections curve points")
    ap.add_argument("--modes", default="pair,volume")
    ap.add_argument("--steps", action="store_true", help="add a transfer row per component")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/quality"))
    ap.add_argument("--in-scan-only", action="store_true", help="only the in-scan rows")
    ap.add_argument("--corrections-only", action="store_true",
                    help="only the corrections curves from one painted slice on another scan")
    ap.add_argument("--scan-cases", default="", help="in-scan-only cases (--held-out: all)")
    ap.add_argument("--scans", default=None, help="only these scans' in-scan rows, by name "
                    "(e.g. ct-chest-lungs-2:query; empty: none)")
    ap.add_argument("--merge", type=Path, nargs="+", help="combine the results of runs on parts "
                    "of the cases (their --out folders) into --out, rows in the usual order")
    args = ap.parse_args()
    if args.held_out:
        args.cases = ",".join([*args.cases.split(","), *data.HELD_OUT])
        args.scan_cases = ",".join(data.SCAN_CASES)
    return args


def merge(args) -> None:
    """One result from runs on parts of the cases: rows ordered as one run orders them (every
    case's cross-scan rows in the cases' order, then the in-scan rows; a row of a later
    part replaces the same row of an earlier one), each part's arguments, machine and
    versions kept under ``parts`` (a merged result's own parts with them)."""
    metas = [json.loads((d / "quality.json").read_text()) for d in args.merge]
    shas = {m["checkpoint_sha256"] for m in metas}
    if len(shas) != 1:
        sys.exit("the parts were run with different checkpoints")
    order = [*data.CASES, *data.HELD_OUT, *data.SCAN_CASES]

    def key(r: dict) -> tuple[int, int]:
        name = r["case"].split(":")[0]
        return (r["setting"] == "in-scan", order.index(name) if name in order else len(order))

    latest = {}  # a row of a later part replaces the same row of an earlier one
    for m in metas:
        latest.update({(r["setting"], r["case"], r["label"], r["method"], r["corrections"]): r
                       for r in m["rows"]})
    rows = sorted(latest.values(), key=key)
    parts = [part for m in metas  # a merged result's own parts are kept as they were
             for part in m.get("parts") or [{k: m[k] for k in ("args", "machine", "versions")}]]
    write(rows, args, shas.pop(), parts=parts)


def write(rows: list[dict], args, ckpt_sha: str | None, table: bool = True,
          parts: list[dict] | None = None) -> None:
    """CSV and JSON (versions, machine, checkpoint, arguments) of the rows; the table."""
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "quality.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in COLS})
    meta = {"versions": versions(), "machine": machine(), "metrics": implementation(),
            "checkpoint": str(args.checkpoint) if args.checkpoint else
            ("random weights" if args.random_weights else None),
            "checkpoint_sha256": ckpt_sha,
            "references": {c.name: c.reference for c in (*data.CASES.values(),
                                                         *data.HELD_OUT.values())},
            "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    meta["means"] = means(rows)
    if parts:
        meta["parts"] = parts  # merged from runs of parts of the cases (--merge)
    (args.out / "quality.json").write_text(json.dumps(meta, indent=2, default=_json))
    if not table:
        return
    print(f"{'setting':36s} {'case':32s} {'label':14s} {'method':16s} {'k':>2s} {'Dice':>6s} "
          f"{'HD95mm':>7s} {'Dice@sl':>7s} {'ext.x':>5s} {'s':>6s} note")
    for r in rows:
        print(f"{r['setting']:36s} {r['case']:32s} {r['label']:14s} {r['method']:16s} "
              f"{r['corrections']:>2d} {_fmt(r['dice']):>6s} {_fmt(r['hd95_mm']):>7s} "
              f"{_fmt(r['dice_slices']):>7s} {_fmt(r['extent_ratio']):>5s} {r['seconds']:>6.1f} "
              f"{'held out ' if r['held_out'] else ''}{r.get('note', '')}")


def means(rows: list[dict]) -> dict:
    """Mean whole-volume Dice (of the values as the CSV gives them) per setting and method,
    before any correction, on the cases that set medseg's thresholds and on the held-out
    ones."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        d = _fmt(r["dice"])
        if str(r["corrections"]) != "0" or d in ("", "nan"):
            continue
        key = f"{r['setting']} / {r['method']} / {'held out' if r['held_out'] else 'first cases'}"
        groups.setdefault(key, []).append(float(d))
    return {k: {"mean_dice": round(float(np.mean(v)), 6), "n": len(v)} for k, v in groups.items()}


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.3f}")
    return str(v)


def _json(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    main()
