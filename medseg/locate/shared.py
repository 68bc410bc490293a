"""A shared frame of reference: scans that overlap in world space and agree there.

Then world position is the slice correspondence (:func:`world_correspondence`) and the
in-plane placement (:func:`world_shifts`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._lazy import lazy_import
from ..frames import FrameStack
from ..io import Volume
from .ncc import ncc
from .params import CORRESPONDENCE, CorrespondenceParams

sitk = lazy_import("SimpleITK")


def world_box(v: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned world (LPS mm) box of a volume's voxel centres: (low, high)."""
    corners = np.array([[i, j, k] for i in (0, v.shape[2] - 1) for j in (0, v.shape[1] - 1)
                        for k in (0, v.shape[0] - 1)], float)
    w = v.index_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def world_overlap(a: Volume, b: Volume) -> float:
    """The world boxes' intersection as a fraction of the smaller box."""
    (qa, qb), (sa, sb) = world_box(a), world_box(b)
    inter = np.clip(np.minimum(qb, sb) - np.maximum(qa, sa), 0, None)
    size_a = float(np.prod(np.maximum(qb - qa, 1e-6)))
    size_b = float(np.prod(np.maximum(sb - sa, 1e-6)))
    return float(np.prod(inter)) / min(size_a, size_b)


def shared_frame(query: Volume, support: Volume, q_frames: FrameStack, s_frames: FrameStack,
                 p: CorrespondenceParams = CORRESPONDENCE) -> tuple[bool, dict]:
    """Do the scans share a frame of reference (overlap in world, images agree there)?"""
    overlap = world_overlap(query, support)
    ev: dict = {"world_overlap": round(overlap, 3)}
    if overlap < p.min_world_overlap:
        return False, ev
    grid = _coarse_grid(query, p.coarse_mm)  # the query's space, coarse: cheap and enough
    q_norm = query.with_array(q_frames.to_volume_array(q_frames.frames).astype(np.float32))
    s_norm = support.with_array(s_frames.to_volume_array(s_frames.frames).astype(np.float32))
    qa, sa = (sitk.GetArrayFromImage(sitk.Resample(v.to_sitk(), grid, sitk.Transform(),
                                                   sitk.sitkLinear, -1.0, sitk.sitkFloat32))
              for v in (q_norm, s_norm))
    shifts = range(-p.shift_voxels, p.shift_voxels + 1)
    curve = {k: _shifted_ncc(qa, sa, k) for k in shifts}  # along the slice axis
    ev["image_ncc"] = None if curve[0] is None else round(curve[0], 3)
    ev["ncc_by_shift_voxels"] = {k: None if v is None else round(v, 3) for k, v in curve.items()}
    best = max((v, k) for k, v in curve.items() if v is not None) if any(
        v is not None for v in curve.values()) else (None, None)
    # shared: the images agree where they are, and better than shifted along the body
    return bool(curve[0] is not None and curve[0] >= p.shared_ncc and best[1] == 0), ev


def _shifted_ncc(qa: np.ndarray, sa: np.ndarray, k: int) -> float | None:
    """Correlation of the two coarse volumes with ``sa`` moved ``k`` voxels along axis 0."""
    if k > 0:
        qa, sa = qa[k:], sa[:-k]
    elif k < 0:
        qa, sa = qa[:k], sa[-k:]
    inside = (qa >= 0) & (sa >= 0)
    return ncc(qa[inside], sa[inside]) if inside.sum() > 100 else None


def _coarse_grid(vol: Volume, mm: float = 4.0):
    """A SimpleITK reference grid over ``vol``'s extent with pixels of at least ``mm``."""
    ref = vol.to_sitk()
    spacing = [max(s, mm) for s in vol.spacing]
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(ref.GetSize(), vol.spacing, spacing)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(ref.GetDirection())
    # the same first voxel corner, so the coarse grid covers the same box
    corner = np.asarray(vol.origin) - vol.direction @ (np.asarray(vol.spacing) / 2)
    grid.SetOrigin(tuple(corner + vol.direction @ (np.asarray(spacing) / 2)))
    return grid


def world_correspondence(query: Volume, support: Volume, q_frames: FrameStack,
                         s_frames: FrameStack) -> np.ndarray:
    """Support frame position of every query frame's centre, through world coordinates."""
    n = len(q_frames)
    out = np.full(n, np.nan)
    qi = _frame_centres(q_frames, query)
    s_world_to_frame = _frame_axis(s_frames, support)
    for f in range(n):
        out[f] = s_world_to_frame(qi[f])
    m = len(s_frames)
    out[(out < -0.5) | (out > m - 0.5)] = np.nan
    return out


def _index_views(stack: FrameStack, vol: Volume) -> list[np.ndarray]:
    """The volume's z, y and x voxel indices seen in the stack's frames layout."""
    shape = vol.shape
    return [stack.view_of(np.broadcast_to(np.arange(n).reshape([-1 if a == k else 1
                                                                 for a in range(3)]), shape))
            for k, n in enumerate(shape)]


def _frame_centres(stack: FrameStack, vol: Volume) -> np.ndarray:
    """World position (LPS mm) of the centre of every frame."""
    views = _index_views(stack, vol)
    centre = (views[0].shape[1] - 1) / 2, (views[0].shape[2] - 1) / 2
    r0, c0 = int(np.floor(centre[0])), int(np.floor(centre[1]))
    zyx = np.array([[float(v[f, r0, c0]) for v in views] for f in range(len(stack))])
    return vol.index_to_world(zyx[:, ::-1])


def _frame_axis(stack: FrameStack, vol: Volume) -> Callable[[np.ndarray], float]:
    """world point -> continuous frame index along the stack."""
    centres = _frame_centres(stack, vol)
    step = centres[1] - centres[0] if len(centres) > 1 else np.zeros(3)
    norm = float(step @ step)

    def index(point: np.ndarray) -> float:
        return float((np.asarray(point) - centres[0]) @ step / norm) if norm else 0.0
    return index


def world_shifts(query: Volume, support: Volume, q_frames: FrameStack, s_frames: FrameStack,
                 pos: np.ndarray) -> dict[int, tuple[float, float]]:
    """For every support frame: its centre on the nearest query frame, in query pixels
    (rows, cols) from that frame's centre, through world coordinates."""
    qc, sc = _frame_centres(q_frames, query), _frame_centres(s_frames, support)
    rows, cols = _pixel_steps(q_frames, query)
    out = {}
    for f in range(len(s_frames)):
        if np.isnan(pos).all():
            break
        i = int(np.nanargmin(np.abs(pos - f)))
        d = sc[f] - qc[i]
        out[f] = (float(d @ rows / (rows @ rows)), float(d @ cols / (cols @ cols)))
    return out


def _pixel_steps(stack: FrameStack, vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """World displacement of one frame pixel down a column (rows) and along a row (cols)."""
    views = _index_views(stack, vol)

    def world(r: int, c: int) -> np.ndarray:
        return vol.index_to_world(np.array([float(v[0, r, c]) for v in views][::-1]))

    r1 = 1 if views[0].shape[1] > 1 else 0
    c1 = 1 if views[0].shape[2] > 1 else 0
    return world(r1, 0) - world(0, 0), world(0, c1) - world(0, 0)
