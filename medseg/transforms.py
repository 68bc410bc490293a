"""medseg inside MONAI pipelines: a dictionary transform and MetaTensor <-> Volume.

    from monai.transforms import Compose, LoadImaged
    from medseg.transforms import SegmentFromSupportd

    pipeline = Compose([LoadImaged(keys="image", image_only=False),
                        SegmentFromSupportd(keys="image", support="s.nii.gz",
                                            support_label="s_label.nii.gz", labels=["liver"])])
    out = pipeline({"image": "q.nii.gz"})   # out["image_seg"]: the labelmap, same affine

MONAI tensors are channel-first with a RAS affine; medseg volumes are (z, y, x) with ITK's
LPS geometry. The conversion is exact (axes transposed, never resampled).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from ._lazy import lazy_import
from .api import Segmenter
from .io import Volume

monai_data = lazy_import("monai.data")
torch = lazy_import("torch")

_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

try:  # MONAI's base class when MONAI is there (it is a medseg dependency)
    from monai.transforms import MapTransform as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[assignment,misc]


def metatensor_to_volume(t: Any) -> Volume:
    """A channel-first MONAI MetaTensor (or array with ``.affine``) as a :class:`Volume`."""
    arr = np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"one channel expected, got {arr.shape[0]}")
        arr = arr[0]
    aff = _RAS_LPS @ np.asarray(t.affine, dtype=float)  # RAS -> LPS
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    return Volume(np.ascontiguousarray(arr.transpose(2, 1, 0)), tuple(spacing),
                  tuple(aff[:3, 3]), aff[:3, :3] / spacing, path=_source(t))


def volume_to_metatensor(vol: Volume, like: Any = None) -> Any:
    """A :class:`Volume` as a channel-first MetaTensor with the RAS affine MONAI uses."""
    aff = np.eye(4)
    aff[:3, :3] = vol.direction * np.asarray(vol.spacing)[None, :]
    aff[:3, 3] = vol.origin
    meta = {k: v for k, v in (getattr(like, "meta", {}) or {}).items()
            if k not in ("affine", "original_affine")}  # the new affine is the one given
    data = torch.from_numpy(np.ascontiguousarray(vol.array.transpose(2, 1, 0))[None])
    return monai_data.MetaTensor(data, affine=torch.as_tensor(_RAS_LPS @ aff), meta=meta)


def _source(t: Any) -> str | None:
    meta = getattr(t, "meta", None) or {}
    src = meta.get("filename_or_obj")
    return str(src) if src else None


class SegmentFromSupportd(_Base):  # type: ignore[misc,valid-type]
    """MONAI dictionary transform: ``data[key + suffix]`` = medseg's labelmap of ``data[key]``.

    ``data[key]`` is a MetaTensor (e.g. from ``LoadImaged``) or a path. ``segmenter``
    (a :class:`medseg.Segmenter`) keeps the model loaded across items; ``options`` are
    :class:`medseg.SegmentConfig` fields.
    """

    def __init__(self, keys: Hashable | Sequence[Hashable], support: Any, support_label: Any,
                 suffix: str = "_seg", segmenter: Any = None, allow_missing_keys: bool = False,
                 **options: Any):
        if _Base is not object:
            super().__init__(keys, allow_missing_keys)
        else:  # pragma: no cover
            self.keys = (keys,) if isinstance(keys, (str, bytes)) else tuple(keys)
        self.support, self.support_label = support, support_label
        self.suffix, self.options = suffix, options
        self.segmenter = segmenter or Segmenter()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key not in d:
                continue
            item = d[key]
            query = item if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") \
                else metatensor_to_volume(item)
            res = self.segmenter.segment(self.support, self.support_label, query,
                                         **dict(self.options))
            d[f"{key}{self.suffix}"] = volume_to_metatensor(res.labels, like=item)
        return d
