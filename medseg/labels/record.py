"""The slice record a medseg result carries: which frames the user drew and a fingerprint of
every frame medseg estimated, so that a corrected result tells what the user changed.

It travels as segment tags of the ``.seg.nrrd`` (3D Slicer keeps a segment's tags when it
saves) and in the report beside a NIfTI labelmap; values hold no ``|`` or ``:``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

TAG = "medseg"  # segment tags: medseg.axis, medseg.frames, medseg.drawn, medseg.estimated


def fingerprint(mask: np.ndarray) -> str:
    """A short hash of one frame's mask (its shape and pixels)."""
    h = hashlib.blake2b(digest_size=4)
    h.update(str(mask.shape).encode())
    h.update(np.packbits(np.ascontiguousarray(mask, dtype=bool)).tobytes())
    return h.hexdigest()


def _ranges(frames: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    out, run = [], []
    for f in sorted(frames):
        if run and f == run[-1] + 1:
            run.append(f)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [f]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _unranges(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, (t.strip() for t in text.split(","))):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


@dataclass(frozen=True)
class SliceRecord:
    """Which frames of a result were drawn by the user and which estimated (fingerprinted),
    along ``axis`` of a scan with ``frames`` frames."""

    axis: str
    frames: int
    drawn: tuple[int, ...] = ()
    estimated: dict[int, str] = field(default_factory=dict)  # frame -> mask fingerprint

    def tags(self) -> dict[str, str]:
        """As Slicer segment tags (values without ``|`` or ``:``)."""
        return {f"{TAG}.axis": self.axis, f"{TAG}.frames": str(self.frames),
                f"{TAG}.drawn": _ranges(list(self.drawn)),
                f"{TAG}.estimated": ",".join(f"{f}={h}" for f, h in sorted(self.estimated.items()))}

    def as_dict(self) -> dict:
        """For the report (JSON)."""
        return {"axis": self.axis, "frames": self.frames, "drawn": list(self.drawn),
                "estimated": {str(f): h for f, h in sorted(self.estimated.items())}}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> SliceRecord | None:
        """From segment tags (None when they hold no record or a damaged one)."""
        try:
            est = {}
            for item in filter(None, tags.get(f"{TAG}.estimated", "").split(",")):
                f, _, h = item.partition("=")
                est[int(f)] = h.strip()
            return cls(tags[f"{TAG}.axis"], int(tags[f"{TAG}.frames"]),
                       tuple(_unranges(tags.get(f"{TAG}.drawn", ""))), est)
        except (KeyError, ValueError):
            return None

    @classmethod
    def from_dict(cls, d: dict) -> SliceRecord | None:
        """From the report's form (None when damaged)."""
        try:
            return cls(str(d["axis"]), int(d["frames"]), tuple(int(f) for f in d["drawn"]),
                       {int(f): str(h) for f, h in d.get("estimated", {}).items()})
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def of(cls, masks: np.ndarray, drawn: np.ndarray, axis: str) -> SliceRecord:
        """The record of a result: ``masks`` (n, H, W) and which frames were drawn (n,)."""
        has = masks.reshape(len(masks), -1).any(axis=1)
        est = {int(f): fingerprint(masks[f]) for f in np.nonzero(has & ~drawn)[0]}
        return cls(axis, len(masks), tuple(int(f) for f in np.nonzero(drawn)[0]), est)
