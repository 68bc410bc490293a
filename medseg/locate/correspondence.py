"""Which support slice each query slice corresponds to: through world coordinates when the
scans share a frame of reference, else by content; ``none`` when neither holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..frames import FrameStack
from ..io import Volume
from .content import content_correspondence
from .params import CORRESPONDENCE, CorrespondenceParams
from .shared import shared_frame, world_correspondence, world_shifts


@dataclass
class Correspondence:
    """Query frame -> support frame position (float index; NaN where outside the support)."""

    support_pos: np.ndarray
    method: str  # "world", "content", "none" (not found) or "off" (not asked for)
    score: float
    slope: float = 1.0
    offset_mm: float = 0.0
    shared_frame: bool = False
    evidence: dict = field(default_factory=dict)
    world_shift: dict = field(default_factory=dict)  # support frame -> in-plane (rows, cols)

    @property
    def usable(self) -> bool:
        """Whether query frames can be related to support frames at all."""
        return self.method in ("world", "content", "same")

    def describe(self) -> dict:
        """The correspondence for reports (positions rounded, shifts left out)."""
        d = asdict(self)
        d["support_pos"] = [None if np.isnan(v) else round(float(v), 2) for v in self.support_pos]
        d.pop("world_shift")
        return d

    @classmethod
    def unrelated(cls, n: int, method: str = "none", **evidence) -> Correspondence:
        """No correspondence for ``n`` query frames."""
        return cls(np.full(n, np.nan), method, 0.0, evidence=dict(evidence))

    @classmethod
    def identity(cls, n: int) -> Correspondence:
        """The query is the support scan itself: frame ``f`` is support frame ``f``."""
        return cls(np.arange(n, dtype=float), "same", 1.0, shared_frame=True,
                   evidence={"same_scan": True}, world_shift={f: (0.0, 0.0) for f in range(n)})


def correspond(query: Volume, support: Volume, q_frames: FrameStack, s_frames: FrameStack,
               p: CorrespondenceParams = CORRESPONDENCE) -> Correspondence:
    """World correspondence for a shared frame, else by content; ``none`` if neither holds.

    Args:
        query, support: the two volumes (for their geometry).
        q_frames, s_frames: their frames along the same axis.
        p: the documented parameters of the search.

    Returns:
        The correspondence with the evidence for it.
    """
    shared, ev = shared_frame(query, support, q_frames, s_frames, p)
    if shared:
        pos = world_correspondence(query, support, q_frames, s_frames)
        return Correspondence(pos, "world", float(ev.get("image_ncc") or 0.0), shared_frame=True,
                              evidence=ev, world_shift=world_shifts(query, support, q_frames,
                                                                    s_frames, pos))
    if len(q_frames) < 2 or len(s_frames) < 2:
        return Correspondence(np.full(len(q_frames), np.nan), "none", 0.0, evidence=ev)
    fit = content_correspondence(q_frames, s_frames, p)
    method = "content" if fit.score >= p.min_correspondence else "none"
    return Correspondence(fit.positions, method, round(fit.score, 4), fit.slope,
                          round(fit.offset_mm, 2), False, ev)


def counterpart(corr: Correspondence | None, f: int, n: int) -> int:
    """The query frame whose anatomy corresponds to support frame ``f`` (the middle one
    when the correspondence is unknown)."""
    if corr is None or not corr.usable or np.isnan(corr.support_pos).all():
        return n // 2
    return int(np.nanargmin(np.abs(corr.support_pos - f)))
