"""Checks on images as read: a label map given as an image, NaN/inf voxels, constant images."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import InputError
from .volume import Volume


def check_not_label(vol: Volume, name: str) -> Volume:
    """Refuse a label map given where an image is expected (a few integer values only)."""
    arr = vol.array
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        return vol
    sample = arr.ravel()[:: max(1, arr.size // 1_000_000)]
    values = np.unique(sample)
    if values.size <= 16 and values.min() >= 0 and 0 in values:
        raise InputError(
            f"{name} {vol.path}: looks like a label map (only the values "
            f"{', '.join(map(str, values[:8]))}{' ...' if values.size > 8 else ''}), not an "
            f"image; give the scan as the {name} and the labels as the support label")
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
