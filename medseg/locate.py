"""Where the structure is: slice correspondence, presence, in-plane placement.

A user has one labelled support scan and an unlabelled query. Before anything is copied
or propagated, medseg relates the two scans:

* **shared frame of reference** -- the scans overlap in world space and their images
  agree there (normalised correlation of the support resampled onto the query grid);
  then world position is the correspondence and the placement;
* **slice correspondence** -- otherwise every query frame is compared with every support
  frame (each body scaled to one size and centred, normalised correlation)
  and a line ``support_mm = slope * query_mm + offset`` (slope 0.8-1.25: patients differ
  in size, not in anatomy order) is fitted to the similarity (exhaustive search);
* **extent and presence** -- the support structure's first and last slice, mapped through
  the correspondence, give the query frames where the structure is expected;
* **in-plane placement** -- the support slice is placed on the query frame where its
  content matches best (masked normalised cross-correlation over all translations, by
  FFT), instead of centre on centre, so a query with a small field of view still gets
  the structure where it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .frames import FrameStack, resample_frame
from .io import Volume

CANVAS = 64  # pixels of the frames compared for correspondence
SLOPES = np.linspace(0.8, 1.25, 10)
SLOPE_PRIOR = 0.1  # per unit of |log slope|: a short slab leaves the slope loose; prefer 1
SHARED_NCC = 0.7  # image agreement in the overlap above which the frame is taken as shared
MIN_OVERLAP = 0.3  # of the smaller scan, in world space, for a shared frame
MIN_CORRESPONDENCE = 0.5  # line-fit similarity below which the correspondence is not used
# (scans that look this unalike, e.g. CT against MR, are not aligned slice by slice)


@dataclass
class Correspondence:
    """Query frame -> support frame position (float index; NaN where outside the support)."""

    support_pos: np.ndarray
    method: str  # "world", "content" or "none"
    score: float
    slope: float = 1.0
    offset_mm: float = 0.0
    shared_frame: bool = False
    evidence: dict = field(default_factory=dict)
    world_shift: dict = field(default_factory=dict)  # support frame -> in-plane (rows, cols)

    @property
    def usable(self) -> bool:
        return self.method != "none"

    def describe(self) -> dict:
        d = asdict(self)
        d["support_pos"] = [None if np.isnan(v) else round(float(v), 2) for v in self.support_pos]
        d.pop("world_shift")
        return d


# --- shared frame of reference --------------------------------------------------------------


def world_box(v: Volume) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array([[i, j, k] for i in (0, v.shape[2] - 1) for j in (0, v.shape[1] - 1)
                        for k in (0, v.shape[0] - 1)], float)
    w = v.index_to_world(corners)
    return w.min(axis=0), w.max(axis=0)


def shared_frame(query: Volume, support: Volume, q_frames: FrameStack, s_frames: FrameStack
                 ) -> tuple[bool, dict]:
    """Do the scans share a frame of reference (overlap in world, images agree there)?"""
    import SimpleITK as sitk

    (qa, qb), (sa, sb) = world_box(query), world_box(support)
    inter = np.clip(np.minimum(qb, sb) - np.maximum(qa, sa), 0, None)
    vol = lambda a, b: float(np.prod(np.maximum(b - a, 1e-6)))  # noqa: E731
    overlap = float(np.prod(inter)) / min(vol(qa, qb), vol(sa, sb))
    ev: dict = {"world_overlap": round(overlap, 3)}
    if overlap < MIN_OVERLAP:
        return False, ev
    grid = _coarse_grid(query)  # the query's space at about 4 mm: cheap and enough
    q_norm = query.with_array(q_frames.to_volume_array(q_frames.frames).astype(np.float32))
    s_norm = support.with_array(s_frames.to_volume_array(s_frames.frames).astype(np.float32))
    qa, sa = (sitk.GetArrayFromImage(sitk.Resample(v.to_sitk(), grid, sitk.Transform(),
                                                   sitk.sitkLinear, -1.0, sitk.sitkFloat32))
              for v in (q_norm, s_norm))
    curve = {k: _shifted_ncc(qa, sa, k) for k in range(-3, 4)}  # along the slice axis
    ev["image_ncc"] = None if curve[0] is None else round(curve[0], 3)
    ev["ncc_by_shift_voxels"] = {k: None if v is None else round(v, 3) for k, v in curve.items()}
    best = max((v, k) for k, v in curve.items() if v is not None) if any(
        v is not None for v in curve.values()) else (None, None)
    # shared: the images agree where they are, and better than shifted along the body
    return bool(curve[0] is not None and curve[0] >= SHARED_NCC and best[1] == 0), ev


def _shifted_ncc(qa: np.ndarray, sa: np.ndarray, k: int) -> float | None:
    """Correlation of the two coarse volumes with ``sa`` moved ``k`` voxels along axis 0."""
    if k > 0:
        qa, sa = qa[k:], sa[:-k]
    elif k < 0:
        qa, sa = qa[:k], sa[-k:]
    inside = (qa >= 0) & (sa >= 0)
    return _ncc(qa[inside], sa[inside]) if inside.sum() > 100 else None


def _coarse_grid(vol: Volume, mm: float = 4.0):
    """A SimpleITK reference grid over ``vol``'s extent with pixels of at least ``mm``."""
    import SimpleITK as sitk

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


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 0.0


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


