"""Propagators: from a support group and per-frame matches to masks on every query frame.

Three implementations of one small protocol:

* :class:`Transfer` -- each frame takes its matched member's masks (no SAM2; a weight-free
  baseline and quick preview);
* :class:`Sam2Pairs` -- Zu et al.: a 2-frame SAM2 clip [matched member, frame] per frame;
  with the ``sam2`` matcher the matching runs inside, on the features the clips need;
* :class:`Sam2Volume` -- the best-matched member inserted into the query stack, masks
  propagated forward and backward with SAM2's memory.

A GPU out-of-memory error is retried once with batch size 1 and the state on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ._lazy import lazy_import
from .errors import DeviceError
from .match import best_members, transfer_masks
from .support import SupportGroup

torch = lazy_import("torch")

if TYPE_CHECKING:
    from .engine import FeatureStore, Sam2Engine

Progress = Callable[[int], None]


@dataclass
class Matching:
    """A group's matches: distances (n, M) or, when matched inside the propagator, None."""

    distances: np.ndarray | None = None
    prior: np.ndarray | None = None  # (n, M) added to the distances (position prior)
    run: np.ndarray | None = None  # (n,) bool: frames worth running (None: all)
    insert_at: int | None = None  # volume mode: the query frame the support corresponds to

    @property
    def members(self) -> np.ndarray | None:
        if self.distances is None:
            return None
        d = self.distances if self.prior is None else self.distances + self.prior
        return best_members(d)


@dataclass
class Propagation:
    """Per query frame: local labels (0, 1..K), object scores (n, K), member used, engine info."""

    labels: np.ndarray
    object_scores: np.ndarray
    members: np.ndarray
    distances: np.ndarray | None = None
    info: dict | None = None
    masks: np.ndarray | None = None  # (n, K, H, W) bool per structure, overlaps kept (if asked)


class Propagator(Protocol):
    name: str

    def run(self, query: np.ndarray, group: SupportGroup, matching: Matching,
            progress: Progress | None = None) -> Propagation: ...


def overlay(masks: np.ndarray) -> np.ndarray:
    """(n, K, H, W) bool -> (n, H, W) labels 1..K; where structures overlap the first wins."""
    out = np.zeros((masks.shape[0], *masks.shape[2:]), np.uint8 if masks.shape[1] < 256
                   else np.uint16)
    for k in range(masks.shape[1] - 1, -1, -1):
        out[masks[:, k]] = k + 1
    return out


class Transfer:
    """Each frame takes its matched member's masks."""

    name = "transfer"

    def __init__(self, keep_masks: bool = False):
        self.keep_masks = keep_masks

    def run(self, query, group, matching, progress=None) -> Propagation:
        members = matching.members
        masks = transfer_masks(members, group.bank.masks)
        if progress:
            progress(len(query))
        scores = np.full((len(query), len(group.entries)), np.nan, np.float32)
        return Propagation(overlay(masks), scores, members, matching.distances,
                           masks=masks if self.keep_masks else None)  # a new array


class Sam2Pairs:
    """SAM2 pair clips, batched; matching inline when no distances are given."""

    name = "pair"

    def __init__(self, engine: Sam2Engine, store: FeatureStore | None = None,
                 keep_masks: bool = False):
        self.engine, self.store, self.keep_masks = engine, store, keep_masks

    def run(self, query, group, matching, progress=None) -> Propagation:
        n, k = len(query), len(group.entries)
        sub = np.arange(n) if matching.run is None else np.nonzero(matching.run)[0]
        full = len(sub) == n
        members = matching.members
        if progress and not full:
            progress(n - len(sub))  # frames known to be empty count as done
        if not len(sub):
            return _empty(n, k, query.shape[1:], matching, {"frames_run": 0}, self.keep_masks)

        def call(store, offload):  # pair clips hold no long-lived state to offload
            return self.engine.run_pairs(
                query[sub], group.bank.images, group.bank.masks,
                None if members is None else members[sub],
                prior=None if matching.prior is None else matching.prior[sub],
                store=store if full else None, progress=progress, keep_masks=self.keep_masks,
                bank_key=group.bank.key)

        out = with_oom_retry(self.engine, call, self.store)
        labels = np.zeros(query.shape, out.labels.dtype)
        scores = np.full((n, k), np.nan, np.float32)
        got = np.full(n, -1)
        labels[sub], scores[sub], got[sub] = out.labels, out.object_scores, out.matches
        masks = _place(out.masks, sub, (n, k, *query.shape[1:]))
        dist = matching.distances
        if out.distances is not None:
            dist = np.full((n, out.distances.shape[1]), np.nan, np.float32)
            dist[sub] = out.distances
        return Propagation(labels, scores, got, dist, {"engine_timings_s": out.timings,
                                                       "frames_run": int(len(sub))}, masks)


