"""Which labelled slice(s) of a structure become its support (``shots``).

* one labelled slice (or ``shots=1``): the slice with the largest area -- 1-shot, as in
  Zu et al.;
* ``shots=k``: k slices at 1/(2k), 3/(2k), ... of the structure's extent (the standard
  few-shot protocol: 1/6, 1/2, 5/6 for k = 3);
* ``shots=0`` (the default, "auto"): when the scans share a frame of reference, so that
  every query frame's anatomical counterpart is known exactly, up to ``MAX_DENSE``
  slices spread over the extent; else 1-shot.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..locate import Correspondence

MAX_DENSE = 16  # support slices per structure when the label covers many


def choose_slices(areas: np.ndarray, shots: int, wanted: int | None, src_index: np.ndarray,
                  name: str, painted: list[int] | None = None) -> list[int]:
    """Frame indices of the support slice(s) of one structure (``areas`` per frame). A
    1-shot support is the largest slice the user painted (an exact mask) when the
    structure was completed from painted slices; else the largest labelled one."""
    if wanted is not None:
        return [_wanted_slice(areas, wanted, src_index, name)]
    labelled = np.nonzero(areas > 0)[0]
    if shots == 1 or len(labelled) == 1:
        if painted:
            return [int(painted[int(np.argmax(areas[painted]))])]
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
