"""Checks on images as read: a label map given as an image, NaN/inf voxels, constant images."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError
from .volume import Volume


def looks_like_labels(arr: np.ndarray) -> tuple[bool, np.ndarray]:
    """Is this integer volume a label map? A few values (16 or fewer, 0 among them), or up
    to 256 non-negative values forming uniform regions: inside the foreground, at least
    :data:`LABEL_UNIFORM` of neighbouring voxels along a row are equal (images are noisy)."""
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool) or not arr.size:
        return False, np.zeros(0)
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]
    values = distinct_values(sample)
    if values.min() < 0 or 0 not in values or values.size > 256:
        return False, values
    if values.size <= 16:
        return True, values
    rows = arr[:: max(1, arr.shape[0] // 16)]
    a, b = rows[..., :-1], rows[..., 1:]
    fg = (a != 0) | (b != 0)
    return bool(fg.any() and float(np.mean(a[fg] == b[fg])) >= LABEL_UNIFORM), values


LABEL_UNIFORM = 0.75


def distinct_values(arr: np.ndarray) -> np.ndarray:
    """``np.unique(arr)`` for an integer (or bool) array, by flagging each value present when
    the values span less than :data:`FLAG_RANGE` (a scan's or a label's integers: no sort
    of millions of voxels)."""
    if not arr.size:
        return np.unique(arr)
    lo, hi = int(arr.min()), int(arr.max())
    if arr.dtype == bool or hi - lo >= FLAG_RANGE:
        return np.unique(arr)
    present = np.zeros(hi - lo + 1, bool)
    if lo == 0:
        present[arr.ravel()] = True
        return np.flatnonzero(present).astype(arr.dtype)
    if arr.dtype.kind == "u":  # offsets from the minimum in the array's own type
        present[(arr - arr.dtype.type(lo)).ravel()] = True
        return np.flatnonzero(present).astype(arr.dtype) + arr.dtype.type(lo)
    present[(arr.astype(np.int64) - lo).ravel()] = True
    return (np.flatnonzero(present) + lo).astype(arr.dtype)


FLAG_RANGE = 1 << 20  # widest range of values counted by flags (a 1 MB flag array)


def check_not_label(vol: Volume, name: str) -> Volume:
    """Refuse a label map given where an image is expected (before any heavy work)."""
    label, values = looks_like_labels(vol.array)
    if label:
        shown = ", ".join(map(str, values[:8])) + (" ..." if values.size > 8 else "")
        raise InputError(
            f"{name} {vol.path}: looks like a label map ({values.size} values: {shown}), not "
            f"an image; give the scan as the {name} and the labels as the support label")
    return vol


def check_finite(vol: Volume, name: str = "image") -> Volume:
    """Replace NaN/inf voxels by the lowest finite value (with a warning); refuse constant images."""
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        n_bad = int(bad.sum())
        if n_bad == arr.size:
            raise InputError(f"{name} {vol.path}: every voxel is NaN or inf")
        if n_bad:
            fill = float(np.min(arr[~bad]))
            warnings.warn(
                f"{name} {vol.path}: {n_bad} NaN/inf voxels replaced by the lowest finite value "
                f"({fill:g})",
                stacklevel=2,
            )
            arr = np.where(bad, fill, arr)
            vol = vol.with_array(arr, nonfinite_replaced=n_bad)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if lo == hi:
        raise InputError(
            f"{name} {vol.path}: image is constant (every voxel = {lo:g}); nothing to segment"
        )
    return vol
