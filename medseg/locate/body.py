"""The body on a frame: its mask, its box, whether a view cuts through it, and body-relative
frame descriptors for slice correspondence."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._lazy import lazy_import
from ..frames import FrameStack, resample_frame
from .params import BODY, BodyParams

ndimage = lazy_import("scipy.ndimage")


def body_mask(frame: np.ndarray, spacing, p: BodyParams = BODY) -> np.ndarray:
    """The body on a frame: the largest region above the background once thin links (the
    table, blankets) are cut, holes filled; arms and the table are left out."""
    fg = frame > p.threshold
    r = max(1, int(round(p.open_mm / float(min(spacing)))))
    opened = ndimage.binary_opening(fg, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    lab, n = ndimage.label(opened)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(lab == int(np.argmax(sizes)))


class Box(NamedTuple):
    """A bounding box: centre in pixels (rows, cols) and size in pixels (rows, cols)."""

    centre: np.ndarray
    size_px: np.ndarray


def bounding_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a 2D mask (None when empty)."""
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return Box(np.array([(ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2]),
               np.array([ys.max() - ys.min() + 1, xs.max() - xs.min() + 1]))


def body_box(frame: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre in pixels (rows, cols), size in mm) of the body's bounding box, or None."""
    box = bounding_box(body_mask(frame, spacing))
    return None if box is None else (box.centre, box.size_px * np.asarray(spacing))


def fov_cuts_body(stack: FrameStack, p: BodyParams = BODY) -> bool:
    """The field of view cuts through the body (the body reaches an edge of the frame
    along more than a fifth of it) on most frames: a cropped view, whose frames cannot be
    compared as whole pictures."""
    body = stack.frames > p.threshold
    edges = [body[:, :, 0], body[:, :, -1], body[:, 0, :], body[:, -1, :]]
    cut = np.any([e.mean(axis=1) > p.edge_fraction for e in edges], axis=0)
    return bool(cut.mean() > p.cut_frames)


def frame_descriptors(stack: FrameStack, p: BodyParams = BODY) -> np.ndarray:
    """(n, canvas * canvas): every frame's body (arms and table left out) scaled to fill
    85 % of the canvas and centred, zero-mean and unit-norm. Scaling each body to one size
    compares anatomy relative to the body outline, so patients of different size still
    match slice for slice. Frames are first brought to ``p.grid_mm`` pixels (cheap to work
    on and enough for a 64-pixel canvas)."""
    sp = np.asarray(stack.spacing[1:], float)
    g = max(p.grid_mm, float(sp.min()))
    shape = tuple(max(8, int(round(n * s / g))) for n, s in zip(stack.frames.shape[1:], sp))
    out = np.zeros((len(stack), p.canvas * p.canvas), np.float32)
    for f, frame in enumerate(stack.frames):
        small = resample_frame(frame, tuple(sp), shape, (g, g), order=1)
        body = body_mask(small, (g, g), p)
        box = bounding_box(body)
        if box is not None:
            centre, extent = box.centre, g * max(box.size_px)
        else:
            centre, extent = (np.array(shape) - 1) / 2, g * max(shape)
        px = extent / (p.fill * p.canvas)  # mm per canvas pixel
        shift = ((np.array(shape) - 1) / 2 - centre) * g / px
        out[f] = resample_frame(np.where(body, small, 0.0), (g, g), (p.canvas, p.canvas),
                                (px, px), order=1, shift=tuple(shift)).ravel()
    out -= out.mean(axis=1, keepdims=True)
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-6)
