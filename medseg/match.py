"""Dynamic matching: for every query frame, the most similar member of the support bank.

Distances (lower = more similar), all computed in batches:

* ``sam2``: LPIPS-style perceptual distance on SAM2's own image-encoder features
  (unit-normalised channels, squared differences, averaged over positions and levels);
  no extra network. Computed by :class:`medseg.engine.Sam2Engine`.
* ``ssim``: 1 - mean SSIM (7x7 uniform window, as scikit-image), weight-free.
* ``ncc``: 1 - normalised cross-correlation, weight-free and the cheapest.

Weight-free distances are computed on frames resized to ``size`` x ``size``.
"""

from __future__ import annotations

import numpy as np

from .errors import UsageError

MATCHERS = ("sam2", "ssim", "ncc")


def _resize(frames: np.ndarray, size: int):
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(frames), dtype=torch.float32)[:, None]
    return F.interpolate(t, size=(size, size), mode="area" if t.shape[-1] >= size else "bilinear")


def ncc_distance(query: np.ndarray, bank: np.ndarray, size: int = 128) -> np.ndarray:
    """(n, M) 1 - Pearson correlation of resized frames."""
    q = _resize(query, size).flatten(1)
    b = _resize(bank, size).flatten(1)
    q = (q - q.mean(1, keepdim=True)) / (q.std(1, keepdim=True) + 1e-6)
    b = (b - b.mean(1, keepdim=True)) / (b.std(1, keepdim=True) + 1e-6)
    return (1.0 - (q @ b.T) / q.shape[1]).numpy()


def ssim_distance(
    query: np.ndarray, bank: np.ndarray, size: int = 128, win: int = 7, chunk: int = 32
) -> np.ndarray:
    """(n, M) 1 - mean SSIM, data range 1 (frames in [0, 1])."""
    import torch.nn.functional as F

    c1, c2 = 0.01**2, 0.03**2
    q = _resize(query, size)  # (n, 1, s, s)
    b = _resize(bank, size)  # (M, 1, s, s)

    def local_mean(x):
        return F.avg_pool2d(x, win, stride=1)

    cov_norm = win * win / (win * win - 1)  # sample covariance, as scikit-image
    mq, mb = local_mean(q), local_mean(b)
    vq = (local_mean(q * q) - mq * mq) * cov_norm
    vb = (local_mean(b * b) - mb * mb) * cov_norm
    out = np.empty((q.shape[0], b.shape[0]), np.float32)
    for s in range(0, q.shape[0], chunk):
        qs = q[s : s + chunk, None]  # (c, 1, 1, s, s)
        mqs, vqs = mq[s : s + chunk, None], vq[s : s + chunk, None]
        prod = local_mean((qs * b[None]).flatten(0, 1)).view(qs.shape[0], b.shape[0], 1,
                                                              *mqs.shape[-2:])
        cov = (prod - mqs * mb[None]) * cov_norm
        num = (2 * mqs * mb[None] + c1) * (2 * cov + c2)
        den = (mqs**2 + mb[None] ** 2 + c1) * (vqs + vb[None] + c2)
        out[s : s + chunk] = (1.0 - (num / den).mean(dim=(2, 3, 4))).numpy()
    return out


def weight_free_distance(name: str, query: np.ndarray, bank: np.ndarray) -> np.ndarray:
    if name == "ssim":
        return ssim_distance(query, bank)
    if name == "ncc":
        return ncc_distance(query, bank)
    raise UsageError(f"matcher {name!r}: choose one of {', '.join(MATCHERS)}")


def best_members(distances: np.ndarray) -> np.ndarray:
    """Index of the closest member per query frame (ties: the lowest index)."""
    return np.argmin(distances, axis=1)


def transfer_masks(matches: np.ndarray, bank_masks: np.ndarray) -> np.ndarray:
    """Matcher-transfer baseline: each query frame takes its matched member's mask."""
    return bank_masks[matches]
