"""Support groups: structures that share support slice(s), each slice placed on the query
grid and expanded into a bank; the position prior that keeps a query frame to the members
of the support slice nearest its anatomy."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

import numpy as np

from ..config import BankConfig, SupportConfig
from ..errors import InputError
from ..frames import FrameStack, label_to_frames, resample_frame
from ..io import Volume
from ..labels import LabelPlan, PlanEntry, SupportLabel
from ..locate import Correspondence, counterpart, expected_frames, placement_shift
from .augment import Bank, build_bank, content_key
from .cache import BankCache
from .slices import choose_slices, effective_shots

T = TypeVar("T")


@dataclass
class GroupPart:
    """The members of one support scan within a group, and how that scan relates to the
    query (a group holds one part per support scan)."""

    start: int  # the part's members are bank members start..stop-1
    stop: int
    frames: list[int]  # the part's support slices as frames of its support's stack, sorted
    member_frames: np.ndarray  # (stop - start,) support frame of each member
    corr: Correspondence | None  # its support's slice correspondence to the query
    labelled: list[np.ndarray]  # per structure: its support's frames holding it
    support: int = 0  # which support scan


@dataclass
class SupportGroup:
    """Structures that share support slice(s), with their bank on the query grid.

    Object ``k`` of the group is ``entries[k]``; bank masks are (M, K, H, W). ``parts``:
    one per support scan whose members are in the bank.
    """

    slices: list[int]  # support slice index along the axis, in the support's own voxel grid
    frames: list[int]  # the same slices as indices into the support's frame stack
    entries: list[PlanEntry]
    bank: Bank
    placement: list[dict] = field(default_factory=list)  # per slice: how it was placed
    labelled: list[np.ndarray] = field(default_factory=list)  # per structure: support frames
    parts: list[GroupPart] = field(default_factory=list)

    @property
    def outputs(self) -> list[int]:
        return [e.output_value for e in self.entries]

    @property
    def member_frames(self) -> np.ndarray:
        """Support frame index of every bank member."""
        return np.concatenate([p.member_frames for p in self.parts])


def label_frames(label: SupportLabel, image: Volume, value: int, axis: str) -> np.ndarray:
    """(n, rows, cols) bool frames of one structure, in the image's frame layout."""
    return label_to_frames(image.with_array(label.mask(value)), axis).astype(bool)


@dataclass
class SupportScan:
    """The support as the support stage sees it: its volume, frames and label."""

    image: Volume
    frames: FrameStack
    label: SupportLabel


@dataclass
class _Placing:
    """How the slices of one group are placed on the query grid."""

    support: FrameStack
    query: FrameStack
    corr: Correspondence | None
    placement: str
    cache: BankCache | None
    expected: np.ndarray | None = None


