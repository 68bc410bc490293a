"""Overlap and surface-distance metrics in millimetres.

Distances come from MONAI (``monai.metrics``: ``compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_surface_dice``), given the voxel spacing in
array-axis order. Empty-mask rules (applied before MONAI is called, identical for all
metrics):

* prediction and reference both empty: Dice, IoU, HD95, ASSD and surface Dice are NaN
  (nothing to score; excluded from means);
* exactly one empty: Dice = IoU = surface Dice = 0, HD95 = ASSD = inf.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ._lazy import lazy_import
from .errors import InputError, UsageError
from .frames import label_to_frames
from .io import read_image, same_geometry

monai = lazy_import("monai")
monai_metrics = lazy_import("monai.metrics")
torch = lazy_import("torch")

MAX_LABELS = 1000  # more distinct values than this: an intensity image, not a label map
IMPLEMENTATION = "MONAI {version} (monai.metrics; Euclidean distance, symmetric HD95, ASSD, NSD)"


def implementation() -> str:
    """Name and version of the distance implementation used."""
    return IMPLEMENTATION.format(version=monai.__version__)


@dataclass
class LabelScores:
    """Scores of one label."""

    label: int
    dice: float
    iou: float
    hd95_mm: float
    assd_mm: float
    nsd: float
    nsd_tolerance_mm: float
    pred_voxels: int
    ref_voxels: int
    pred_volume_ml: float
    ref_volume_ml: float

    def as_dict(self) -> dict:
        return asdict(self)


def dice_iou(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean arrays (NaN when both are empty)."""
    p, r = pred.astype(bool), ref.astype(bool)
    inter = int(np.count_nonzero(p & r))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return math.nan, math.nan
    union = total - inter
    return 2.0 * inter / total, inter / union


def surface_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float = 2.0,
    percentile: float = 95.0,
) -> tuple[float, float, float]:
    """(HD at ``percentile``, ASSD, surface Dice at ``tolerance_mm``) in mm via MONAI.

    ``spacing`` is in the arrays' axis order (z, y, x for a Volume array).
    """
    p, r = pred.astype(bool), ref.astype(bool)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch {p.shape} vs {r.shape}")
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing has {len(spacing)} values for {p.ndim} axes")
    pe, re = not p.any(), not r.any()
    if pe and re:
        return math.nan, math.nan, math.nan
    if pe or re:
        return math.inf, math.inf, 0.0
    sp = [float(s) for s in spacing]
    yp = torch.from_numpy(np.stack([~p, p])[None]).float()
    yr = torch.from_numpy(np.stack([~r, r])[None]).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = monai_metrics.compute_hausdorff_distance(yp, yr, include_background=False, percentile=percentile,
                                        spacing=sp)
        asd = monai_metrics.compute_average_surface_distance(yp, yr, include_background=False, symmetric=True,
                                               spacing=sp)
        nsd = monai_metrics.compute_surface_dice(yp, yr, class_thresholds=[float(tolerance_mm)],
                                   include_background=False, spacing=sp)
    return float(hd.item()), float(asd.item()), float(nsd.item())


def score_label(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    label: int = 1,
    tolerance_mm: float = 2.0,
) -> LabelScores:
    """All scores of one binary prediction against one binary reference."""
    d, j = dice_iou(pred, ref)
    hd, asd, nsd = surface_metrics(pred, ref, spacing, tolerance_mm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    npred, nref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    return LabelScores(label, d, j, hd, asd, nsd, tolerance_mm, npred, nref,
                       npred * voxel_ml, nref * voxel_ml)


def evaluate_labelmaps(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    ref_labels: Sequence[int] | None = None,
) -> list[LabelScores]:
    """Score integer labelmaps label by label.

    ``labels`` are the prediction's values; ``ref_labels`` (same length, default the same
    values) are the reference values they are compared with.
    """
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0)
    ref_labels = list(ref_labels) if ref_labels is not None else list(labels)
    if len(ref_labels) != len(labels):
        raise ValueError("labels and ref_labels differ in length")
    return [score_label(pred == lp, ref == lr, spacing, lp, tolerance_mm)
            for lp, lr in zip(labels, ref_labels)]


