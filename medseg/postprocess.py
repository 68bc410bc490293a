"""Optional clean-up of predicted labelmaps (frames layout: frame index first)."""

from __future__ import annotations

import numpy as np

from ._lazy import lazy_import
from .errors import UsageError

ndimage = lazy_import("scipy.ndimage")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 3D connected component (26-connectivity) of a boolean mask."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice (2D, along the first axis) -- enclosed background only."""
    out = np.empty_like(mask, dtype=bool)
    for i in range(mask.shape[0]):
        out[i] = ndimage.binary_fill_holes(mask[i])
    return out


def parse_range(spec: str | None, n: int) -> tuple[int, int] | None:
    """``"A:B"`` (frame indices, B exclusive, either may be empty) -> (start, stop)."""
    if not spec:
        return None
    try:
        a, b = spec.split(":")
        start = int(a) if a.strip() else 0
        stop = int(b) if b.strip() else n
    except ValueError:
        raise UsageError(f"--z-range {spec!r}: use START:STOP frame indices, e.g. 10:80") from None
    start, stop = max(0, start), min(n, stop)
    if start >= stop:
        raise UsageError(f"--z-range {spec!r}: empty range for {n} frames")
    return start, stop


def postprocess(
    labels: np.ndarray,
    values: list[int],
    *,
    keep_largest: bool = False,
    holes: bool = False,
    frame_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """Apply the chosen clean-ups to an (n, H, W) labelmap, label by label."""
    out = labels.copy()
    if frame_range is not None:
        a, b = frame_range
        out[:a] = 0
        out[b:] = 0
    if not (keep_largest or holes):
        return out
    for v in values:
        m = clean_mask(out == v, keep_largest, holes)
        out[(out == v) & ~m] = 0
        out[m & (out == 0)] = v
    return out


def clean_mask(mask: np.ndarray, keep_largest: bool, holes: bool) -> np.ndarray:
    """One structure's mask with its largest component kept and/or holes filled."""
    if not mask.any():
        return mask
    if keep_largest:
        mask = largest_component(mask)
    return fill_holes(mask) if holes else mask


def postprocess_masks(
    masks: np.ndarray,
    *,
    keep_largest: bool = False,
    holes: bool = False,
    frame_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """The same clean-ups on (N, n, H, W) per-structure masks (structures may overlap)."""
    out = masks.copy()
    if frame_range is not None:
        a, b = frame_range
        out[:, :a] = False
        out[:, b:] = False
    for i in range(len(out)):
        out[i] = clean_mask(out[i], keep_largest, holes)
    return out
