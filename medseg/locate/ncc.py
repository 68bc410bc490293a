"""Normalised correlation: plain, and masked over every translation (Padfield, by FFT)."""

from __future__ import annotations

import numpy as np


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised (Pearson) correlation of two arrays (0 where either is constant)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


def masked_ncc_shift(fixed: np.ndarray, moving: np.ndarray, min_overlap: float = 0.3
                     ) -> tuple[int, int, float]:
    """(dy, dx, ncc): the translation of ``moving`` (pasted at its top-left plus dy, dx on
    ``fixed``'s grid) where the two correlate best, overlaps of at least ``min_overlap`` of
    the smaller image (masked normalised cross-correlation by FFT)."""
    ncc = masked_ncc_map(fixed[None], moving, min_overlap)[0]
    iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    # index (iy, ix) of the full correlation is a shift of (iy - Hm + 1, ix - Wm + 1)
    return iy - moving.shape[0] + 1, ix - moving.shape[1] + 1, float(ncc[iy, ix])


def masked_ncc_map(fixed: np.ndarray, moving: np.ndarray, min_overlap: float = 0.3
                   ) -> np.ndarray:
    """Normalised cross-correlation of ``moving`` against each of ``fixed`` (B, h, w) at
    every translation, over the overlap only (Padfield's masked NCC); -1 where the overlap
    is under ``min_overlap`` of the smaller image. Shape (B, h + Hm - 1, w + Wm - 1)."""
    fixed = _standardise(fixed.astype(np.float64))
    moving = _standardise(moving.astype(np.float64))
    size = (fixed.shape[1] + moving.shape[0] - 1, fixed.shape[2] + moving.shape[1] - 1)

    def rf(a: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(a, size)

    def back(a: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(a, size)

    fm1, fm, fmm = rf(np.ones_like(moving)[::-1, ::-1]), rf(moving[::-1, ::-1]), \
        rf((moving * moving)[::-1, ::-1])
    f1, ff, fff = rf(np.ones_like(fixed)), rf(fixed), rf(fixed * fixed)
    n = np.round(back(f1 * fm1))
    sf, sm, sff, smm = back(ff * fm1), back(f1 * fm), back(fff * fm1), back(f1 * fmm)
    sfm = back(ff * fm)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_safe = np.maximum(n, 1)
        num = sfm - sf * sm / n_safe
        den = np.sqrt(np.clip(sff - sf * sf / n_safe, 0, None) * np.clip(smm - sm * sm / n_safe,
                                                                         0, None))
        ncc = np.clip(num / den, -1, 1)
    small = min(fixed[0].size, moving.size)
    return np.where((n >= min_overlap * small) & (den > 1e-3 * n_safe), ncc, -1.0)


def _standardise(a: np.ndarray) -> np.ndarray:
    axes = tuple(range(a.ndim - 2, a.ndim))
    return (a - a.mean(axis=axes, keepdims=True)) / (a.std(axis=axes, keepdims=True) + 1e-6)
