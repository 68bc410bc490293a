"""Python API: ``medseg.segment(...)`` for one query, :class:`Segmenter` for many.

A :class:`Segmenter` holds the model (loaded on first use) and runs the
:mod:`~medseg.pipeline` for each query::

    seg = medseg.Segmenter(model="tiny", device="cuda")
    for res in seg.segment_many(support, support_label, queries, labels=["liver"]):
        res.save(f"out/{res.labels.path}")
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from . import pipeline
from .options import (
    MODELS,
    PRECISIONS,
    check_choice,
    check_device,
    check_image_size,
    check_int,
)
from .pipeline import SegmentConfig
from .report import machine, versions
from .result import Result

__all__ = ["Result", "SegmentConfig", "Segmenter", "machine", "segment", "versions"]


class Segmenter:
    """Keeps SAM2 loaded across queries: build once, call :meth:`segment` many times."""

    def __init__(self, model: str = "tiny", checkpoint: str | os.PathLike | None = None,
                 device: str = "auto", *, image_size: int | None = None, batch_size: int = 8,
                 precision: str = "auto", allow_download: bool = True, progress: bool = False,
                 feature_cache_mb: float = 2048.0, compile: bool = False):
        self.model = check_choice(model, MODELS, "model")
        self.precision = check_choice(precision, PRECISIONS, "precision")
        self.checkpoint = checkpoint
        self.device = check_device(device)
        self.image_size = check_image_size(image_size)
        self.batch_size = check_int(batch_size, "batch_size", 1, 4096)
        self.allow_download = allow_download
        self.progress = progress
        self.feature_cache_mb = feature_cache_mb  # encoder features kept from matching
        self.compile = compile
        self._engine = None
        self._support = pipeline.SupportCache()  # the support and its banks, across queries

    @property
    def engine(self):
        """The loaded :class:`~medseg.engine.Sam2Engine` (loaded on first use)."""
        if self._engine is None:
            from .engine import Sam2Engine

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
                self._engine = Sam2Engine(
                    self.model, None if self.checkpoint is None else str(self.checkpoint),
                    self.device, image_size=self.image_size, batch_size=self.batch_size,
                    precision=self.precision, allow_download=self.allow_download,
                    progress=self.progress, compile=self.compile)
        return self._engine

    def segment(self, support: Any, support_label: Any, query: Any,
                config: SegmentConfig | None = None, **options: Any) -> Result:
        """Segment ``query`` from one labelled ``support`` volume.

        ``options`` override fields of :class:`SegmentConfig` (``labels``, ``mode``, ...);
        ``bank_size`` and ``seed`` set the augmentation bank's size and seed.
        """
        cfg = pipeline.make_config(config, options)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
            return pipeline.run(support, support_label, query, cfg, lambda: self.engine,
                                self.progress, self.feature_cache_mb, self._support)

    def segment_many(self, support: Any, support_label: Any, queries: Iterable[Any],
                     config: SegmentConfig | None = None, **options: Any) -> Iterator[Result]:
        """:meth:`segment` for each query in turn (one model load); a generator."""
        for q in queries:
            yield self.segment(support, support_label, q, config, **dict(options))


def segment(support: Any, support_label: Any, query: Any, *, model: str = "tiny",
            checkpoint: str | os.PathLike | None = None, device: str = "auto",
            image_size: int | None = None, batch_size: int = 8, progress: bool = False,
            **options: Any) -> Result:
    """One-shot segmentation of ``query`` (see :class:`SegmentConfig` for ``options``)."""
    seg = Segmenter(model, checkpoint, device, image_size=image_size, batch_size=batch_size,
                    progress=progress)
    return seg.segment(support, support_label, query, **options)
