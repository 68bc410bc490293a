"""Slice correspondence by content: a line ``support_mm = slope * query_mm + offset`` through
the frame similarity matrix, found by exhaustive search (slope 0.8-1.25: patients differ in
size, not in the order of their anatomy)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..frames import FrameStack, resample_frame
from .body import fov_cuts_body, frame_descriptors
from .ncc import masked_ncc_map
from .params import CORRESPONDENCE, CorrespondenceParams


class LineFit(NamedTuple):
    """The slice correspondence found by content."""

    positions: np.ndarray  # support frame position of every query frame (NaN outside)
    slope: float  # support_mm = slope * query_mm + offset_mm
    offset_mm: float
    score: float  # mean similarity on the line
    similarity: np.ndarray  # (n, m) query x support frame similarity


def shift_similarity(q_frames: FrameStack, s_frames: FrameStack,
                     p: CorrespondenceParams = CORRESPONDENCE) -> np.ndarray:
    """(n, m): best normalised correlation of each query frame with each support frame over
    all translations (at ``p.search_grid_mm`` pixels), for views that cut through the body."""
    g = p.search_grid_mm

    def small(stack: FrameStack) -> np.ndarray:
        sp = stack.spacing[1:]
        shape = tuple(min(p.search_size, max(4, int(round(n * s / g))))
                      for n, s in zip(stack.frames.shape[1:], sp))
        return np.stack([resample_frame(f, sp, shape, (g, g)) for f in stack.frames])

    q, s = small(q_frames), small(s_frames)
    return np.stack([masked_ncc_map(s, qi, min_overlap=p.search_overlap)
                     .reshape(len(s), -1).max(axis=1) for qi in q])


def similarity(q_frames: FrameStack, s_frames: FrameStack,
               p: CorrespondenceParams = CORRESPONDENCE) -> np.ndarray:
    """(n, m) similarity of every query frame with every support frame: body-relative
    descriptors, or the best over translations for views that cut through the body."""
    if fov_cuts_body(q_frames) or fov_cuts_body(s_frames):
        return shift_similarity(q_frames, s_frames, p)
    return frame_descriptors(q_frames) @ frame_descriptors(s_frames).T


def content_correspondence(q_frames: FrameStack, s_frames: FrameStack,
                           p: CorrespondenceParams = CORRESPONDENCE) -> LineFit:
    """Best line ``support_mm = a * query_mm + b`` through the frame similarity matrix."""
    sim = similarity(q_frames, s_frames, p)
    n, m = sim.shape
    dq, ds = q_frames.spacing[0], s_frames.spacing[0]
    zq = np.arange(n) * dq
    need = max(2, int(p.min_line * min(n, m * ds / dq)))
    best = (-np.inf, 1.0, 0.0)
    for a in np.linspace(p.slope_min, p.slope_max, p.slopes):
        lo, hi = -a * zq[-1] - 0.5 * ds, (m - 0.5) * ds
        step = p.offset_step * ds
        for b in np.arange(lo, hi + step, step):
            j = np.round((a * zq + b) / ds).astype(int)
            ok = (j >= 0) & (j < m)
            if ok.sum() < need:
                continue
            score = float(sim[np.nonzero(ok)[0], j[ok]].mean()) - p.slope_prior * abs(np.log(a))
            if score > best[0]:
                best = (score, float(a), float(b))
    score, a, b = best
    score += p.slope_prior * abs(np.log(a))
    pos = (a * zq + b) / ds
    pos[(pos < -0.5) | (pos > m - 0.5)] = np.nan
    return LineFit(pos, a, b, score, sim)
