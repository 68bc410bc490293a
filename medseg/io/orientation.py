"""Canonical orientation: permute/flip (never resample) a volume so its axes run along L, P, S.

:func:`to_canonical` permutes/flips the array so that the index axes point along L, P, S;
:func:`from_canonical` undoes it exactly, so masks built in canonical space overlay the
original image voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume import Volume


@dataclass(frozen=True)
class Orientation:
    """How to permute/flip a (z, y, x) array so its index axes run along L, P, S.

    ``perm[k]`` is the source array axis that becomes canonical array axis ``k``;
    ``flip[k]`` says whether canonical axis ``k`` is reversed after the permutation.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    def apply(self, arr: np.ndarray) -> np.ndarray:
        out = np.transpose(arr, self.perm)
        for k, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=k)
        return out

    def invert(self, arr: np.ndarray) -> np.ndarray:
        out = arr
        for k, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=k)
        return np.transpose(out, np.argsort(self.perm))


def orientation_code(direction: np.ndarray) -> str:
    """Three-letter code (ITK/DICOM "to" convention, e.g. 'LPS') of the index axes x, y, z."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    code = ""
    for col in np.asarray(direction).T:
        w = int(np.argmax(np.abs(col)))
        code += letters[w][0 if col[w] > 0 else 1]
    return code


def canonical_orientation(direction: np.ndarray) -> Orientation:
    """The permutation/flip that maps index axes to the nearest L, P, S world axes."""
    d = np.asarray(direction, dtype=float)
    # world axis for each ITK index axis (x, y, z), resolving ties deterministically
    order = np.argsort(-np.abs(d).max(axis=0), kind="stable")
    world_of = [-1, -1, -1]
    used: set[int] = set()
    for idx_axis in order:
        for w in np.argsort(-np.abs(d[:, idx_axis]), kind="stable"):
            if int(w) not in used:
                world_of[idx_axis] = int(w)
                used.add(int(w))
                break
    # canonical ITK axis w (0=L,1=P,2=S) comes from ITK index axis a with world_of[a] == w;
    # in array order (z, y, x) ITK axis a is array axis 2 - a, canonical axis w is 2 - w.
    perm = [0, 0, 0]
    flip = [False, False, False]
    for a, w in enumerate(world_of):
        perm[2 - w] = 2 - a
        flip[2 - w] = bool(d[w, a] < 0)
    return Orientation(tuple(perm), tuple(flip))  # type: ignore[arg-type]


def to_canonical(vol: Volume) -> tuple[np.ndarray, Orientation]:
    """The array with index axes along (S, P, L) in (z, y, x) order, plus how to undo it."""
    orient = canonical_orientation(vol.direction)
    return orient.apply(vol.array), orient


def canonical_spacing_zyx(vol: Volume, orient: Orientation) -> tuple[float, float, float]:
    """Spacing of the canonical array, in its (z, y, x) axis order."""
    sp = np.asarray(vol.spacing_zyx)
    return tuple(float(s) for s in sp[list(orient.perm)])  # type: ignore[return-value]


def from_canonical(arr: np.ndarray, orient: Orientation) -> np.ndarray:
    """Undo :func:`to_canonical` exactly (same voxels, original array layout)."""
    return np.ascontiguousarray(orient.invert(arr))
