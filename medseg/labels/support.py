"""A support label on its image's grid, whatever file it came from.

Every form (label map, Slicer segmentation, DICOM-SEG, RTSTRUCT) becomes a
:class:`SupportLabel`: integer layers on the support image's grid, and per structure its
value, layer and what the file says about it. A label on a cropped grid that is an exact
sub-grid of the image is embedded; another grid is resampled only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError
from ..io import Volume, same_geometry
from ..io.checks import distinct_values
from .plan import SegmentInfo

sitk = lazy_import("SimpleITK")


SUBGRID_TOL = 1e-3  # voxels: how far a cropped grid's origin may sit from an image voxel


@dataclass
class SupportLabel:
    """Structures of a support label on the support image's grid."""

    layers: list[np.ndarray]  # (z, y, x) integer arrays
    segments: dict[int, SegmentInfo]  # medseg value -> what is known about the structure
    where: dict[int, tuple[int, int]]  # medseg value -> (layer, voxel value in that layer)
    path: str | None = None
    kind: str = "labelmap"
    notes: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[int]:
        return sorted(self.segments)

    def mask(self, value: int) -> np.ndarray:
        layer, v = self.where[value]
        return self.layers[layer] == v

    def describe(self) -> dict:
        return {"path": self.path, "kind": self.kind, "notes": self.notes,
                "segments": [{"value": v, "name": s.name} for v, s in sorted(self.segments.items())]}


def from_labelmap(label: Volume, image: Volume, resample: bool, name: str) -> SupportLabel:
    """An integer label volume (values become structures) on the image grid."""
    label, note = on_image_grid(label, image, resample, name)
    arr = _integer_array(label, name)
    values = [v for v in label_values(arr) if v != 0]
    if not values:
        raise InputError(f"{name} {label.path}: is empty (all zero); label the structure first")
    return SupportLabel([arr], {v: SegmentInfo(v) for v in values}, {v: (0, v) for v in values},
                        label.path, "labelmap", [note] if note else [])


def _integer_array(label: Volume, name: str) -> np.ndarray:
    arr = label.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(
                f"{name} {label.path}: holds non-integer values; a label map must hold integers "
                "(0 background, 1, 2, ... structures). Is this an image rather than a label?")
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        raise InputError(f"{name} {label.path}: unsupported voxel type {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"{name} {label.path}: holds negative values; labels must be >= 0")
    if np.issubdtype(arr.dtype, np.integer):
        return arr  # kept as stored (no copy): only ever compared with its values
    return arr.astype(np.uint8 if arr.dtype == bool else np.int64)


def label_values(arr: np.ndarray) -> list[int]:
    """The values present in a non-negative integer array, ascending."""
    return [int(v) for v in distinct_values(arr)]


def on_image_grid(label: Volume, image: Volume, resample: bool, name: str
                  ) -> tuple[Volume, str | None]:
    """``label`` on ``image``'s grid: as is, embedded (exact sub-grid), or resampled."""
    diffs = same_geometry(image, label)
    if not diffs:
        return label, None
    label = align_axes(label, image)
    if not same_geometry(image, label):
        return label, "stored with reversed axes; reordered (exact)"
    offset = subgrid_offset(label, image)
    if offset is not None:
        return embed(label, image, offset), f"cropped grid embedded at voxel offset {offset}"
    if not resample:
        raise InputError(
            f"{name} {label.path} does not match its image {image.path}: " + "; ".join(diffs)
            + " (image first). Fix the files or pass resample_label to resample the label onto "
            "the image grid (nearest neighbour)", option="resample_label")
    arr = _integer_array(label, name)
    src = label.with_array(arr.astype(np.uint32 if arr.max() < 2**32 else np.int64))
    res = sitk.Resample(src.to_sitk(), image.to_sitk(), sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0)
    return Volume.from_sitk(res, path=label.path), "resampled onto the image grid (nearest)"


def align_axes(label: Volume, image: Volume) -> Volume:
    """``label`` with each index axis that runs opposite to the image's reversed (its voxels
    and their positions unchanged; an exact reordering)."""
    arr, origin, direction = label.array, np.asarray(label.origin, float), label.direction.copy()
    for a in range(3):  # ITK axis a is array axis 2 - a
        if float(direction[:, a] @ image.direction[:, a]) < -0.999:
            n = label.shape[2 - a]
            origin = origin + direction[:, a] * label.spacing[a] * (n - 1)
            direction[:, a] = -direction[:, a]
            arr = np.flip(arr, axis=2 - a)
    if arr is label.array:
        return label
    return Volume(np.ascontiguousarray(arr), label.spacing, tuple(origin), direction,
                  path=label.path, meta=dict(label.meta))


def subgrid_offset(label: Volume, image: Volume) -> tuple[int, int, int] | None:
    """(x, y, z) voxel offset if ``label``'s voxels coincide with ``image``'s voxels."""
    if not (np.allclose(label.spacing, image.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(label.direction, image.direction, atol=1e-5)):
        return None
    d = np.asarray(label.origin) - np.asarray(image.origin)
    idx = (image.direction.T @ d) / np.asarray(image.spacing)
    if not np.allclose(idx, np.round(idx), atol=SUBGRID_TOL):
        return None
    return tuple(int(v) for v in np.round(idx))  # type: ignore[return-value]


def embed(label: Volume, image: Volume, offset: tuple[int, int, int]) -> Volume:
    """Paste a sub-grid label into a zero volume on the image grid (parts outside dropped)."""
    out = np.zeros(image.shape, label.array.dtype)
    src, dst = [], []
    for ax in range(3):  # array axes (z, y, x) <-> offset (x, y, z)
        o, n, size = offset[2 - ax], label.shape[ax], image.shape[ax]
        a, b = max(0, o), min(size, o + n)
        if a >= b:
            return image.with_array(out)
        dst.append(slice(a, b))
        src.append(slice(a - o, b - o))
    out[tuple(dst)] = label.array[tuple(src)]
    return Volume(out, image.spacing, image.origin, image.direction.copy(), path=label.path)