class Sam2Volume:
    """SAM2 propagation through the stack from the best-matched member."""

    name = "volume"

    def __init__(self, engine: Sam2Engine, store: FeatureStore | None = None,
                 keep_masks: bool = False):
        self.engine, self.store, self.keep_masks = engine, store, keep_masks

    def run(self, query, group, matching, progress=None) -> Propagation:
        n, k = len(query), len(group.entries)
        run = np.ones(n, bool) if matching.run is None else matching.run
        if not run.any():
            return _empty(n, k, query.shape[1:], matching, {"frames_run": 0}, self.keep_masks)
        a, b = int(np.argmax(run)), int(n - np.argmax(run[::-1]))  # one contiguous stretch
        fi, mi = insertion(matching, a, b)
        bank = group.bank
        if progress and b - a < n:
            progress(n - (b - a))

        def call(store, offload):
            return self.engine.run_volume(
                query[a:b], bank.images[mi], bank.masks[mi], fi - a,
                store=None if store is None else store.window(a, b), offload_state=offload,
                progress=progress, keep_masks=self.keep_masks)

        out = with_oom_retry(self.engine, call, self.store)
        labels = np.zeros(query.shape, out.labels.dtype)
        scores = np.full((n, k), np.nan, np.float32)
        labels[a:b], scores[a:b] = out.labels, out.object_scores
        info = {"engine_timings_s": out.timings, "inserted_before_frame": fi,
                "inserted_member": mi, "frames_run": b - a}
        masks = _place(out.masks, np.arange(a, b), (n, k, *query.shape[1:]))
        return Propagation(labels, scores, np.full(n, mi), matching.distances, info, masks)


def _empty(n: int, k: int, shape, matching: Matching, info: dict,
           keep_masks: bool = False) -> Propagation:
    return Propagation(np.zeros((n, *shape), np.uint8), np.full((n, k), np.nan, np.float32),
                       np.full(n, -1), matching.distances, info,
                       np.zeros((n, k, *shape), bool) if keep_masks else None)


def _place(masks: np.ndarray | None, frames: np.ndarray, shape: tuple) -> np.ndarray | None:
    """Per-structure masks of the frames run, put into an all-frames array."""
    if masks is None:
        return None
    out = np.zeros(shape, bool)
    out[frames] = masks
    return out


def insertion(matching: Matching, start: int = 0, stop: int | None = None) -> tuple[int, int]:
    """(query frame, member) where the support goes in: the frame the support slice
    corresponds to, with its closest member; else the closest pair overall."""
    d = matching.distances if matching.prior is None else matching.distances + matching.prior
    stop = len(d) if stop is None else stop
    if matching.insert_at is not None and start <= matching.insert_at < stop:
        fi = matching.insert_at
        return fi, int(np.argmin(d[fi]))
    fi, mi = np.unravel_index(int(np.argmin(d[start:stop])), d[start:stop].shape)
    return int(fi) + start, int(mi)


def with_oom_retry(engine: Sam2Engine, call: Callable, store: FeatureStore | None) -> Any:
    """``call(store, offload=False)``; on CUDA out-of-memory once more with batch size 1, a
    fresh store and the state offloaded to the CPU."""
    try:
        return call(store, False)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if engine.batch_size == 1:
            raise DeviceError(_OOM.format(engine.device)) from None
    size, engine.batch_size = engine.batch_size, 1
    warnings.warn("GPU out of memory: retrying with batch size 1 and the state offloaded to "
                  "CPU", stacklevel=3)
    try:
        return call(None, True)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise DeviceError(_OOM.format(engine.device)) from exc
    finally:
        engine.batch_size = size  # the next query starts with the configured batch size


_OOM = ("out of GPU memory on {} even with batch size 1; use a smaller model or image size, "
        "or the CPU")

