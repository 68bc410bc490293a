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
from typing import Any, Protocol

import numpy as np

from .errors import DeviceError
from .match import best_members, transfer_masks
from .support import SupportGroup

Progress = Callable[[int], None]


@dataclass
class Matching:
    """A group's matches: distances (n, M) or, when matched inside the propagator, None."""

    distances: np.ndarray | None = None
    prior: np.ndarray | None = None  # (n, M) added to SAM2-feature distances matched inline

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

    def run(self, query, group, matching, progress=None) -> Propagation:
        members = matching.members
        masks = transfer_masks(members, group.bank.masks)
        if progress:
            progress(len(query))
        scores = np.full((len(query), len(group.entries)), np.nan, np.float32)
        return Propagation(overlay(masks), scores, members, matching.distances)


class Sam2Pairs:
    """SAM2 pair clips, batched; matching inline when no distances are given."""

    name = "pair"

    def __init__(self, engine: Any, store: Any = None):
        self.engine, self.store = engine, store

    def run(self, query, group, matching, progress=None) -> Propagation:
        def call(store, offload):  # pair clips hold no long-lived state to offload
            return self.engine.run_pairs(query, group.bank.images, group.bank.masks,
                                         matching.members, prior=matching.prior, store=store,
                                         progress=progress)

        out = with_oom_retry(self.engine, call, self.store)
        dist = matching.distances if out.distances is None else out.distances
        return Propagation(out.labels, out.object_scores, out.matches, dist,
                           {"engine_timings_s": out.timings})


class Sam2Volume:
    """SAM2 propagation through the stack from the best-matched member."""

    name = "volume"

    def __init__(self, engine: Any, store: Any = None):
        self.engine, self.store = engine, store

    def run(self, query, group, matching, progress=None) -> Propagation:
        fi, mi = insertion(matching)
        bank = group.bank

        def call(store, offload):
            return self.engine.run_volume(query, bank.images[mi], bank.masks[mi], fi,
                                          store=store, offload_state=offload, progress=progress)

        out = with_oom_retry(self.engine, call, self.store)
        info = {"engine_timings_s": out.timings, "inserted_before_frame": fi,
                "inserted_member": mi}
        return Propagation(out.labels, out.object_scores, np.full(len(query), mi),
                           matching.distances, info)


def insertion(matching: Matching) -> tuple[int, int]:
    """(query frame, member) of the globally closest pair: where the support goes in."""
    d = matching.distances if matching.prior is None else matching.distances + matching.prior
    fi, mi = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(fi), int(mi)


def with_oom_retry(engine: Any, call: Callable, store: Any) -> Any:
    """``call(store, offload=False)``; on CUDA out-of-memory once more with batch size 1, a
    fresh store and the state offloaded to the CPU."""
    import torch

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

