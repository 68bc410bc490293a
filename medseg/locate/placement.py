"""In-plane placement: where the support slice's centre goes on a query frame, and at which
size (world position in a shared frame, the body's box, or a content search for views that
cut through the body)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..frames import FrameStack, resample_frame
from .body import body_box, fov_cuts_body
from .correspondence import Correspondence, counterpart
from .ncc import masked_ncc_shift
from .params import PLACEMENT, PlacementParams


class Placement(NamedTuple):
    """Where the support slice's centre goes relative to the query frame's centre (query
    pixels, rows and cols), at which isotropic size ratio, and how well it matched."""

    rows: float
    cols: float
    zoom: float = 1.0
    ncc: float | None = None


class Placed(NamedTuple):
    """A placement and how it was decided (for the report)."""

    shift: tuple[float, float]
    zoom: float
    how: dict


def place(support: np.ndarray, s_spacing, query: np.ndarray, q_spacing,
          zooms: tuple[float, ...] = (1.0,), p: PlacementParams = PLACEMENT) -> Placement:
    """The support slice placed where its content correlates best with the query frame's
    over all translations, at the best of ``zooms``."""
    sp_q = np.asarray(q_spacing, float)
    g = max(p.grid_mm, float(sp_q.max()))
    q_small = resample_frame(query, q_spacing, _size_mm(query.shape, q_spacing, g), (g, g))
    best = Placement(0.0, 0.0, 1.0, -np.inf)
    for z in zooms:
        s_small = resample_frame(support, s_spacing, _size_mm(support.shape, s_spacing, g / z),
                                 (g, g), zoom=z)
        dy, dx, score = masked_ncc_shift(q_small, s_small, p.min_overlap)
        if score > best.ncc:
            # centre of the support after the shift, relative to the query centre
            cy = dy + (s_small.shape[0] - 1) / 2 - (q_small.shape[0] - 1) / 2
            cx = dx + (s_small.shape[1] - 1) / 2 - (q_small.shape[1] - 1) / 2
            best = Placement(cy * g / sp_q[0], cx * g / sp_q[1], z, score)
    return best


def place_by_body(support: np.ndarray, s_spacing, query: np.ndarray, q_spacing,
                  p: PlacementParams = PLACEMENT) -> Placement | None:
    """The support slice scaled (isotropically, within the zoom range) and moved so its
    body's bounding box lies on the query body's; None without a body on either."""
    a, b = body_box(support, s_spacing), body_box(query, q_spacing)
    if a is None or b is None:
        return None
    zoom = float(np.clip(np.sqrt(np.prod(b[1]) / np.prod(a[1])), p.zoom_min, p.zoom_max))
    sq, ss = np.asarray(q_spacing, float), np.asarray(s_spacing, float)
    # the support centre is where its body centre lands after the zoom about the centre
    s_off = (a[0] - (np.array(support.shape) - 1) / 2) * ss * zoom / sq
    target = b[0] - (np.array(query.shape) - 1) / 2
    dy, dx = target - s_off
    return Placement(float(dy), float(dx), zoom)


def _size_mm(shape, spacing, g) -> tuple[int, int]:
    return tuple(max(2, int(round(n * s / g))) for n, s in zip(shape, spacing))


def placement_shift(support: FrameStack, query: FrameStack, f: int, corr: Correspondence | None,
                    placement: str, expected: np.ndarray | None = None,
                    p: PlacementParams = PLACEMENT) -> Placed:
    """Where support frame ``f`` goes on the query grid, and how that was decided.

    Args:
        support, query: the frame stacks.
        f: the support frame.
        corr: the slice correspondence (None: unknown).
        placement: ``auto``, ``world``, ``body``, ``search`` or ``centre``.
        expected: query frames where the structure is expected (a content search looks at
            several of them, not one).
    """
    i = counterpart(corr, f, len(query))
    if placement == "centre":
        return Placed((0.0, 0.0), 1.0, {"method": "centre", "query_frame": i})
    if corr is not None and corr.shared_frame and placement in ("auto", "world") \
            and f in corr.world_shift:
        return Placed(corr.world_shift[f], 1.0, {"method": "world", "query_frame": i})
    cut = fov_cuts_body(query) or fov_cuts_body(support)
    if placement in ("auto", "body") and not cut:
        found = place_by_body(support.frames[f], support.spacing[1:], query.frames[i],
                              query.spacing[1:], p)
        if found is not None:
            return Placed((found.rows, found.cols), found.zoom, {
                "method": "body", "query_frame": i, "zoom": round(found.zoom, 3),
                "shift_px": [round(found.rows, 1), round(found.cols, 1)]})
    if placement in ("auto", "search"):
        return _searched(support, query, f, i, placement, expected, p)
    return Placed((0.0, 0.0), 1.0, {"method": "centre", "query_frame": i})


def _searched(support: FrameStack, query: FrameStack, f: int, i: int, placement: str,
              expected: np.ndarray | None, p: PlacementParams) -> Placed:
    """The median placement of a content search over several query frames."""
    found = np.array([place(support.frames[f], support.spacing[1:], query.frames[j],
                            query.spacing[1:], p.zooms, p)
                      for j in _search_frames(i, expected, len(query), p.search_frames)])
    dy, dx, zoom, score = (float(v) for v in np.median(found, axis=0))
    if score >= p.min_ncc or placement == "search":
        return Placed((dy, dx), zoom, {"method": "search", "query_frame": i,
                                       "ncc": round(score, 3), "zoom": zoom,
                                       "shift_px": [round(dy, 1), round(dx, 1)]})
    return Placed((0.0, 0.0), 1.0, {"method": "centre", "query_frame": i,
                                    "note": f"content search unsure (ncc {score:.2f})"})


def _search_frames(i: int, expected: np.ndarray | None, n: int, count: int = 5) -> list[int]:
    """The counterpart frame and more spread over the expected extent (or around the
    counterpart): one badly corresponding frame cannot decide the placement."""
    idx = np.nonzero(expected)[0] if expected is not None and np.any(expected) else \
        np.arange(max(0, i - 2), min(n, i + 3))
    picks = np.round(np.linspace(idx.min(), idx.max(), count)).astype(int)
    return sorted({int(i), *(int(j) for j in picks)})
