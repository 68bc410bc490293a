"""What the user drew: per structure, the slices whose masks are the user's own.

A label holds, per structure, masks on some slices. Which of them the user drew decides
what medseg keeps exactly and what it estimates:

* a label with a medseg **slice record** (a previous result, corrected in 3D Slicer or
  another editor): the slices the record says were drawn, and every slice whose mask
  differs from the estimate the record fingerprinted -- a corrected slice, a newly painted
  one, or an erased one (drawn empty: "the structure is not here"); the estimate from the
  user's slices may grow into what the slices left as they were held
  (:attr:`~medseg.support.complete.CompletionParams.grow_in_previous`), and those slices
  are kept when the only changes are erasures, or when that estimate collapses
  (:func:`~medseg.support.complete.keep_previous`);
* a label that already covers the structure in 3D -- its labelled slices form one
  unbroken run of at least :data:`FULL_LABEL_MIN_SLICES` -- is taken as it is (an atlas,
  TotalSegmentator's output, a full manual segmentation);
* otherwise the painted slices are drawn and the structure is completed through the scan
  (:mod:`~medseg.support.complete`).

The record (:mod:`medseg.labels.record`) travels with every result: as segment tags of the
``.seg.nrrd`` and in the report beside a NIfTI labelmap. It holds the slicing axis, the
number of frames, the drawn frames and a short fingerprint of every estimated frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..labels.record import SliceRecord, fingerprint

FULL_LABEL_MIN_SLICES = 3  # an unbroken run this long is a 3D label, not painted slices


@dataclass
class Drawn:
    """One structure as the user gave it (frames layout of the support scan)."""

    frames: dict[int, np.ndarray]  # drawn frame -> its mask as drawn (an empty mask: absent)
    full: bool  # the label already covers the structure in 3D: nothing to complete
    source: str  # "painted", "3d label", "record" (from a medseg slice record)
    # a previous result's estimates the user left as they were (frame -> mask): the
    # estimate from the user's slices may grow into them; kept when the user only erased
    # slices (nothing to estimate from) or that estimate collapsed, so a correction never
    # loses most of the structure
    kept: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def painted(self) -> list[int]:
        """Drawn frames where the structure is present, in order."""
        return sorted(f for f, m in self.frames.items() if m.any())

    def flags(self, n: int) -> np.ndarray:
        """(n,) bool: which frames were drawn."""
        out = np.zeros(n, bool)
        out[list(self.frames)] = True
        return out


def drawn_of(masks: np.ndarray, record: SliceRecord | None, axis: str,
             complete: str = "auto") -> Drawn:
    """What the user drew of one structure whose label is ``masks`` (n, H, W).

    Args:
        masks: the structure's label on the support's frames.
        record: the medseg slice record the label carries, if any.
        axis: the slicing axis of this run.
        complete: ``auto`` (a 3D label is kept, painted slices completed), ``on`` (every
            labelled slice is drawn and the rest completed), ``off`` (the label as it is).
    """
    has = masks.reshape(len(masks), -1).any(axis=1)
    labelled = [int(f) for f in np.nonzero(has)[0]]
    if record is not None and record.axis == axis and record.frames == len(masks) \
            and complete != "off":
        frames = {f: masks[f] for f in record.drawn if 0 <= f < len(masks)}
        kept = {}
        for f in range(len(masks)):
            if f in frames:
                continue
            known = record.estimated.get(f)
            changed = (known is None and has[f]) or (known is not None
                                                     and known != fingerprint(masks[f]))
            if changed:
                frames[f] = masks[f]  # corrected, newly painted or erased by the user
            elif has[f]:
                kept[f] = masks[f]
        if frames:
            return Drawn(frames, False, "record", kept)
    contiguous = bool(labelled) and labelled[-1] - labelled[0] + 1 == len(labelled)
    full = complete == "off" or (complete == "auto" and contiguous
                                 and len(labelled) >= FULL_LABEL_MIN_SLICES)
    return Drawn({f: masks[f] for f in labelled}, full, "3d label" if full else "painted")
