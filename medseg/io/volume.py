"""A 3D image with its exact geometry (SimpleITK is the single geometry authority).

A :class:`Volume` holds the voxel array in ``(z, y, x)`` order (SimpleITK's array order)
and the geometry in ITK's ``(x, y, z)`` convention: ``spacing``, ``origin`` and a 3x3
``direction`` whose columns are the world (LPS) directions of the index axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .._lazy import lazy_import
from ..errors import InputError

sitk = lazy_import("SimpleITK")


@dataclass(eq=False)
class Volume:
    """A 3D image: ``array`` is (z, y, x); geometry follows ITK (x, y, z) conventions.

    Two volumes are equal when their voxels are and their geometry agrees to 1e-4
    (what NIfTI keeps of it); paths and metadata aside.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if self.array.ndim != 3:
            raise InputError(f"a Volume needs a 3D array, got shape {self.array.shape}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Volume):
            return NotImplemented
        return not same_geometry(self, other) and np.array_equal(self.array, other.array)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Volume(shape(z,y,x)={self.shape}, dtype={self.array.dtype}, spacing="
                f"{tuple(round(s, 4) for s in self.spacing)}, origin="
                f"{tuple(round(o, 3) for o in self.origin)}, path={self.path!r})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array-axis order, as metrics need it."""
        return self.spacing[::-1]  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, **meta: Any) -> Volume:
        """Same geometry, new voxels (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from {self.array.shape}")
        return replace(self, array=array, meta={**self.meta, **meta})

    def geometry(self) -> dict[str, Any]:
        """Geometry as plain lists (for reports and error messages)."""
        return {
            "size_xyz": list(self.array.shape[::-1]),
            "spacing": [round(s, 6) for s in self.spacing],
            "origin": [round(o, 4) for o in self.origin],
            "direction": np.round(self.direction, 6).ravel().tolist(),
        }

    def to_sitk(self):
        """A SimpleITK image with this geometry."""

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, img, path: str | None = None, **meta: Any) -> Volume:
        """Wrap a 3D SimpleITK image."""

        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.array(img.GetDirection()).reshape(3, 3),
            path=path,
            meta=meta,
        )

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) index -> world (LPS mm)."""
        ijk = np.asarray(ijk, dtype=float)
        return np.asarray(self.origin) + (self.direction @ (ijk * np.asarray(self.spacing)).T).T


def same_geometry(a: Volume, b: Volume, tol: float = 1e-4) -> list[str]:
    """Differences in size/spacing/origin/direction between two volumes (empty if none)."""
    diffs = []
    if a.shape != b.shape:
        diffs.append(f"size {list(a.shape[::-1])} vs {list(b.shape[::-1])}")
    if not np.allclose(a.spacing, b.spacing, rtol=tol, atol=tol):
        diffs.append(f"spacing {np.round(a.spacing, 5).tolist()} vs {np.round(b.spacing, 5).tolist()}")
    if not np.allclose(a.origin, b.origin, atol=max(tol, 1e-3 * min(a.spacing))):
        diffs.append(f"origin {np.round(a.origin, 3).tolist()} vs {np.round(b.origin, 3).tolist()}")
    if not np.allclose(a.direction, b.direction, atol=tol):
        diffs.append(
            f"direction {np.round(a.direction, 4).ravel().tolist()} vs "
            f"{np.round(b.direction, 4).ravel().tolist()}"
        )
    return diffs