def prepare_support(support: SupportScan, plan: LabelPlan, query: FrameStack,
                    cfg: SupportConfig, corr: Correspondence | None = None,
                    placement: str = "auto", cache: BankCache | None = None,
                    painted: dict[int, list[int]] | None = None) -> list[SupportGroup]:
    """Support slice(s) per structure and one bank per distinct set of slices.

    Args:
        support: the support's volume, frames and label.
        plan: the structures of the run.
        query: the query's frames (the banks are built on its pixel grid).
        cfg: which slices (``shots``, ``support_slice``) and the bank's settings.
        corr: the slice correspondence (for placement and the expected extent).
        placement: how the support slice is placed in-plane.
        cache: banks reused by content (a cohort's queries on the same grid).
        painted: per structure, the frames the user painted when the structure was completed
            from them (a 1-shot support is one of these).

    Returns:
        The groups, in the order their structures first appear in the plan.
    """
    frames = support.frames
    _, src_index = frames.source_index(support.image.shape)
    masks = {e.support_value: label_frames(support.label, support.image, e.support_value,
                                           frames.axis) for e in plan}
    shots = effective_shots(cfg.shots, corr)
    painted = painted or {}
    slices_of = {e.support_value: tuple(choose_slices(
        masks[e.support_value].sum(axis=(1, 2)), shots, cfg.support_slice, src_index, e.name,
        painted.get(e.support_value))) for e in plan}
    groups: dict[tuple[int, ...], list[PlanEntry]] = {}
    for e in plan:
        groups.setdefault(slices_of[e.support_value], []).append(e)
    out = []
    for picked, entries in groups.items():
        bank = cfg.bank
        per = bank_copies(bank.size, len(picked))
        # seeded by the slices, not the group's rank: a structure's bank does not depend on
        # which other structures are segmented with it
        bcfg = replace(bank, size=per, seed=(bank.seed + 1000 * picked[0]) % (2**31 - 1))
        labelled = [np.nonzero(masks[e.support_value].any(axis=(1, 2)))[0] for e in entries]
        exp = expected_frames(corr, np.concatenate(labelled)) if corr is not None else None
        how = _Placing(frames, query, corr, placement, cache, exp)
        placed = _side_by_side(partial(_bank_of, how, masks, entries, bcfg, src_index),
                               picked)
        b = Bank.concat([p[0] for p in placed])
        to_frame = {int(src_index[f]): f for f in picked}
        part = GroupPart(0, len(b), sorted(picked),
                         np.array([to_frame[sl] for sl in b.source_slices]), corr, labelled)
        out.append(SupportGroup([int(src_index[f]) for f in picked], list(picked), entries, b,
                                [p[1] for p in placed], labelled, [part]))
    return out


def _side_by_side(work: Callable[[int], T], items: Sequence[int]) -> list[T]:
    """``[work(i) for i in items]``, run side by side in threads (each support slice's
    resampling runs without holding the interpreter); results and the first error in
    ``items``' order, as in turn. Collected once the threads have ended: leaving the pool
    joins them (a wait a signal cannot break, see :mod:`medseg._threads`)."""
    if len(items) < 2:
        return [work(i) for i in items]
    with ThreadPoolExecutor(min(len(items), os.cpu_count() or 1, 4)) as pool:
        futures = [pool.submit(work, i) for i in items]
    return [f.result() for f in futures]


def _bank_of(how: _Placing, masks: dict[int, np.ndarray], entries: list[PlanEntry],
             cfg: BankConfig, src_index: np.ndarray, f: int) -> tuple[Bank, dict]:
    """Support slice ``f``'s bank and placement, for the group's structures."""
    return _slice_bank(how, f, [masks[e.support_value][f] for e in entries], cfg,
                       int(src_index[f]), entries)


