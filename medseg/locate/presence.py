"""Presence: the query frames where a structure is expected, from the support frames that
hold it, mapped through the slice correspondence."""

from __future__ import annotations

import numpy as np

from .correspondence import Correspondence
from .params import PRESENCE, PresenceParams


def expected_frames(corr: Correspondence, support_slices: np.ndarray,
                    p: PresenceParams = PRESENCE) -> np.ndarray:
    """(n,) bool: query frames mapped inside the structure's support extent (all frames
    when the correspondence is not usable).

    Args:
        corr: the slice correspondence.
        support_slices: support frames that hold the structure.
        p: the margin (in support slices) beyond the first and last.
    """
    if not corr.usable or not len(support_slices):
        return np.ones(len(corr.support_pos), bool)
    lo, hi = support_slices.min() - p.margin, support_slices.max() + p.margin
    pos = corr.support_pos
    return np.where(np.isnan(pos), False, (pos >= lo) & (pos <= hi))
