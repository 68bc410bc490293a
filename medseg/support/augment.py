"""The augmentation bank: one labelled support slice expanded into many (image, mask) pairs.

Member 0 is always the original slice. Every other member applies, with its own seed:

* an affine transform (rotation, isotropic scale, shear, translation) to image **and**
  mask together (linear interpolation for the image, nearest neighbour for the mask);
* intensity transforms to the image only: brightness/contrast, gamma, Gaussian noise.

Members are reproducible from ``(seed, index)`` alone and record the exact parameters
applied (albumentations' ``save_applied_params``), including the 2x3 affine matrix. Every
bank carries a content key (a hash of its members' images and masks): caches of banks and
of their encodings are keyed by it, never by object identity.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from .._lazy import lazy_import
from ..config import BankConfig

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
A = lazy_import("albumentations")
cv2 = lazy_import("cv2", install="pip install opencv-python-headless")


@dataclass
class Bank:
    """Augmented support members: ``images`` (M, H, W) in [0, 1], ``masks`` (M, K, H, W) bool,
    one channel per structure (structures may overlap). ``key`` identifies the content."""

    images: np.ndarray
    masks: np.ndarray
    params: list[dict] = field(default_factory=list)
    source_slices: list[int] = field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = content_key(self.images, self.masks)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @staticmethod
    def concat(banks: list[Bank]) -> Bank:
        """The members of several banks as one (keys combined, nothing rehashed)."""
        if len(banks) == 1:
            return banks[0]
        return Bank(
            np.concatenate([b.images for b in banks]),
            np.concatenate([b.masks for b in banks]),
            [p for b in banks for p in b.params],
            [s for b in banks for s in b.source_slices],
            hashlib.blake2b("+".join(b.key for b in banks).encode(), digest_size=16).hexdigest(),
        )


def content_key(*arrays: np.ndarray) -> str:
    """A hash of arrays' shapes, types and bytes: equal content, equal key."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.view(np.uint8).ravel() if a.dtype != bool else np.packbits(a).ravel())
    return h.hexdigest()


def _pipeline(cfg: BankConfig, seed: int):
    return A.Compose(
        [
            A.Affine(
                rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                scale=cfg.scale,
                shear=(-cfg.shear_deg, cfg.shear_deg),
                translate_percent=(-cfg.translate, cfg.translate),
                keep_ratio=True,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0.0,
                fill_mask=0,
                p=cfg.p_affine,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=cfg.p_intensity
            ),
            A.RandomGamma(
                gamma_limit=(cfg.gamma[0] * 100, cfg.gamma[1] * 100), p=cfg.p_intensity
            ),
            A.GaussNoise(std_range=cfg.noise_std, p=cfg.p_intensity / 2),
        ],
        seed=seed,
        save_applied_params=True,
    )


def _clean_params(applied: list) -> list[dict]:
    out = []
    for name, params in applied:
        keep = {}
        for k, v in params.items():
            if k in ("shape", "bbox_matrix", "output_shape", "noise_map"):
                continue
            if isinstance(v, np.ndarray):
                v = np.round(v, 6).tolist()
            elif isinstance(v, (np.floating, float)):
                v = round(float(v), 6)
            elif isinstance(v, dict):
                v = {kk: round(float(vv), 6) if isinstance(vv, (float, np.floating)) else vv
                     for kk, vv in v.items()}
            keep[k] = v
        out.append({"transform": name, **keep})
    return out


def build_bank(image: np.ndarray, masks: np.ndarray, cfg: BankConfig | None = None,
               source_slice: int = -1) -> Bank:
    """Expand one slice (image (H, W), masks (K, H, W) bool) into ``cfg.size + 1`` members."""
    cfg = cfg or BankConfig()
    if masks.ndim != 3 or image.shape != masks.shape[1:] or image.ndim != 2:
        raise ValueError(f"image {image.shape} and masks {masks.shape} must be (H, W), (K, H, W)")
    img = np.ascontiguousarray(image, dtype=np.float32)
    msk = np.ascontiguousarray(np.moveaxis(masks, 0, -1), dtype=np.uint8)  # (H, W, K)
    images, out = [img], [masks.astype(bool)]
    params: list[dict] = [{"member": 0, "identity": True, "source_slice": source_slice}]
    for i in range(1, cfg.size + 1):
        res = _pipeline(cfg, seed=cfg.seed * 100_003 + i)(image=img, mask=msk)
        images.append(np.clip(res["image"], 0.0, 1.0).astype(np.float32))
        m = res["mask"].reshape(*img.shape, -1)  # albumentations drops a 1-channel axis
        out.append(np.moveaxis(m, -1, 0).astype(bool))
        params.append({"member": i, "seed": cfg.seed * 100_003 + i, "source_slice": source_slice,
                       "applied": _clean_params(res["applied_transforms"])})
    return Bank(np.stack(images), np.stack(out), params, [source_slice] * len(images))