def per_slice_dice(pred: np.ndarray, ref: np.ndarray, axis: int = 0) -> np.ndarray:
    """Dice of every slice along ``axis`` (NaN where both are empty)."""
    p = np.moveaxis(pred.astype(bool), axis, 0).reshape(pred.shape[axis], -1)
    r = np.moveaxis(ref.astype(bool), axis, 0).reshape(ref.shape[axis], -1)
    inter = np.count_nonzero(p & r, axis=1)
    total = np.count_nonzero(p, axis=1) + np.count_nonzero(r, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), np.nan)


@dataclass
class Evaluation:
    """Scores of a prediction file against a reference file."""

    pred: str
    ref: str
    scores: list[LabelScores]
    spacing_zyx: tuple[float, float, float]
    per_slice: np.ndarray  # (n_axial_slices, n_labels) Dice, inferior -> superior
    implementation: str
    ref_labels: list[int]
    names: list[str]
    mapping_note: str | None = None  # how prediction values were paired with reference values

    def as_dict(self) -> dict:
        return {
            "pred": self.pred,
            "ref": self.ref,
            "spacing_zyx_mm": list(self.spacing_zyx),
            "implementation": self.implementation,
            "empty_mask_rules": "both empty: NaN for all; one empty: Dice/IoU/NSD 0, HD95/ASSD inf",
            "label_mapping": self.mapping_note,
            "labels": [{**s.as_dict(), "ref_label": r, "name": n}
                       for s, r, n in zip(self.scores, self.ref_labels, self.names)],
            "per_slice_dice": self.per_slice.tolist(),
        }

    def to_csv(self) -> str:
        cols = ["name", *LabelScores.__dataclass_fields__, "ref_label"]
        lines = [",".join(cols)]
        for s, r, n in zip(self.scores, self.ref_labels, self.names):
            d = {**s.as_dict(), "ref_label": r, "name": _csv_text(n)}
            lines.append(",".join(_fmt(d[c]) for c in cols))
        return "\n".join(lines) + "\n"


def _csv_text(s: str) -> str:
    return f'"{s}"' if any(c in s for c in ',"\n') and not s.startswith('"') else s


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.6g}")
    return str(v)


