"""Image-encoder features of a stack of frames, computed in batches and shared between
matching and propagation."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .core import Sam2Engine


class FeatureStore:
    """Image-encoder features of a stack of frames, computed in batches.

    Matching and propagation share one store: features computed while matching are kept,
    up to ``budget_mb``, and handed to propagation instead of being computed again. Frames
    not kept are encoded when first asked for, together with the next frames of the same
    pass (``ahead``), so the encoder always runs in batches.
    """

    def __init__(self, engine: Sam2Engine, frames: np.ndarray, budget_mb: float = 0.0):
        self.engine = engine
        self.frames = frames
        self.budget_mb = float(budget_mb)
        self.used_mb = 0.0
        self.encode_seconds = 0.0
        self._kept: dict[int, dict] = {}
        self._ahead: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def kept(self) -> list[int]:
        return sorted(self._kept)

    def _encode(self, idx: Sequence[int]) -> list[dict]:
        t0 = time.perf_counter()
        out = self.engine.encode(self.frames[list(idx)])
        self.encode_seconds += time.perf_counter() - t0
        return out

    def batches(self) -> Iterator[tuple[list[int], list[dict]]]:
        """Every frame once, in encoder batches; new features kept while the budget allows."""
        bs = self.engine.batch_size
        for start in range(0, len(self.frames), bs):
            idx = list(range(start, min(len(self.frames), start + bs)))
            todo = [i for i in idx if i not in self._kept]
            new = dict(zip(todo, self._encode(todo))) if todo else {}
            for i, e in new.items():
                size = entry_mb(e)
                if self.used_mb + size <= self.budget_mb:
                    self._kept[i] = _detach(e)
                    self.used_mb += size
            yield idx, [self._kept.get(i) or new[i] for i in idx]

    def window(self, start: int, stop: int) -> FeatureStore:
        """The frames ``start:stop`` as a store of their own, with what is kept of them."""
        sub = FeatureStore(self.engine, self.frames[start:stop], 0.0)
        sub._kept = {i - start: e for i, e in self._kept.items() if start <= i < stop}
        return sub

    def get(self, i: int, ahead: Sequence[int] = ()) -> dict:
        """Features of frame ``i`` (kept, prefetched, or encoded now with ``ahead``)."""
        if i in self._kept:
            return self._kept[i]
        if i not in self._ahead:
            todo = [i] + [j for j in ahead if j != i and j not in self._kept
                          and j not in self._ahead][: self.engine.batch_size - 1]
            self._ahead.update(zip(todo, self._encode(todo)))
        return self._ahead.pop(i)


def entry_mb(entry: dict) -> float:
    """Memory of one frame's features (the shared positional encodings excluded)."""
    return sum(f.numel() * f.element_size() for f in entry["backbone_fpn"]) / 2**20


def _detach(entry: dict) -> dict:
    """A copy that does not keep the whole encoder batch alive."""
    return {"backbone_fpn": [f.clone() for f in entry["backbone_fpn"]],
            "vision_pos_enc": entry["vision_pos_enc"]}
