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

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

IMPLEMENTATION = "MONAI {version} (monai.metrics; Euclidean distance, symmetric HD95, ASSD, NSD)"


def implementation() -> str:
    """Name and version of the distance implementation used."""
    import monai

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
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    sp = [float(s) for s in spacing]
    yp = torch.from_numpy(np.stack([~p, p])[None]).float()
    yr = torch.from_numpy(np.stack([~r, r])[None]).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(yp, yr, include_background=False, percentile=percentile,
                                        spacing=sp)
        asd = compute_average_surface_distance(yp, yr, include_background=False, symmetric=True,
                                               spacing=sp)
        nsd = compute_surface_dice(yp, yr, class_thresholds=[float(tolerance_mm)],
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