def _frame_centres(stack: FrameStack, vol: Volume) -> np.ndarray:
    """World position (LPS mm) of the centre of every frame."""
    shape = vol.shape
    views = [stack.view_of(np.broadcast_to(np.arange(n).reshape([-1 if a == k else 1
                                                                  for a in range(3)]), shape))
             for k, n in enumerate(shape)]  # frames layout of the z, y, x voxel indices
    centre = (views[0].shape[1] - 1) / 2, (views[0].shape[2] - 1) / 2
    r0, c0 = int(np.floor(centre[0])), int(np.floor(centre[1]))
    zyx = np.array([[float(v[f, r0, c0]) for v in views] for f in range(len(stack))])
    return vol.index_to_world(zyx[:, ::-1])


def _frame_axis(stack: FrameStack, vol: Volume):
    """world point -> continuous frame index along the stack."""
    centres = _frame_centres(stack, vol)
    if len(centres) < 2:
        return lambda p: 0.0
    step = centres[1] - centres[0]
    norm = float(step @ step)
    return lambda p: float((np.asarray(p) - centres[0]) @ step / norm)


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
    shape = vol.shape
    views = [stack.view_of(np.broadcast_to(np.arange(n).reshape([-1 if a == k else 1
                                                                  for a in range(3)]), shape))
             for k, n in enumerate(shape)]

    def world(r: int, c: int) -> np.ndarray:
        return vol.index_to_world(np.array([float(v[0, r, c]) for v in views][::-1]))

    r1 = 1 if views[0].shape[1] > 1 else 0
    c1 = 1 if views[0].shape[2] > 1 else 0
    return world(r1, 0) - world(0, 0), world(0, c1) - world(0, 0)


# --- slice correspondence by content ----------------------------------------------------------


def body_mask(frame: np.ndarray, spacing) -> np.ndarray:
    """The body on a frame: the largest region above the background once thin links (the
    table, blankets) are cut, holes filled; arms and the table are left out."""
    from scipy import ndimage

    fg = frame > 0.05
    r = max(1, int(round(3.0 / float(min(spacing)))))  # open by about 3 mm
    opened = ndimage.binary_opening(fg, structure=np.ones((2 * r + 1, 2 * r + 1), bool))
    lab, n = ndimage.label(opened)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(lab == int(np.argmax(sizes)))


