"""Completing a structure through the scan it was painted in, from the painted slice(s).

A user paints one slice (or a few, or corrects some slices of a result). Before anything
is transferred to another scan -- and as the whole answer when the scan to segment is the
painted one -- medseg estimates the structure on every other slice of that scan:

* **weight-free** (:func:`complete_by_registration`): from each drawn slice outwards,
  slice by slice, the previous mask is carried to the next slice by a deformable 2D
  registration of the images (SimpleITK's symmetric-forces demons), then refined by an
  intensity model of the structure against its surroundings (log-likelihood ratio of the
  drawn region's histogram to that of a ring around it): pixels much likelier to be
  surroundings leave, thin bridges are cut, holes filled. **Stop rule**: the structure
  ends where the carried mask, taken as a whole, looks more like the surroundings than
  like the structure (its mean log-likelihood ratio falls below :attr:`stop_llr`), or
  shrinks below :attr:`min_area` of the largest drawn mask, or reaches another drawn slice.
  **Tail**: past the stop rule (not past a drawn slice) the structure goes on while, frame
  by frame, its clearly-structure pixels touching the previous mask taper
  (:attr:`tail_growth`): a lung's thin apex, or its base wrapped round the diaphragm's
  dome, which the carried mask no longer fits.
  A frame reached from two drawn slices (between them) takes both estimates together
  (their union, :attr:`CompletionParams.between`). **Corrections**: on a corrected result
  whose estimate from the user's slices has not collapsed (:func:`keep_previous`), the
  walks are run again, growing into the clearly-structure pixels next to the mask that
  the previous result held, on the frames where the carried mask falls clearly short of it
  (:attr:`grow_in_previous`), so that small corrected slices at a structure's edges can
  carry it where it widens fast.
* **SAM2** (:func:`complete_with_sam2`): SAM2's own interactive video mode on the scan --
  every drawn slice a mask prompt (``add_new_mask``), propagated forward from the first
  prompt and backward from it; SAM2's object score decides where the structure ends.

Drawn slices always come back exactly as drawn (an empty drawn slice: absent there). A
corrected result keeps the slices the user left as they were when the correction only
erases, or when the estimate from the user's slices collapses (:func:`keep_previous`).

The candidates measured for the weight-free method, on the first seven example cases
(``scripts/benchmark_completion.py``, ``benchmarks/completion/``): scikit-image's
``random_walker`` (seeds: the drawn mask, the rest of its slice and voxels of clearly
other intensity), slice-by-slice region growing under a shape constraint, and
registration propagation with three stop rules. The one kept here had the highest mean
whole-volume Dice; its parameters below were set on those cases, not on the held-out ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .._lazy import lazy_import
from ..frames import FrameStack, label_to_frames
from ..io import Volume
from ..labels import SupportLabel
from .drawn import Drawn, drawn_of

ndimage = lazy_import("scipy.ndimage")
sitk = lazy_import("SimpleITK")

if TYPE_CHECKING:
    from ..engine import Sam2Engine


@dataclass(frozen=True)
class CompletionParams:
    """The documented parameters of weight-free completion (set on the first seven example
    cases, see the module docstring)."""

    grid_mm: float = 2.0  # frames are worked on at this pixel size at the finest
    margin_mm: float = 60.0  # ... cropped to the drawn masks' box grown by this (or by half)
    smooth_px: float = 1.0  # Gaussian smoothing before the intensity model
    ring_mm: float = 15.0  # the surroundings: a ring this wide around each drawn mask
    bins: int = 64  # histogram bins of the intensity model
    pixel_llr: float = 1.0  # a pixel leaves the carried mask below -this log-likelihood ratio
    stop_llr: float = 0.0  # the structure ends where the carried mask's mean ratio is below
    # the tail: past the stop rule, the structure goes on while frame by frame its clearly-
    # structure pixels (ratio above pixel_llr) within tail_reach_mm of the previous mask,
    # touching it, taper -- no more than tail_growth times its area (a lung's thin apex and
    # its base around the diaphragm's dome, where the carried mask no longer fits); 0 turns
    # the tail off. Set on the lung cases of the first seven (benchmarks/completion/)
    tail_growth: float = 1.2
    tail_reach_mm: float = 5.0
    # on a corrected result whose estimate from the user's slices has not collapsed (see
    # collapse_ratio, judged on that estimate alone), the walk also takes the clearly-
    # structure pixels within tail_reach_mm of its mask, touching it, that the previous
    # result held on a frame (a slice the user left as it was) -- on the frames where the
    # carried mask holds less than grow_below of what the previous result held there: from
    # small slices at a structure's edges the carried mask otherwise falls short where the
    # structure widens fast. Set on the corrections curves (benchmarks/quality/): the
    # growth on ct-chest-lungs-2's right lung across scans, grow_below on the in-scan
    # curves of ct-chest-lungs:query and ct-liver-spleen:support, where growing on every
    # frame added a rim of boundary pixels to a result that was right. False turns it off
    grow_in_previous: bool = True
    grow_below: float = 0.8
    open_mm: float = 2.0  # opening that cuts thin bridges to neighbours
    min_area: float = 0.01  # of the largest drawn mask: smaller estimates end the structure
    demons_iterations: int = 50
    demons_sigma: float = 1.5  # smoothing of the displacement field, in pixels
    between: str = "union"  # a frame reached from two drawn frames: both estimates (union)
    # a corrected result estimated again from the user's slices that keeps less than this
    # share of what the previous result had on the slices the user left as they were has
    # collapsed (the user's slices cannot carry the structure, e.g. a small slice at its
    # edge): those slices are kept beside the new estimate (:func:`keep_previous`). Set on
    # the corrections curves of the example cases (``benchmarks/quality/``), where it keeps
    # the head and a lung from collapsing after one correction; not on held-out cases.
    collapse_ratio: float = 0.2


COMPLETION = CompletionParams()


@dataclass
class Completion:
    """One structure completed through the scan (frames layout)."""

    masks: np.ndarray  # (n, H, W) bool
    drawn: np.ndarray  # (n,) bool: frames whose mask is the user's own
    method: str  # "registration", "sam2" or "none" (the label was already 3D)
    info: dict = field(default_factory=dict)

    @property
    def extent(self) -> tuple[int, int] | None:
        """First and last frame holding the structure."""
        has = np.nonzero(self.masks.reshape(len(self.masks), -1).any(axis=1))[0]
        return (int(has[0]), int(has[-1])) if has.size else None


def as_is(drawn: Drawn, n: int, shape: tuple[int, int]) -> Completion:
    """A structure the label already covers in 3D: nothing to complete."""
    masks = np.zeros((n, *shape), bool)
    for f, m in drawn.frames.items():
        masks[f] = m
    return Completion(masks, drawn.flags(n), "none", {"label": drawn.source})


# --- weight-free -----------------------------------------------------------------------------


@dataclass
class _Work:
    """The frames as completion works on them: cropped, downsampled, smoothed."""

    smooth: np.ndarray  # (n, h, w) smoothed intensities
    llr: np.ndarray  # (n, h, w) log-likelihood ratio structure : surroundings
    reg: np.ndarray  # (n, h, w) in [0, 1], what the registration sees
    box: tuple[slice, slice]  # the crop in full-resolution pixels
    step: tuple[int, int]  # the downsampling factor per axis
    pixel_mm: float


def _crop(drawn: Drawn, shape: tuple[int, int], spacing: tuple[float, float],
          p: CompletionParams) -> tuple[slice, slice]:
    """The drawn masks' box, grown by the margin (or by half its size), within the frame."""
    union = np.zeros(shape, bool)
    for m in drawn.frames.values():
        union |= m
    ys, xs = np.nonzero(union)
    out = []
    for lo, hi, n, sp in ((ys.min(), ys.max(), shape[0], spacing[0]),
                          (xs.min(), xs.max(), shape[1], spacing[1])):
        grow = max(p.margin_mm / sp, 0.5 * (hi - lo + 1))
        out.append(slice(max(0, int(lo - grow)), min(n, int(hi + grow) + 1)))
    return out[0], out[1]


