"""The support: which labelled slice(s) to use per structure, and their augmentation banks.

Per structure the support slice is the one with the largest area (or the ``shots``
largest, or the one asked for). Structures that share slices share one bank. Each slice
is resampled to the query's pixel spacing (structures appear at their physical size on
the query grid) and expanded into a bank of augmented (image, masks) members.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .augment import Bank, BankConfig, build_bank
from .errors import InputError
from .frames import FrameStack, label_to_frames, resample_frame
from .io import Volume
from .labels import LabelPlan, PlanEntry
from .segmentations import SupportLabel


@dataclass
class SupportGroup:
    """Structures that share support slice(s), with their bank on the query grid.

    Object ``k`` of the group is ``entries[k]``; bank masks are (M, K, H, W).
    """

    slices: list[int]  # support slice index along the axis, in the support's own voxel grid
    frames: list[int]  # the same slices as indices into the support's frame stack
    entries: list[PlanEntry]
    bank: Bank

    @property
    def outputs(self) -> list[int]:
        return [e.output_value for e in self.entries]


def label_frames(label: SupportLabel, image: Volume, value: int, axis: str) -> np.ndarray:
    """(n, rows, cols) bool frames of one structure, in the image's frame layout."""
    return label_to_frames(image.with_array(label.mask(value)), axis).astype(bool)


def choose_slices(areas: np.ndarray, shots: int, wanted: int | None, src_index: np.ndarray,
                  name: str) -> list[int]:
    """Frame indices of the support slice(s) of one structure (``areas`` per frame)."""
    if wanted is None:
        order = np.argsort(-areas, kind="stable")
        return sorted(int(f) for f in order[:shots] if areas[f] > 0)
    hits = np.nonzero(src_index == wanted)[0]
    if hits.size == 0:
        raise InputError(f"support_slice {wanted}: outside the support volume "
                         f"(0..{len(src_index) - 1})", option="support_slice")
    f = int(hits[0])
    if areas[f] == 0:
        with_v = src_index[areas > 0]
        raise InputError(f"support_slice {wanted} holds no voxel of {name}; slices with it: "
                         f"{int(with_v.min())}..{int(with_v.max())}", option="support_slice")
    return [f]


def prepare_support(support: FrameStack, image: Volume, label: SupportLabel, plan: LabelPlan,
                    query: FrameStack, bank: BankConfig, shots: int = 1,
                    support_slice: int | None = None) -> list[SupportGroup]:
    """Support slice(s) per structure and one bank per distinct set of slices."""
    _, src_index = support.source_index(image.shape)
    masks = {e.support_value: label_frames(label, image, e.support_value, support.axis)
             for e in plan}
    slices_of = {e.support_value: tuple(choose_slices(
        masks[e.support_value].sum(axis=(1, 2)), shots, support_slice, src_index, e.name))
        for e in plan}
    groups: dict[tuple[int, ...], list[PlanEntry]] = {}
    for e in plan:
        groups.setdefault(slices_of[e.support_value], []).append(e)
    out = []
    for gi, (frames, entries) in enumerate(groups.items()):
        cfg = replace(bank, seed=bank.seed + 1000 * gi)
        banks = [_slice_bank(support, query, f, [masks[e.support_value][f] for e in entries],
                             cfg, int(src_index[f])) for f in frames]
        b = Bank.concat(banks)
        for k, e in enumerate(entries):
            if not b.masks[:, k].any():
                raise InputError(f"{e.name} (label {e.support_value}): too small to survive "
                                 f"resampling to the query grid (support slice "
                                 f"{int(src_index[frames[0]])}); pick a larger slice")
        out.append(SupportGroup([int(src_index[f]) for f in frames], list(frames), entries, b))
    return out


def _slice_bank(support: FrameStack, query: FrameStack, f: int, masks: list[np.ndarray],
                cfg: BankConfig, source: int) -> Bank:
    """Bank of one support slice, resampled to the query's pixel grid."""
    shape, qsp, ssp = query.frames.shape[1:], query.spacing[1:], support.spacing[1:]
    img = resample_frame(support.frames[f], ssp, shape, qsp, order=1)
    m = np.stack([resample_frame(x.astype(np.float32), ssp, shape, qsp, order=0) > 0.5
                  for x in masks])
    return build_bank(img, m, cfg, source_slice=source)