def frame_descriptors(stack: FrameStack, grid_mm: float = 3.0) -> np.ndarray:
    """(n, CANVAS * CANVAS): every frame's body (arms and table left out) scaled to fill
    85 % of the canvas and centred, zero-mean and unit-norm. Scaling each body to one size
    compares anatomy relative to the body outline, so patients of different size still
    match slice for slice. Frames are first brought to ``grid_mm`` pixels (cheap to work on
    and enough for a 64-pixel canvas)."""
    sp = np.asarray(stack.spacing[1:], float)
    g = max(grid_mm, float(sp.min()))
    shape = tuple(max(8, int(round(n * p / g))) for n, p in zip(stack.frames.shape[1:], sp))
    out = np.zeros((len(stack), CANVAS * CANVAS), np.float32)
    for f, frame in enumerate(stack.frames):
        small = resample_frame(frame, tuple(sp), shape, (g, g), order=1)
        body = body_mask(small, (g, g))
        if body.any():
            ys, xs = np.nonzero(body)
            centre = np.array([(ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2])
            extent = g * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        else:
            centre, extent = (np.array(shape) - 1) / 2, g * max(shape)
        px = extent / (0.85 * CANVAS)  # mm per canvas pixel
        shift = ((np.array(shape) - 1) / 2 - centre) * g / px
        out[f] = resample_frame(np.where(body, small, 0.0), (g, g), (CANVAS, CANVAS), (px, px),
                                order=1, shift=tuple(shift)).ravel()
    out -= out.mean(axis=1, keepdims=True)
    return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-6)


def fov_cuts_body(stack: FrameStack) -> bool:
    """The field of view cuts through the body (the body reaches an edge of the frame
    along more than a fifth of it) on most frames: a cropped view, whose frames cannot be
    compared as whole pictures."""
    body = stack.frames > 0.05
    edges = [body[:, :, 0], body[:, :, -1], body[:, 0, :], body[:, -1, :]]
    cut = np.any([e.mean(axis=1) > 0.2 for e in edges], axis=0)
    return bool(cut.mean() > 0.5)


def shift_similarity(q_frames: FrameStack, s_frames: FrameStack, grid_mm: float = 4.0,
                     size: int = 64) -> np.ndarray:
    """(n, m): best normalised correlation of each query frame with each support frame over
    all translations (at ``grid_mm`` pixels), for views that cut through the body."""
    def small(stack: FrameStack) -> np.ndarray:
        sp = stack.spacing[1:]
        shape = tuple(min(size, max(4, int(round(n * p / grid_mm))))
                      for n, p in zip(stack.frames.shape[1:], sp))
        return np.stack([resample_frame(f, sp, shape, (grid_mm, grid_mm)) for f in stack.frames])

    q, s = small(q_frames), small(s_frames)
    return np.stack([masked_ncc_map(s, qi, min_overlap=0.5).reshape(len(s), -1).max(axis=1)
                     for qi in q])


def content_correspondence(q_frames: FrameStack, s_frames: FrameStack
                           ) -> tuple[np.ndarray, float, float, float, np.ndarray]:
    """Best line ``support_mm = a * query_mm + b`` through the frame similarity matrix.

    Returns (support position per query frame, a, b, mean similarity on the line, S)."""
    if fov_cuts_body(q_frames) or fov_cuts_body(s_frames):
        sim = shift_similarity(q_frames, s_frames)
    else:
        sim = frame_descriptors(q_frames) @ frame_descriptors(s_frames).T  # (n, m)
    n, m = sim.shape
    dq, ds = q_frames.spacing[0], s_frames.spacing[0]
    zq = np.arange(n) * dq
    need = max(2, int(0.5 * min(n, m * ds / dq)))
    best = (-np.inf, 1.0, 0.0)
    for a in SLOPES:
        lo, hi = -a * zq[-1] - 0.5 * ds, (m - 0.5) * ds
        for b in np.arange(lo, hi + ds / 4, ds / 4):
            j = np.round((a * zq + b) / ds).astype(int)
            ok = (j >= 0) & (j < m)
            if ok.sum() < need:
                continue
            score = float(sim[np.nonzero(ok)[0], j[ok]].mean())
            if score - SLOPE_PRIOR * abs(np.log(a)) > best[0]:
                best = (score - SLOPE_PRIOR * abs(np.log(a)), float(a), float(b))
    score, a, b = best
    score += SLOPE_PRIOR * abs(np.log(a))
    pos = (a * zq + b) / ds
    pos[(pos < -0.5) | (pos > m - 0.5)] = np.nan
    return pos, a, b, score, sim


