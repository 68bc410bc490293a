"""Dynamic matching: for every query frame, the most similar member of the support bank.

Distances (lower = more similar), all computed in batches:

* ``sam2``: LPIPS-style perceptual distance on SAM2's own image-encoder features
  (unit-normalised channels, squared differences, averaged over positions and levels);
  no extra network. The features come from the engine's feature store, which keeps them
  for the propagation (:class:`Sam2FeatureMatcher`).
* ``ssim``: 1 - mean SSIM (7x7 uniform window, as scikit-image), weight-free.
* ``ncc``: 1 - normalised cross-correlation, weight-free and the cheapest.

Weight-free distances are computed on frames resized to ``size`` x ``size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ._lazy import lazy_import
from .options import MATCHERS, check_choice

torch = lazy_import("torch")
F = lazy_import("torch.nn.functional")

if TYPE_CHECKING:
    from .engine import FeatureStore, Sam2Engine


class Matcher(Protocol):
    """Distances (n, M) between query frames and bank members; lower is more similar."""

    name: str

    def distances(self, query: np.ndarray, bank_images: np.ndarray) -> np.ndarray: ...


def _resize(frames: np.ndarray, size: int):
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


@dataclass(frozen=True)
class WeightFreeMatcher:
    """``ssim`` or ``ncc`` on frames resized to 128 x 128; needs no model."""

    name: str

    def distances(self, query: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        fn = ssim_distance if self.name == "ssim" else ncc_distance
        return fn(query, bank_images)


class Sam2FeatureMatcher:
    """LPIPS-style distance on SAM2 encoder features drawn from ``store`` (query frames)."""

    name = "sam2"

    def __init__(self, engine: Sam2Engine, store: FeatureStore):
        self.engine, self.store = engine, store

    def distances(self, query: np.ndarray, bank_images: np.ndarray) -> np.ndarray:
        e = self.engine
        feats = e.member_features(bank_images, range(len(bank_images)))
        bank = e.descriptors(list(feats.values()))
        out = np.empty((len(query), len(bank_images)), np.float32)
        for idx, entries in self.store.batches():
            out[idx] = e.distances(e.descriptors(entries), bank)
        return out


def make_matcher(name: str, engine: Sam2Engine | None = None,
                 store: FeatureStore | None = None) -> Matcher:
    """The matcher called ``name`` (``sam2`` needs an engine and a feature store)."""
    check_choice(name, MATCHERS, "matcher")
    return Sam2FeatureMatcher(engine, store) if name == "sam2" else WeightFreeMatcher(name)


def best_members(distances: np.ndarray) -> np.ndarray:
    """Index of the closest member per query frame (ties: the lowest index)."""
    return np.argmin(distances, axis=1)


def transfer_masks(matches: np.ndarray, bank_masks: np.ndarray) -> np.ndarray:
    """Matcher-transfer baseline: each query frame takes its matched member's masks
    (``bank_masks`` (M, K, H, W) -> (n, K, H, W))."""
    return bank_masks[matches]