def _prepare(raw: np.ndarray, spacing: tuple[float, float, float], drawn: Drawn,
             p: CompletionParams) -> _Work:
    box = _crop(drawn, raw.shape[1:], spacing[1:], p)
    step = tuple(max(1, int(p.grid_mm // s)) for s in spacing[1:])
    small = raw[:, box[0], box[1]][:, ::step[0], ::step[1]].astype(np.float32)
    sm = np.stack([ndimage.gaussian_filter(f, p.smooth_px) for f in small])
    masks = {f: m[box[0], box[1]][::step[0], ::step[1]] for f, m in drawn.frames.items()}
    px = float(min(s * k for s, k in zip(spacing[1:], step)))
    table, lo, hi = _intensity_model(sm, masks, px, p)
    idx = np.clip(((sm - lo) / (hi - lo) * p.bins).astype(int), 0, p.bins - 1)
    return _Work(sm, table[idx], np.clip((sm - lo) / (hi - lo), 0, 1), box, step, px)


def _intensity_model(sm: np.ndarray, masks: dict[int, np.ndarray], px: float,
                     p: CompletionParams) -> tuple[np.ndarray, float, float]:
    """Log-likelihood ratio per intensity bin: the drawn region against a ring around it."""
    fg, bg = [], []
    r_ring, r_in = max(2, round(p.ring_mm / px)), 1
    for f, m in masks.items():
        if not m.any():
            continue
        outer = ndimage.binary_dilation(m, _disk(r_ring))
        inner = ndimage.binary_dilation(m, _disk(r_in))
        fg.append(sm[f][m])
        bg.append(sm[f][outer & ~inner])
    fgv, bgv = np.concatenate(fg), np.concatenate(bg) if bg else np.zeros(0)
    both = np.concatenate([fgv, bgv])
    lo, hi = (float(v) for v in np.percentile(both, [0.5, 99.5]))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, p.bins + 1)

    def density(x: np.ndarray) -> np.ndarray:
        h = np.histogram(np.clip(x, lo, hi), edges)[0].astype(float)
        h = ndimage.gaussian_filter1d(h, 1.0)
        return (h + 1e-3 * max(h.sum(), 1.0) / p.bins) / (max(h.sum(), 1.0) * (1 + 1e-3))

    return np.log(density(fgv)) - np.log(density(bgv)), lo, hi


def _disk(r: int) -> np.ndarray:
    r = max(0, int(r))
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _carry(w: _Work, prev: np.ndarray, f: int, step: int, p: CompletionParams) -> np.ndarray:
    """``prev`` (on frame ``f - step``) carried onto frame ``f`` by demons registration."""
    fixed = sitk.GetImageFromArray(w.reg[f].astype(np.float32))
    moving = sitk.GetImageFromArray(w.reg[f - step].astype(np.float32))
    demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
    demons.SetNumberOfIterations(p.demons_iterations)
    demons.SetStandardDeviations(p.demons_sigma)
    field = demons.Execute(fixed, moving)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    warped = sitk.Resample(sitk.GetImageFromArray(prev.astype(np.float32)), fixed, tx,
                           sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(warped) > 0.5


def _refine(w: _Work, warped: np.ndarray, f: int, p: CompletionParams) -> np.ndarray:
    """The carried mask without pixels much likelier to be surroundings, bridges cut,
    holes filled; only the parts that overlap the carried mask's core."""
    r = max(0, round(p.open_mm / w.pixel_mm))
    core = ndimage.binary_erosion(warped, _disk(max(1, r)))
    return _parts_touching(warped & (w.llr[f] > -p.pixel_llr), core if core.any() else warped,
                           r)


def _parts_touching(cur: np.ndarray, by: np.ndarray, r: int) -> np.ndarray:
    """``cur`` opened by a disk of radius ``r`` (thin bridges cut), only its parts that
    overlap ``by``, holes filled."""
    if r:
        cur = ndimage.binary_opening(cur, _disk(r))
    lab, k = ndimage.label(cur)
    if k == 0:
        return cur
    hit = ndimage.sum(by, lab, range(1, k + 1))
    return ndimage.binary_fill_holes(np.isin(lab, [i + 1 for i in range(k) if hit[i] > 0]))


def _walk(w: _Work, start: np.ndarray, first: int, stop: int, step: int, amax: int,
          p: CompletionParams, previous: dict[int, np.ndarray] | None = None
          ) -> tuple[dict[int, np.ndarray], str]:
    """From a drawn frame's mask outwards until the stop rule (or ``stop``): the estimates
    and why the walk ended. ``previous``: a corrected result's untouched frames (working
    grid), which the mask may grow into (:attr:`~CompletionParams.grow_in_previous`)."""
    out: dict[int, np.ndarray] = {}
    prev = start
    for f in range(first, stop, step):
        warped = _carry(w, prev, f, step, p)
        if not warped.any():
            return out, f"frame {f}: the carried mask left the frame"
        if float(w.llr[f][warped].mean()) < p.stop_llr:
            return out, f"frame {f}: looks like the surroundings (stop rule)"
        cur = _refine(w, warped, f, p)
        if cur.sum() < max(4, p.min_area * amax):
            return out, f"frame {f}: smaller than {p.min_area:.0%} of the drawn mask"
        if previous and f in previous and cur.sum() < p.grow_below * previous[f].sum():
            cur = cur | _near_clear(w, cur, f, p, previous[f])
        out[f] = prev = cur
    return out, "reached a drawn frame or the end of the scan"


def _go_on(w: _Work, est: dict[int, np.ndarray], start: np.ndarray, k: int, stop: int,
           step: int, p: CompletionParams) -> str:
    """The tail past a walk's stop (added to ``est``): what it added, for the report."""
    last = (max(est) if step > 0 else min(est)) if est else k
    prev, grown = est.get(last, start), 0
    for f in range(last + step, stop, step):
        cur = _tail(w, prev, f, p)
        if cur is None:
            break
        est[f] = prev = cur
        grown += 1
    return f"; went on {grown} frame(s) on its clearly-structure pixels" if grown else ""


def _near_clear(w: _Work, prev: np.ndarray, f: int, p: CompletionParams,
                within: np.ndarray | None = None) -> np.ndarray:
    """Frame ``f``'s clearly-structure pixels (inside ``within``, if given) within
    :attr:`tail_reach_mm` of ``prev``, in components overlapping it."""
    near = ndimage.binary_dilation(prev, _disk(max(1, round(p.tail_reach_mm / w.pixel_mm))))
    if within is not None:
        near &= within
    return _parts_touching((w.llr[f] > p.pixel_llr) & near, prev,
                           max(0, round(p.open_mm / w.pixel_mm)))


def _tail(w: _Work, prev: np.ndarray, f: int, p: CompletionParams) -> np.ndarray | None:
    """Frame ``f``'s clearly-structure pixels near ``prev`` (components overlapping it,
    within :attr:`tail_reach_mm`), or None where they end or grow."""
    cur = _near_clear(w, prev, f, p)
    area = int(cur.sum())
    if area < 4 or area > p.tail_growth * prev.sum():
        return None
    return cur


def complete_by_registration(raw: np.ndarray, spacing: tuple[float, float, float],
                             drawn: Drawn, p: CompletionParams = COMPLETION) -> Completion:
    """The structure on every frame of the scan, weight-free (see the module docstring).

    Args:
        raw: (n, H, W) the scan's intensities in frames layout (not windowed).
        spacing: (between frames, row, col) in mm.
        drawn: what the user drew.
        p: the documented parameters.

    Returns:
        The completion, drawn frames exact.
    """
    t0 = time.perf_counter()
    n = len(raw)
    if not drawn.painted:
        masks = np.zeros(raw.shape, bool)
        for f, m in drawn.frames.items():
            masks[f] = m
        return Completion(masks, drawn.flags(n), "registration", {"note": "nothing painted"})
    w = _prepare(raw, spacing, drawn, p)
    small = {f: m[w.box[0], w.box[1]][::w.step[0], ::w.step[1]] for f, m in drawn.frames.items()}
    on_full = _walks(w, small, n, raw.shape[1:], p)
    info = {}
    if p.grow_in_previous and drawn.kept:
        ratio = estimate_over_previous(on_full[0], drawn)
        if ratio is not None and ratio >= p.collapse_ratio:  # the user's slices carry it
            previous = {f: m[w.box[0], w.box[1]][::w.step[0], ::w.step[1]]
                        for f, m in drawn.kept.items()}
            on_full = _walks(w, small, n, raw.shape[1:], p, previous)
            info["grown_into_previous_result"] = True
    found, ends = on_full
    for f, m in drawn.frames.items():
        found[f] = m
    return Completion(found, drawn.flags(n), "registration",
                      {"seconds": round(time.perf_counter() - t0, 3), "ends": ends,
                       "pixel_mm": round(w.pixel_mm, 3), **info})


def _walks(w: _Work, small: dict[int, np.ndarray], n: int, shape: tuple[int, int],
           p: CompletionParams, previous: dict[int, np.ndarray] | None = None
           ) -> tuple[np.ndarray, dict[str, str]]:
    """The walks from every drawn frame both ways (the drawn frames' own masks not set):
    the estimates on the full frames and why each walk ended."""
    amax = max(int(m.sum()) for m in small.values())
    keys = sorted(small)
    walks: dict[int, list[tuple[int, np.ndarray]]] = {}
    ends = {}
    for i, k in enumerate(keys):
        if not small[k].any():
            continue  # an empty drawn frame stops the walks that reach it
        for step, stop in ((1, keys[i + 1] if i + 1 < len(keys) else n),
                           (-1, keys[i - 1] if i > 0 else -1)):
            est, why = _walk(w, small[k], k + step, stop, step, amax, p, previous)
            if p.tail_growth > 0 and not why.startswith("reached"):
                why += _go_on(w, est, small[k], k, stop, step, p)
            ends[f"from {k} {'up' if step > 0 else 'down'}"] = why
            for f, m in est.items():
                walks.setdefault(f, []).append((k, m))
    masks = np.zeros((n, *shape), bool)
    for f, found in walks.items():
        masks[f] = _upsample(_between(f, found, small, p.between), w, shape)
    return masks, ends


def _between(f: int, found: list[tuple[int, np.ndarray]], drawn: dict[int, np.ndarray],
             rule: str) -> np.ndarray:
    """One estimate for frame ``f`` from the walks that reached it (from drawn frames below
    and above): the nearer drawn frame's (``nearest``), the larger drawn mask's
    (``larger``), both (``union``) or both weighted by nearness (``weighted``)."""
    if len(found) == 1 or rule == "nearest":
        return min(found, key=lambda km: abs(f - km[0]))[1]
    if rule == "larger":
        return max(found, key=lambda km: int(drawn[km[0]].sum()))[1]
    if rule == "union":
        return np.logical_or.reduce([m for _, m in found])
    near = np.array([1.0 / max(abs(f - k), 1) for k, _ in found])
    return np.tensordot(near / near.sum(), np.stack([m for _, m in found]).astype(float), 1) > 0.5


def _upsample(m: np.ndarray, w: _Work, shape: tuple[int, int]) -> np.ndarray:
    """A working-grid mask back on the full frame: working pixel ``i`` is full pixel
    ``i * step`` (linear interpolation, thresholded at one half)."""
    out = np.zeros(shape, bool)
    ys, xs = w.box
    size = (ys.stop - ys.start, xs.stop - xs.start)
    if w.step == (1, 1):
        out[ys, xs] = m
        return out
    up = ndimage.affine_transform(m.astype(np.float32), [1.0 / w.step[0], 1.0 / w.step[1]],
                                  output_shape=size, order=1, mode="nearest")
    out[ys, xs] = up > 0.5
    return out


# --- SAM2 --------------------------------------------------------------------------------------


def complete_with_sam2(engine: Sam2Engine, frames: np.ndarray, drawn: list[Drawn],
                       progress: Callable[[int], None] | None = None) -> list[Completion]:
    """Every structure through the scan with SAM2's interactive video mode.

    Args:
        engine: the loaded SAM2 engine.
        frames: (n, H, W) the scan's normalised frames.
        drawn: per structure, what the user drew (one SAM2 object each).
        progress: called with the number of frames done.

    Returns:
        One completion per structure: SAM2's masks where its object score is above 0,
        drawn frames exact.
    """
    n = len(frames)
    prompts: dict[int, dict[int, np.ndarray]] = {}
    for k, d in enumerate(drawn):
        for f, m in d.frames.items():
            prompts.setdefault(f, {})[k] = m
    out = engine.run_scan(frames, prompts, len(drawn), progress=progress, keep_masks=True)
    result = []
    for k, d in enumerate(drawn):
        masks = out.masks[:, k] & (np.nan_to_num(out.object_scores[:, k], nan=1.0) > 0)[:, None,
                                                                                         None]
        for f, m in d.frames.items():
            masks[f] = m
        result.append(Completion(masks, d.flags(n), "sam2",
                                 {"engine_timings_s": out.timings}))
    return result


def estimate_over_previous(masks: np.ndarray, drawn: Drawn) -> float | None:
    """What an estimate holds on the slices the user left as they were, over what the
    previous result held there (None: no such slice)."""
    kept = [f for f in drawn.kept if f not in drawn.frames]
    if not kept:
        return None
    before = sum(int(drawn.kept[f].sum()) for f in kept)
    return sum(int(masks[f].sum()) for f in kept) / max(before, 1)


def keep_previous(c: Completion, drawn: Drawn, p: CompletionParams = COMPLETION) -> None:
    """What a corrected result keeps of the previous one (``drawn.kept``: the slices the
    user left as they were). With a painted or redrawn slice the structure is estimated
    again from the user's slices (the stop rule deciding where it ends, so slices found
    beyond it are cut back) -- unless that estimate has collapsed: it holds less than
    :attr:`~CompletionParams.collapse_ratio` of what the previous result had on those
    slices (the user's slices cannot carry the structure, e.g. a small slice at its edge).
    Then, as when the user only erased slices (nothing to estimate from), every untouched
    slice is kept, beside the new estimate: a correction never loses most of a result."""
    kept = [f for f in drawn.kept if not c.drawn[f]]
    if not kept:
        return
    if drawn.painted:
        ratio = estimate_over_previous(c.masks, drawn)
        c.info["estimate_over_previous"] = round(ratio, 3)
        if ratio >= p.collapse_ratio:
            return
    for f in kept:
        c.masks[f] |= drawn.kept[f]
    c.info["kept_from_previous_result"] = len(kept)


# --- the stage -----------------------------------------------------------------------------


@dataclass
class CompletedSupport:
    """A support with every structure completed through its scan."""

    label: SupportLabel  # on the support image's grid (the original when nothing changed)
    structures: dict[int, Completion]  # support value -> completion (frames layout)
    drawn: dict[int, Drawn]  # support value -> what the user drew

    def painted(self, value: int) -> list[int]:
        """Frames the user painted the structure on (the 1-shot slice comes from these)."""
        return self.drawn[value].painted

    def describe(self, frames: FrameStack, image: Volume) -> list[dict]:
        """Per structure, for the report: how it was completed, which slices were drawn
        (support voxel index along the axis) and its extent."""
        _, src = frames.source_index(image.shape)
        out = []
        for v, c in self.structures.items():
            ext = c.extent
            out.append({"support_value": v, "method": c.method, "label": self.drawn[v].source,
                        "drawn_slices": [int(src[f]) for f in sorted(self.drawn[v].frames)],
                        "extent_slices": None if ext is None else [int(src[ext[0]]),
                                                                  int(src[ext[1]])],
                        "frames_with_structure": int(c.masks.any(axis=(1, 2)).sum()),
                        **{k: val for k, val in c.info.items() if k != "engine_timings_s"}})
        return out


def complete_support(image: Volume, frames: FrameStack, label: SupportLabel, values: list[int],
                     method: str, complete: str = "auto",
                     engine: Callable[[], Sam2Engine | None] | None = None,
                     progress: Callable[[int], None] | None = None) -> CompletedSupport:
    """Every structure of ``values`` completed through the support scan.

    Args:
        image, frames, label: the support scan, its normalised frames and its label.
        values: the structures of the run (support values).
        method: ``sam2`` (SAM2's interactive mode) or ``transfer`` (weight-free).
        complete: ``auto``, ``on`` or ``off`` (see :func:`~medseg.support.drawn.drawn_of`).
        engine: gives the SAM2 engine (``method="sam2"``), asked for only when a structure
            is to be completed (the model may still be loading).
        progress: called with the number of frames done (SAM2).

    Returns:
        The completed support; its label is the original when nothing needed completing.
    """
    n, shape = len(frames), frames.frames.shape[1:]
    drawn = {v: drawn_of(label_to_frames(image.with_array(label.mask(v)), frames.axis)
                         .astype(bool), label.segments[v].record, frames.axis, complete)
             for v in values}
    todo = [v for v in values if not drawn[v].full]
    done = {v: as_is(drawn[v], n, shape) for v in values if drawn[v].full}
    eng = engine() if todo and method == "sam2" and engine is not None else None
    if eng is not None:
        done.update(zip(todo, complete_with_sam2(eng, frames.frames, [drawn[v] for v in todo],
                                                 progress)))
    elif todo:
        raw = label_to_frames(image.with_array(image.array.astype(np.float32)), frames.axis)
        for v in todo:
            done[v] = complete_by_registration(raw, frames.spacing, drawn[v])
    for v in todo:
        keep_previous(done[v], drawn[v])
    structures = {v: done[v] for v in values}
    if not todo:
        return CompletedSupport(label, structures, drawn)
    layers = [frames.to_volume_array(structures[v].masks).astype(np.uint8) for v in values]
    segments = {v: label.segments[v] for v in values}
    completed = SupportLabel(layers, segments, {v: (k, 1) for k, v in enumerate(values)},
                             label.path, label.kind, [*label.notes, "completed through the scan"])
    return CompletedSupport(completed, structures, drawn)