def correspond(query: Volume, support: Volume, q_frames: FrameStack, s_frames: FrameStack
               ) -> Correspondence:
    """World correspondence for a shared frame, else by content; ``none`` if neither holds."""
    shared, ev = shared_frame(query, support, q_frames, s_frames)
    if shared:
        pos = world_correspondence(query, support, q_frames, s_frames)
        return Correspondence(pos, "world", float(ev.get("image_ncc") or 0.0), shared_frame=True,
                              evidence=ev, world_shift=world_shifts(query, support, q_frames,
                                                                    s_frames, pos))
    if len(q_frames) < 2 or len(s_frames) < 2:
        return Correspondence(np.full(len(q_frames), np.nan), "none", 0.0, evidence=ev)
    pos, a, b, score, _ = content_correspondence(q_frames, s_frames)
    method = "content" if score >= MIN_CORRESPONDENCE else "none"
    return Correspondence(pos, method, round(score, 4), a, round(b, 2), False, ev)


def expected_frames(corr: Correspondence, support_slices: np.ndarray, margin: float = 0.5
                    ) -> np.ndarray:
    """(n,) bool: query frames mapped inside the structure's support extent (all frames
    when the correspondence is not usable)."""
    if not corr.usable or not len(support_slices):
        return np.ones(len(corr.support_pos), bool)
    lo, hi = support_slices.min() - margin, support_slices.max() + margin
    p = corr.support_pos
    return np.where(np.isnan(p), False, (p >= lo) & (p <= hi))


# --- in-plane placement ------------------------------------------------------------------------


def masked_ncc_shift(fixed: np.ndarray, moving: np.ndarray, min_overlap: float = 0.3
                     ) -> tuple[int, int, float]:
    """(dy, dx, ncc): the translation of ``moving`` (pasted at its top-left plus dy, dx on
    ``fixed``'s grid) where the two correlate best, overlaps of at least ``min_overlap`` of
    the smaller image (masked normalised cross-correlation by FFT)."""
    ncc = masked_ncc_map(fixed[None], moving, min_overlap)[0]
    iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    # index (iy, ix) of the full correlation is a shift of (iy - Hm + 1, ix - Wm + 1)
    return iy - moving.shape[0] + 1, ix - moving.shape[1] + 1, float(ncc[iy, ix])


def masked_ncc_map(fixed: np.ndarray, moving: np.ndarray, min_overlap: float = 0.3
                   ) -> np.ndarray:
    """Normalised cross-correlation of ``moving`` against each of ``fixed`` (B, h, w) at
    every translation, over the overlap only (Padfield's masked NCC); -1 where the overlap
    is under ``min_overlap`` of the smaller image. Shape (B, h + Hm - 1, w + Wm - 1)."""
    fixed = _standardise(fixed.astype(np.float64))
    moving = _standardise(moving.astype(np.float64))
    H, W = fixed.shape[1] + moving.shape[0] - 1, fixed.shape[2] + moving.shape[1] - 1
    rf = lambda a: np.fft.rfft2(a, (H, W))  # noqa: E731
    fm1, fm, fmm = rf(np.ones_like(moving)[::-1, ::-1]), rf(moving[::-1, ::-1]), \
        rf((moving * moving)[::-1, ::-1])
    f1, ff, fff = rf(np.ones_like(fixed)), rf(fixed), rf(fixed * fixed)
    back = lambda a: np.fft.irfft2(a, (H, W))  # noqa: E731
    n = np.round(back(f1 * fm1))
    sf, sm, sff, smm = back(ff * fm1), back(f1 * fm), back(fff * fm1), back(f1 * fmm)
    sfm = back(ff * fm)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_safe = np.maximum(n, 1)
        num = sfm - sf * sm / n_safe
        den = np.sqrt(np.clip(sff - sf * sf / n_safe, 0, None) * np.clip(smm - sm * sm / n_safe,
                                                                         0, None))
        ncc = np.clip(num / den, -1, 1)
    small = min(fixed[0].size, moving.size)
    return np.where((n >= min_overlap * small) & (den > 1e-3 * n_safe), ncc, -1.0)