def evaluate_files(
    pred_path: str,
    ref_path: str,
    labels: Sequence[int] | None = None,
    ref_labels: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    allow_missing: bool = False,
) -> Evaluation:
    """Score two label files on the same grid; a grid mismatch is an error, never resampled.
    A structure absent from the reference is an error (``allow_missing``: scored, with a
    warning).

    Without ``labels``, a medseg prediction is paired through its report (beside it):
    output value ``i`` is scored against the support value it was made from; otherwise
    every value present in either file is scored against the same value.
    """
    pred = read_image(pred_path, name="prediction")
    ref = read_image(ref_path, name="reference")
    diffs = same_geometry(ref, pred)
    if diffs:
        raise InputError(
            f"prediction {pred_path} and reference {ref_path} are on different grids "
            f"(reference first): {'; '.join(diffs)}. Resample one onto the other explicitly "
            "(nearest neighbour) before evaluating"
        )
    for name, vol in (("prediction", pred), ("reference", ref)):
        a = vol.array
        if np.issubdtype(a.dtype, np.floating) and not np.array_equal(a, np.round(a)):
            raise InputError(f"{name} {vol.path}: holds non-integer values; give a label map")
        values = np.unique(a.ravel()[:: max(1, a.size // 2_000_000)])
        if values.size > MAX_LABELS or (values.size and values.min() < 0):
            raise InputError(f"{name} {vol.path}: looks like an image, not a label map "
                             f"({values.size} distinct values, from {values.min():g}); give "
                             "label maps (0 background, 1, 2, ... structures)")
    p, r = pred.array.astype(np.int64), ref.array.astype(np.int64)
    labels, ref_labels, names, note = _pairing(pred_path, p, r, labels, ref_labels)
    if len(ref_labels) != len(labels):
        raise UsageError(f"--ref-labels has {len(ref_labels)} values for {len(labels)} --labels")
    _check_present(r, ref_labels, names, ref_path, allow_missing)
    scores = evaluate_labelmaps(p, r, pred.spacing_zyx, labels, tolerance_mm, ref_labels)
    pf, rf = label_to_frames(pred.with_array(p)), label_to_frames(ref.with_array(r))
    per_slice = np.stack([per_slice_dice(pf == lp, rf == lr) for lp, lr in zip(labels, ref_labels)],
                         axis=1) if labels else np.zeros((pf.shape[0], 0))
    return Evaluation(str(pred_path), str(ref_path), scores, pred.spacing_zyx, per_slice,
                      implementation(), list(ref_labels), names, note)


def _check_present(r: np.ndarray, ref_labels, names, ref_path, allow_missing: bool) -> None:
    """A reference value that labels nothing would score as a silent 0."""
    present = set(np.unique(r).tolist())
    missing = [(v, n) for v, n in zip(ref_labels, names) if v not in present]
    if not missing:
        return
    what = ", ".join(f"{v} ({n})" for v, n in missing)
    if not allow_missing:
        raise InputError(f"reference {ref_path}: holds no voxel of label {what}; values present: "
                         f"{', '.join(str(v) for v in sorted(present) if v)}. Give the matching "
                         "values with --ref-labels, or --allow-missing to score it anyway")
    warnings.warn(f"reference {ref_path}: holds no voxel of label {what}; scored as missing",
                  stacklevel=3)


def _pairing(pred_path, p, r, labels, ref_labels):
    """(prediction values, reference values, names, note) to score."""
    named = medseg_segments(pred_path)
    if labels is None and named:
        labels = [s["output_value"] for s in named]
        ref_labels = list(ref_labels) if ref_labels else [s["support_value"] for s in named]
        note = ("paired through the medseg report: " + ", ".join(
            f"{s['output_value']} ({s['name']}) -> reference {rv}"
            for s, rv in zip(named, ref_labels)) + "; --labels/--ref-labels override")
        return labels, ref_labels, [s["name"] for s in named], note
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(p), np.unique(r)) if v != 0)
    ref_labels = list(ref_labels) if ref_labels else list(labels)
    by_value = {s["output_value"]: s["name"] for s in named}
    return list(labels), ref_labels, [by_value.get(v, f"label {v}") for v in labels], None


def medseg_segments(pred_path) -> list[dict]:
    """Segments (output value, support value, name) of a medseg output, from its report."""
    p = Path(pred_path)
    stem = p.name
    for suf in ("_labels.nii.gz", "_labels.nii", ".seg.nrrd"):
        if stem.endswith(suf):
            stem = stem[: -len(suf)]
            break
    else:
        return []
    rep = p.with_name(f"{stem}_report.json")
    try:
        segs = json.loads(rep.read_text(encoding="utf-8")).get("segments", [])
    except (OSError, ValueError, AttributeError):
        return []
    out = []
    for s in segs if isinstance(segs, list) else []:
        ok = isinstance(s, dict) and all(isinstance(s.get(k), int) and not isinstance(
            s.get(k), bool) and 0 < s[k] < 2**31 for k in ("output_value", "support_value"))
        if not ok:  # a report that is not medseg's own, or damaged: not trusted
            warnings.warn(f"{rep}: segments do not look like medseg's; pairing by value",
                          stacklevel=3)
            return []
        name = s.get("name") if isinstance(s.get("name"), str) else f"label {s['output_value']}"
        out.append({**s, "name": name})
    return out


def format_table(ev: Evaluation) -> str:
    """Plain-text table of an evaluation."""
    tol = format(ev.scores[0].nsd_tolerance_mm if ev.scores else 2.0, "g")
    head = (f"{'name':>14} {'label':>5} {'ref':>4} {'Dice':>7} {'IoU':>7} {'HD95mm':>8} "
            f"{'ASSDmm':>8} {'NSD@' + tol + 'mm':>9} {'pred ml':>9} {'ref ml':>9}")
    rows = [head]
    for s, r, n in zip(ev.scores, ev.ref_labels, ev.names):
        rows.append(f"{n[:14]:>14} {s.label:>5} {r:>4} {_fmt(s.dice):>7} {_fmt(s.iou):>7} "
                    f"{_fmt(s.hd95_mm):>8} {_fmt(s.assd_mm):>8} {_fmt(s.nsd):>9} "
                    f"{s.pred_volume_ml:>9.2f} {s.ref_volume_ml:>9.2f}")
    rows.append(f"distances: {ev.implementation}; spacing (z,y,x) mm = "
                f"{tuple(round(x, 4) for x in ev.spacing_zyx)}")
    return "\n".join(rows)
