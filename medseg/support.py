"""The support: which labelled slice(s) to use per structure, and their augmentation banks.

What the support label offers decides the support (``shots``):

* one labelled slice (or ``shots=1``): the slice with the largest area -- 1-shot, as in
  Zu et al.;
* ``shots=k``: k slices at 1/(2k), 3/(2k), ... of the structure's extent (the standard
  few-shot protocol: 1/6, 1/2, 5/6 for k = 3);
* a label drawn on many slices (atlas style) with ``shots=0`` (the default, "auto"): when
  the scans share a frame of reference, so that every query frame's anatomical
  counterpart is known exactly, up to ``MAX_DENSE`` slices spread over the extent; else
  1-shot (measured on the CT case: a dense support paired through a content-based slice
  correspondence did worse than the largest slice, README 'Quality').

Each slice is resampled to the query's pixel spacing, placed in-plane where its content
matches the corresponding query frame (or by world position when the scans share a frame,
or centre on centre), and expanded into a bank of augmented (image, masks) members.
Query frames are matched only with members of the support slice nearest to their
anatomical position when the slice correspondence is known (:func:`position_prior`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .augment import Bank, BankConfig, build_bank
from .errors import InputError
from .frames import FrameStack, label_to_frames, resample_frame
from .io import Volume
from .labels import LabelPlan, PlanEntry
from .locate import ZOOMS, Correspondence, expected_frames, fov_cuts_body, place, place_by_body
from .segmentations import SupportLabel

MAX_DENSE = 16  # support slices per structure when the label covers many
PLACE_MIN_NCC = 0.3  # content placement below this correlation falls back to centre on centre


@dataclass
class SupportGroup:
    """Structures that share support slice(s), with their bank on the query grid.

    Object ``k`` of the group is ``entries[k]``; bank masks are (M, K, H, W).
    """

    slices: list[int]  # support slice index along the axis, in the support's own voxel grid
    frames: list[int]  # the same slices as indices into the support's frame stack
    entries: list[PlanEntry]
    bank: Bank
    placement: list[dict] = field(default_factory=list)  # per slice: how it was placed
    labelled: list[np.ndarray] = field(default_factory=list)  # per structure: support frames

    @property
    def outputs(self) -> list[int]:
        return [e.output_value for e in self.entries]

    @property
    def member_frames(self) -> np.ndarray:
        """Support frame index of every bank member."""
        to_frame = dict(zip(self.slices, self.frames))
        return np.array([to_frame[s] for s in self.bank.source_slices])


def label_frames(label: SupportLabel, image: Volume, value: int, axis: str) -> np.ndarray:
    """(n, rows, cols) bool frames of one structure, in the image's frame layout."""
    return label_to_frames(image.with_array(label.mask(value)), axis).astype(bool)


def choose_slices(areas: np.ndarray, shots: int, wanted: int | None, src_index: np.ndarray,
                  name: str) -> list[int]:
    """Frame indices of the support slice(s) of one structure (``areas`` per frame)."""
    if wanted is not None:
        return [_wanted_slice(areas, wanted, src_index, name)]
    labelled = np.nonzero(areas > 0)[0]
    if shots == 1 or len(labelled) == 1:
        return [int(np.argmax(areas))]  # the first largest
    k = min(MAX_DENSE if shots == 0 else shots, len(labelled))
    picks = labelled[np.round((2 * np.arange(k) + 1) / (2 * k) * len(labelled) - 0.5)
                     .astype(int).clip(0, len(labelled) - 1)]
    return sorted({int(f) for f in picks})


def effective_shots(shots: int, corr: Correspondence | None) -> int:
    """``shots=0`` (auto): every labelled slice (up to MAX_DENSE) when the scans share a
    frame of reference, else the largest slice."""
    if shots:
        return shots
    return 0 if corr is not None and corr.shared_frame else 1


