"""The named, documented parameters of locating a structure (one frozen object per step).

Where each value was set: on the first seven public example cases (``medseg.data.CASES``:
``ct-liver-spleen``, ``ct-to-mr-liver``, ``mr-brain-tumour``, ``ct-lung-tumour``,
``ct-chest-lungs``, ``ct-chest-lungs-2``, ``mr-head``), by looking at their similarity
matrices and placements; the cases added later (``data.HELD_OUT``) were not used to set
any of them, and the quality benchmark reports them apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BodyParams:
    """Finding the body on a normalised frame (intensities in [0, 1])."""

    threshold: float = 0.05  # above the background floor (air, outside the window)
    open_mm: float = 3.0  # opening that cuts thin links (table, blankets) before labelling
    edge_fraction: float = 0.2  # the body touches an edge along more than this of it ...
    cut_frames: float = 0.5  # ... on more than this fraction of frames: a cropped view
    fill: float = 0.85  # descriptors: the body's box fills this much of the canvas
    canvas: int = 64  # descriptors: pixels per side
    grid_mm: float = 3.0  # descriptors: frames brought to this pixel size first


@dataclass(frozen=True)
class CorrespondenceParams:
    """Relating query slices to support slices."""

    shared_ncc: float = 0.7  # image agreement in the overlap above which a frame is shared
    min_world_overlap: float = 0.3  # of the smaller scan, in world space, for a shared frame
    coarse_mm: float = 4.0  # the shared-frame comparison's grid
    shift_voxels: int = 3  # shared only if the images agree best unshifted within +-this
    slope_min: float = 0.8  # support_mm = slope * query_mm + offset: patients differ in size
    slope_max: float = 1.25
    slopes: int = 10  # slopes tried between min and max
    slope_prior: float = 0.1  # per unit of |log slope|: a short slab leaves the slope loose
    offset_step: float = 0.25  # offsets tried, in support slices
    min_line: float = 0.5  # the line must run through this fraction of the shorter scan
    min_correspondence: float = 0.5  # mean similarity on the line below which it is not used
    # (scans that look this unalike, e.g. CT against MR (0.44), are not aligned slice by
    # slice; the chest cases score 0.57 and 0.59)
    search_grid_mm: float = 4.0  # views cutting through the body: frames compared at this
    search_size: int = 64  # ... pixel size, at most this many pixels per side,
    search_overlap: float = 0.5  # ... over translations overlapping this much of a frame


@dataclass(frozen=True)
class PresenceParams:
    """Where a structure is expected in the query."""

    margin: float = 0.5  # support slices beyond the structure's first and last still counted


@dataclass(frozen=True)
class PlacementParams:
    """Where the support slice goes in-plane."""

    zooms: tuple[float, ...] = (0.85, 0.92, 1.0, 1.08, 1.17)  # sizes a content search tries
    zoom_min: float = 0.8  # body-box placement: the size ratio is kept within these
    zoom_max: float = 1.25
    grid_mm: float = 2.0  # content search on frames of at least this pixel size
    min_overlap: float = 0.3  # ... over translations overlapping this much of the smaller
    min_ncc: float = 0.3  # a content search below this correlation falls back to centring
    search_frames: int = 5  # query frames a content search looks at (median placement)


BODY = BodyParams()
CORRESPONDENCE = CorrespondenceParams()
PRESENCE = PresenceParams()
PLACEMENT = PlacementParams()