def bank_copies(size: int, slices: int) -> int:
    """Augmented copies per support slice: ``size`` for one slice (the paper's bank of
    ``size`` augmentations beside the slice itself); ``k`` slices share a bank of ``size``
    members, each slice and ``size // k - 1`` copies of it (none from ``size`` slices on:
    the slices themselves vary more than augmentations of one would)."""
    return size if slices == 1 else max(0, size // slices - 1)


def _slice_bank(p: _Placing, f: int, masks: list[np.ndarray], cfg: BankConfig, source: int,
                entries: list[PlanEntry]) -> tuple[Bank, dict]:
    """Bank of one support slice, resampled to the query's pixel grid and placed, and how
    it was placed. A placement that would push a structure out of the query frame falls
    back to centring the slice (and says so)."""
    placed = placement_shift(p.support, p.query, f, p.corr, p.placement, p.expected)
    shift, how = placed.shift, dict(placed.how)
    # the zoom as recorded (body placement rounds it to 3 decimals) is the one applied
    bank = _build(p, f, masks, cfg, source, shift, how.get("zoom", 1.0))
    lost = _lost(bank, entries)
    if lost and shift != (0.0, 0.0):
        how = {"method": "centre", "query_frame": how.get("query_frame"),
               "note": f"placement by {how['method']} put {', '.join(lost)} outside the query "
                       "frame; the support slice was centred instead"}
        bank = _build(p, f, masks, cfg, source, (0.0, 0.0), 1.0)
        lost = _lost(bank, entries)
    if lost:
        qpx = float(np.prod(p.query.spacing[1:]))
        raise InputError(f"{', '.join(lost)}: covers less than one query pixel ({qpx:.2g} mm2) "
                         f"on support slice {source} once resampled to the query grid; paint "
                         "a larger slice or choose it with --support-slice")
    return bank, how


def _lost(bank: Bank, entries: list[PlanEntry]) -> list[str]:
    """Structures that the placed (unaugmented) support slice no longer shows."""
    return [f"{e.name} (label {e.support_value})" for k, e in enumerate(entries)
            if not bank.masks[0, k].any()]


def _build(p: _Placing, f: int, masks: list[np.ndarray], cfg: BankConfig, source: int,
           shift: tuple[float, float], zoom: float) -> Bank:
    """The placed slice's bank (from the cache when the same content lands the same way on
    the same grid)."""
    shape, qsp, ssp = p.query.frames.shape[1:], p.query.spacing[1:], p.support.spacing[1:]

    def build() -> Bank:
        img = resample_frame(p.support.frames[f], ssp, shape, qsp, order=1, shift=shift,
                             zoom=zoom)
        m = np.stack([resample_frame(x.astype(np.float32), ssp, shape, qsp, order=0,
                                     shift=shift, zoom=zoom) > 0.5 for x in masks])
        return build_bank(img, m, cfg, source_slice=source)

    if p.cache is None:
        return build()
    key = content_key(p.support.frames[f], *masks) + repr(
        (source, shape, tuple(np.round(qsp, 6)), tuple(np.round(ssp, 6)),
         tuple(np.round(shift, 1)), round(zoom, 3), cfg))
    return p.cache.get(key, build)


def position_prior(group: SupportGroup, n: int) -> np.ndarray | None:
    """(n, M) added to the matching distances: per support scan, members of other support
    slices than the one nearest a frame's anatomical position are ruled out (None for one
    slice of one scan)."""
    if len(group.parts) == 1 and len(group.parts[0].frames) == 1:
        return None
    prior = np.full((n, len(group.bank)), 1e6, np.float32)
    for part in group.parts:
        frames = np.asarray(part.frames, float)
        corr = part.corr
        if corr is not None and corr.usable and not np.isnan(corr.support_pos).all():
            pos = np.where(np.isnan(corr.support_pos), np.nanmean(corr.support_pos),
                           corr.support_pos)
            nearest = np.argmin(np.abs(pos[:, None] - frames[None, :]), axis=1)
        else:  # protocol: the query in equal chunks, one per support slice in order
            nearest = np.minimum((np.arange(n) * len(frames)) // max(n, 1), len(frames) - 1)
        member_slice = np.searchsorted(frames, part.member_frames)
        prior[:, part.start:part.stop] = np.where(member_slice[None, :] == nearest[:, None],
                                                  0.0, 1e6)
    return prior


def presence(group: SupportGroup, n: int, mode: str) -> np.ndarray:
    """(n, K): per structure, the query frames where it is expected -- in any support scan's
    correspondence (``auto``); every frame with ``off`` or without a correspondence."""
    if mode == "off":
        return np.ones((n, len(group.entries)), bool)
    out = np.zeros((n, len(group.entries)), bool)
    for part in group.parts:
        if part.corr is None:
            return np.ones((n, len(group.entries)), bool)
        out |= np.stack([expected_frames(part.corr, lab) for lab in part.labelled], axis=1)
    return out


def insertion_frame(group: SupportGroup, n: int) -> int | None:
    """Volume mode: the query frame the support slice corresponds to (one support scan with
    a correspondence), else None (the best-matching pair decides)."""
    if len(group.parts) != 1 or group.parts[0].corr is None or not group.parts[0].corr.usable:
        return None
    return counterpart(group.parts[0].corr, group.frames[len(group.frames) // 2], n)