def _wanted_slice(areas, wanted, src_index, name) -> int:
    hits = np.nonzero(src_index == wanted)[0]
    if hits.size == 0:
        raise InputError(f"support_slice {wanted}: outside the support volume "
                         f"(0..{len(src_index) - 1})", option="support_slice")
    f = int(hits[0])
    if areas[f] == 0:
        with_v = src_index[areas > 0]
        raise InputError(f"support_slice {wanted} holds no voxel of {name}; slices with it: "
                         f"{int(with_v.min())}..{int(with_v.max())}", option="support_slice")
    return f


def prepare_support(support: FrameStack, image: Volume, label: SupportLabel, plan: LabelPlan,
                    query: FrameStack, bank: BankConfig, shots: int = 0,
                    support_slice: int | None = None, corr: Correspondence | None = None,
                    placement: str = "auto", banks: dict | None = None) -> list[SupportGroup]:
    """Support slice(s) per structure and one bank per distinct set of slices."""
    _, src_index = support.source_index(image.shape)
    masks = {e.support_value: label_frames(label, image, e.support_value, support.axis)
             for e in plan}
    shots = effective_shots(shots, corr)
    slices_of = {e.support_value: tuple(choose_slices(
        masks[e.support_value].sum(axis=(1, 2)), shots, support_slice, src_index, e.name))
        for e in plan}
    groups: dict[tuple[int, ...], list[PlanEntry]] = {}
    for e in plan:
        groups.setdefault(slices_of[e.support_value], []).append(e)
    out = []
    for gi, (frames, entries) in enumerate(groups.items()):
        per = bank.size if len(frames) == 1 else max(1, bank.size // len(frames))
        cfg = replace(bank, size=per, seed=bank.seed + 1000 * gi)
        labelled = [np.nonzero(masks[e.support_value].any(axis=(1, 2)))[0] for e in entries]
        exp = expected_frames(corr, np.concatenate(labelled)) if corr is not None else None
        placed = [_slice_bank(support, query, f, [masks[e.support_value][f] for e in entries],
                              cfg, int(src_index[f]), corr, placement, banks, exp)
                  for f in frames]
        b = _cached(banks, ("group", *(p[2] for p in placed)),
                    lambda placed=placed: Bank.concat([p[0] for p in placed]))
        for k, e in enumerate(entries):
            if not b.masks[:, k].any():
                raise InputError(f"{e.name} (label {e.support_value}): too small to survive "
                                 f"resampling to the query grid (support slice "
                                 f"{int(src_index[frames[0]])}); pick a larger slice")
        out.append(SupportGroup([int(src_index[f]) for f in frames], list(frames), entries, b,
                                [p[1] for p in placed], labelled))
    return out


def _slice_bank(support: FrameStack, query: FrameStack, f: int, masks: list[np.ndarray],
                cfg: BankConfig, source: int, corr: Correspondence | None, placement: str,
                banks: dict | None = None, expected: np.ndarray | None = None
                ) -> tuple[Bank, dict, tuple]:
    """Bank of one support slice, resampled to the query's pixel grid and placed (reused
    from ``banks`` when the same slice lands the same way on the same grid), how it was
    placed, and its key in ``banks``."""
    shape, qsp, ssp = query.frames.shape[1:], query.spacing[1:], support.spacing[1:]
    shift, how = placement_shift(support, query, f, corr, placement, expected)
    zoom = how.get("zoom", 1.0)
    key = (f, shape, tuple(np.round(qsp, 6)), tuple(np.round(shift, 1)), round(zoom, 3), cfg,
           tuple(m.tobytes().__hash__() for m in masks))

    def build() -> Bank:
        img = resample_frame(support.frames[f], ssp, shape, qsp, order=1, shift=shift, zoom=zoom)
        m = np.stack([resample_frame(x.astype(np.float32), ssp, shape, qsp, order=0,
                                     shift=shift, zoom=zoom) > 0.5 for x in masks])
        return build_bank(img, m, cfg, source_slice=source)

    return _cached(banks, key, build), how, key


def _cached(banks: dict | None, key: tuple, make) -> Bank:
    """``banks[key]``, made on first use (the same object again, so that its encodings
    are reused as well); without a cache, made each time."""
    if banks is None:
        return make()
    if key not in banks:
        if len(banks) > 64:
            banks.clear()
        banks[key] = make()
    return banks[key]


def counterpart(corr: Correspondence | None, f: int, n: int) -> int:
    """The query frame whose anatomy corresponds to support frame ``f`` (the middle one
    when the correspondence is unknown)."""
    if corr is None or not corr.usable or np.isnan(corr.support_pos).all():
        return n // 2
    return int(np.nanargmin(np.abs(corr.support_pos - f)))


def placement_shift(support: FrameStack, query: FrameStack, f: int, corr: Correspondence | None,
                    placement: str, expected: np.ndarray | None = None
                    ) -> tuple[tuple[float, float], dict]:
    """Where the support slice's centre goes on the query grid (query pixels from the
    query centre), and how that was decided. ``expected``: query frames where the
    structure is expected (a content search looks at five of them, not one)."""
    i = counterpart(corr, f, len(query))
    if placement == "centre":
        return (0.0, 0.0), {"method": "centre", "query_frame": i}
    if corr is not None and corr.shared_frame and placement in ("auto", "world") \
            and f in corr.world_shift:
        return corr.world_shift[f], {"method": "world", "query_frame": i}
    cut = fov_cuts_body(query) or fov_cuts_body(support)
    if placement in ("auto", "body") and not cut:
        found = place_by_body(support.frames[f], support.spacing[1:], query.frames[i],
                              query.spacing[1:])
        if found is not None:
            dy, dx, zoom = found
            return (dy, dx), {"method": "body", "query_frame": i, "zoom": round(zoom, 3),
                              "shift_px": [round(dy, 1), round(dx, 1)]}
    if placement in ("auto", "search"):
        found = np.array([place(support.frames[f], support.spacing[1:], query.frames[j],
                                query.spacing[1:], zooms=ZOOMS)
                          for j in _search_frames(i, expected, len(query))])
        dy, dx, zoom, score = (float(v) for v in np.median(found, axis=0))
        if score >= PLACE_MIN_NCC or placement == "search":
            return (dy, dx), {"method": "search", "query_frame": i, "ncc": round(score, 3),
                              "zoom": zoom, "shift_px": [round(dy, 1), round(dx, 1)]}
        return (0.0, 0.0), {"method": "centre", "query_frame": i,
                            "note": f"content search unsure (ncc {score:.2f})"}
    return (0.0, 0.0), {"method": "centre", "query_frame": i}


def _search_frames(i: int, expected: np.ndarray | None, n: int) -> list[int]:
    """The counterpart frame and four more spread over the expected extent (or around
    the counterpart): one badly corresponding frame cannot decide the placement."""
    idx = np.nonzero(expected)[0] if expected is not None and np.any(expected) else \
        np.arange(max(0, i - 2), min(n, i + 3))
    picks = np.round(np.linspace(idx.min(), idx.max(), 5)).astype(int)
    return sorted({int(i), *(int(j) for j in picks)})


def position_prior(group: SupportGroup, corr: Correspondence | None, n: int) -> np.ndarray | None:
    """(n, M) added to the matching distances: members of other support slices than the
    one nearest a frame's anatomical position are ruled out (None for one slice)."""
    if len(group.frames) == 1:
        return None
    frames = np.asarray(group.frames, float)
    if corr is not None and corr.usable and not np.isnan(corr.support_pos).all():
        pos = np.where(np.isnan(corr.support_pos), np.nanmean(corr.support_pos),
                       corr.support_pos)
        nearest = np.argmin(np.abs(pos[:, None] - frames[None, :]), axis=1)
    else:  # protocol: the query in equal chunks, one per support slice in order
        nearest = np.minimum((np.arange(n) * len(frames)) // max(n, 1), len(frames) - 1)
    member_slice = np.searchsorted(frames, group.member_frames)
    return np.where(member_slice[None, :] == nearest[:, None], 0.0, 1e6).astype(np.float32)