def _standardise(a: np.ndarray) -> np.ndarray:
    axes = tuple(range(a.ndim - 2, a.ndim))
    return (a - a.mean(axis=axes, keepdims=True)) / (a.std(axis=axes, keepdims=True) + 1e-6)


ZOOMS = (0.85, 0.92, 1.0, 1.08, 1.17)  # patient sizes the content search tries


def place(support: np.ndarray, s_spacing, query: np.ndarray, q_spacing, downsample_mm: float = 2.0,
          zooms: tuple[float, ...] = (1.0,)) -> tuple[float, float, float, float]:
    """(rows, cols, zoom, ncc): where the support slice's centre goes relative to the query
    frame's centre (query pixels), at which of ``zooms`` (isotropic size ratio), for the
    best normalised correlation of their content over all translations."""
    sp_q = np.asarray(q_spacing, float)
    g = max(downsample_mm, float(sp_q.max()))
    q_small = resample_frame(query, q_spacing, _size_mm(query.shape, q_spacing, g), (g, g))
    best = (-np.inf, 0.0, 0.0, 1.0)
    for z in zooms:
        s_small = resample_frame(support, s_spacing, _size_mm(support.shape, s_spacing, g / z),
                                 (g, g), zoom=z)
        dy, dx, score = masked_ncc_shift(q_small, s_small)
        if score > best[0]:
            # centre of the support after the shift, relative to the query centre
            cy = dy + (s_small.shape[0] - 1) / 2 - (q_small.shape[0] - 1) / 2
            cx = dx + (s_small.shape[1] - 1) / 2 - (q_small.shape[1] - 1) / 2
            best = (score, cy * g / sp_q[0], cx * g / sp_q[1], z)
    score, cy, cx, z = best
    return cy, cx, z, score


def body_box(frame: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray] | None:
    """(centre in pixels (rows, cols), size in mm) of the body's bounding box, or None."""
    body = body_mask(frame, spacing)
    if not body.any():
        return None
    ys, xs = np.nonzero(body)
    centre = np.array([(ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2])
    size = np.array([ys.max() - ys.min() + 1, xs.max() - xs.min() + 1]) * np.asarray(spacing)
    return centre, size


def place_by_body(support: np.ndarray, s_spacing, query: np.ndarray, q_spacing
                  ) -> tuple[float, float, float] | None:
    """(rows, cols, zoom): the support slice scaled (isotropically, 0.8-1.25) and moved so
    its body's bounding box lies on the query body's; None without a body on either."""
    a, b = body_box(support, s_spacing), body_box(query, q_spacing)
    if a is None or b is None:
        return None
    zoom = float(np.clip(np.sqrt(np.prod(b[1]) / np.prod(a[1])), 0.8, 1.25))
    sq, ss = np.asarray(q_spacing, float), np.asarray(s_spacing, float)
    # the support centre is where its body centre lands after the zoom about the centre
    s_off = (a[0] - (np.array(support.shape) - 1) / 2) * ss * zoom / sq
    target = b[0] - (np.array(query.shape) - 1) / 2
    dy, dx = target - s_off
    return float(dy), float(dx), zoom


def _size_mm(shape, spacing, g) -> tuple[int, int]:
    return tuple(max(2, int(round(n * s / g))) for n, s in zip(shape, spacing))
